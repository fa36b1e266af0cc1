"""PixelCNN++ (Salimans, Karpathy, Chen & Kingma, ICLR 2017) as a Hugging Face ``PreTrainedModel``: the density
model of the OE paper's Table 5 (anomaly score: bits per dimension, higher = more anomalous; the OE objective is
:func:`oe_common.maths.losses.density_oe_loss`).

Details: docs/modules.md, section ``oe_vision.modeling_pixelcnnpp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - older transformers
    _init = nn.init

__all__ = [
    "MODEL_TYPE",
    "PIXELCNNPP_PRESETS",
    "PixelCNNPPConfig",
    "PixelCNNPPModel",
    "PixelCNNPPOutput",
    "bits_per_dim",
    "discretized_logistic_mixture_log_prob",
    "discretized_logistic_mixture_log_prob_per_subpixel",
    "num_mixture_params",
    "preprocess_pixels",
    "register_auto_classes",
    "sample_discretized_logistic_mixture",
]

MODEL_TYPE = "oe_pixelcnnpp"

# Bin half-width on the [-1, 1] scale (the 256 levels are 2/255 apart) and the reference's thresholds.
_HALF_BIN = 1.0 / 255.0
_MIN_LOG_SCALE = -7.0
_EDGE = 0.999
_TINY_BIN = 1e-5
_LOG_HALF_LEVELS = math.log(127.5)

PIXELCNNPP_PRESETS: dict[str, dict] = {
    # CPU-friendly: MNIST-like 28x28 gray images; 0.58 M parameters, no dropout (short runs do not overfit).
    "tiny": dict(image_channels=1, image_size=28, nr_resnet=1, nr_filters=32, nr_logistic_mix=5, dropout=0.0),
    # The PixelCNN++ paper's CIFAR-10 model (the one behind the OE paper's Table 5); 53.7 M parameters.
    "paper": dict(image_channels=3, image_size=32, nr_resnet=5, nr_filters=160, nr_logistic_mix=10, dropout=0.5),
}


def num_mixture_params(image_channels: int, nr_logistic_mix: int) -> int:
    """Number of output channels ``P``: ``10 K`` for RGB (logit, 3 means, 3 log-scales, 3 coeffs), ``3 K`` for gray."""
    if image_channels not in (1, 3):
        raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
    return nr_logistic_mix * (10 if image_channels == 3 else 3)


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


class PixelCNNPPConfig(PretrainedConfig):
    """Configuration of :class:`PixelCNNPPModel`. Defaults are the paper's CIFAR-10 model (preset ``"paper"``).

    Args:
        image_channels: 1 (gray, mixture without coefficients) or 3 (RGB, channel-autoregressive mixture).
        image_size: side of the (square) training images; must be a multiple of 4. Used by :meth:`PixelCNNPPModel.sample`
            and :attr:`num_subpixels`; ``forward`` accepts any H, W that are multiples of 4.
        nr_resnet: gated resnet blocks per resolution in the up pass (the down pass has
            ``nr_resnet, nr_resnet + 1, nr_resnet + 1``).
        nr_filters: channels of every hidden feature map.
        nr_logistic_mix: mixture components ``K`` per pixel.
        dropout: dropout probability inside each gated resnet (reference: 0.5), active in ``train()`` mode only.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        image_channels: int = 3,
        image_size: int = 32,
        nr_resnet: int = 5,
        nr_filters: int = 160,
        nr_logistic_mix: int = 10,
        dropout: float = 0.5,
        **kwargs,
    ):
        if image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {image_channels}")
        if int(image_size) < 4 or int(image_size) % 4:
            raise ValueError(f"image_size must be a positive multiple of 4 (two stride-2 down-samplings), got {image_size}")
        if int(nr_resnet) < 1 or int(nr_filters) < 1 or int(nr_logistic_mix) < 1:
            raise ValueError(
                f"nr_resnet, nr_filters and nr_logistic_mix must be >= 1, got {nr_resnet}, {nr_filters}, {nr_logistic_mix}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.image_channels = int(image_channels)
        self.image_size = int(image_size)
        self.nr_resnet = int(nr_resnet)
        self.nr_filters = int(nr_filters)
        self.nr_logistic_mix = int(nr_logistic_mix)
        self.dropout = float(dropout)
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PixelCNNPPConfig":
        """``"tiny"`` (28x28 gray, CPU) or ``"paper"`` (CIFAR: nr_resnet=5, nr_filters=160, nr_logistic_mix=10).

        Keyword overrides replace preset fields, e.g. ``from_preset("tiny", image_size=32)``.
        """
        if name not in PIXELCNNPP_PRESETS:
            raise ValueError(f"unknown PixelCNN++ preset {name!r}; choose one of {sorted(PIXELCNNPP_PRESETS)}")
        return cls(**{**PIXELCNNPP_PRESETS[name], **overrides})

    @property
    def num_subpixels(self) -> int:
        """``D = C * H * W`` of a training image (the margin is ``m * D`` nats)."""
        return self.image_channels * self.image_size * self.image_size

    @property
    def num_mixture_params(self) -> int:
        return num_mixture_params(self.image_channels, self.nr_logistic_mix)


# ----------------------------------------------------------------------------------------------------------------
# Discretized logistic mixture
# ----------------------------------------------------------------------------------------------------------------


def _check_pair(x: torch.Tensor, params: torch.Tensor) -> tuple[int, int]:
    """Validate shapes; return ``(C, K)``."""
    if not isinstance(x, torch.Tensor) or not isinstance(params, torch.Tensor):
        raise TypeError("x and params must be torch tensors")
    if x.dim() != 4 or params.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W) and params (B, P, H, W), got {tuple(x.shape)} and {tuple(params.shape)}")
    b, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"x must have 1 or 3 channels, got {c}")
    if params.shape[0] != b or params.shape[2:] != x.shape[2:]:
        raise ValueError(f"params {tuple(params.shape)} do not match x {tuple(x.shape)} in batch / spatial dims")
    per_component = 10 if c == 3 else 3
    if params.shape[1] % per_component or params.shape[1] == 0:
        raise ValueError(
            f"params has {params.shape[1]} channels; a {c}-channel mixture needs a positive multiple of {per_component}"
        )
    return c, params.shape[1] // per_component


def _unpack(params: torch.Tensor, c: int, k: int):
    """Split ``(B, P, H, W)`` into logits ``(B,K,H,W)``, means / log-scales / coeffs ``(B,C,K,H,W)`` (coeffs None for gray)."""
    b, _, h, w = params.shape
    logit_probs = params[:, :k]
    per_channel = 3 if c == 3 else 2
    rest = params[:, k:].reshape(b, c, per_channel * k, h, w)
    means = rest[:, :, :k]
    log_scales = torch.clamp(rest[:, :, k : 2 * k], min=_MIN_LOG_SCALE)
    coeffs = torch.tanh(rest[:, :, 2 * k : 3 * k]) if c == 3 else None
    return logit_probs, means, log_scales, coeffs


def _conditional_means(means: torch.Tensor, coeffs: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Channel-autoregressive means: G and B are shifted by the (true or sampled) values of earlier channels."""
    if coeffs is None:
        return means
    x0, x1 = x[:, 0:1], x[:, 1:2]  # (B, 1, H, W) broadcast over K
    return torch.stack(
        (
            means[:, 0],
            means[:, 1] + coeffs[:, 0] * x0,
            means[:, 2] + coeffs[:, 1] * x0 + coeffs[:, 2] * x1,
        ),
        dim=1,
    )


def _component_log_probs(x: torch.Tensor, params: torch.Tensor):
    """Per-component, per-channel log-probabilities ``(B, C, K, H, W)`` and log mixture weights ``(B, K, H, W)``."""
    c, k = _check_pair(x, params)
    dtype = torch.promote_types(torch.promote_types(x.dtype, params.dtype), torch.float32)  # half/bf16 -> float32
    x, params = x.to(dtype), params.to(dtype)
    logit_probs, means, log_scales, coeffs = _unpack(params, c, k)
    means = _conditional_means(means, coeffs, x)
    xk = x.unsqueeze(2)  # (B, C, 1, H, W)
    centered = xk - means
    inv_s = torch.exp(-log_scales)
    plus_in = inv_s * (centered + _HALF_BIN)
    min_in = inv_s * (centered - _HALF_BIN)
    log_cdf_plus = F.logsigmoid(plus_in)  # edge case x = -1 (value 0)
    log_one_minus_cdf_min = F.logsigmoid(-min_in)  # edge case x = 1 (value 255)
    # sigmoid(plus) - sigmoid(min), computed on the side of the mean where it does not cancel.
    cdf_delta = torch.where(
        centered > 0,
        torch.sigmoid(-min_in) - torch.sigmoid(-plus_in),
        torch.sigmoid(plus_in) - torch.sigmoid(min_in),
    )
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)  # log density at the bin centre
    interior = torch.where(
        cdf_delta > _TINY_BIN,
        torch.log(torch.clamp(cdf_delta, min=1e-12)),
        log_pdf_mid - _LOG_HALF_LEVELS,  # tiny bin: density * bin width (2/255)
    )
    log_probs = torch.where(xk < -_EDGE, log_cdf_plus, torch.where(xk > _EDGE, log_one_minus_cdf_min, interior))
    return log_probs, F.log_softmax(logit_probs, dim=1)


def discretized_logistic_mixture_log_prob(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Log-likelihood ``(B,)`` in nats of images ``x`` under per-pixel discretized logistic mixtures, summed over subpixels.

    Args:
        x: ``(B, C, H, W)`` in ``[-1, 1]`` on the 256-level grid; C = 1 or 3.
        params: ``(B, P, H, W)`` mixture parameters (layout in docs/modules.md; ``P = 10K`` RGB, ``3K`` gray),
            e.g. ``PixelCNNPPModel(...).logits``. Computed in float32 (or float64 if either input is float64).

    Per pixel: ``log sum_k pi_k prod_c p_k(x_c | x_<c)`` (the mixture is over the pixel's joint channels).
    Bins: ``[x - 1/255, x + 1/255]``, except
    x = -1 (value 0): ``CDF(x + 1/255)``; x = 1 (value 255): ``1 - CDF(x - 1/255)``; an interior bin with
    probability < 1e-5 uses the reference's fallback ``log pdf(x) - log 127.5`` (density at the bin centre times
    the bin width 2/255). The bin difference ``sigmoid(a) - sigmoid(b)`` is evaluated on the side of the logistic
    where it does not cancel (``sigmoid(-b) - sigmoid(-a)`` above the mean): the same number in exact arithmetic,
    more accurate in float32.
    """
    log_probs, log_mix = _component_log_probs(x, params)
    per_pixel = torch.logsumexp(log_mix + log_probs.sum(dim=1), dim=1)  # (B, H, W)
    return per_pixel.flatten(1).sum(dim=1)


def discretized_logistic_mixture_log_prob_per_subpixel(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Conditional log-probabilities ``(B, C, H, W)``: ``log p(x_c | x_<c, earlier pixels)`` per subpixel, in nats.

    Channel c's entry is ``log sum_k pi_k prod_{c'<=c} p_k - log sum_k pi_k prod_{c'<c} p_k`` (the mixture
    weights are updated by the earlier channels of the same pixel), so the entries of a pixel sum to its joint
    log-probability and ``.flatten(1).sum(1)`` equals :func:`discretized_logistic_mixture_log_prob`.
    For gray images this is simply the per-pixel log-probability.
    """
    log_probs, log_mix = _component_log_probs(x, params)
    joint_upto = torch.logsumexp(log_mix.unsqueeze(1) + log_probs.cumsum(dim=1), dim=2)  # log p(x_<=c): (B,C,H,W)
    previous = torch.cat((torch.zeros_like(joint_upto[:, :1]), joint_upto[:, :-1]), dim=1)
    return joint_upto - previous


def sample_discretized_logistic_mixture(
    params: torch.Tensor, image_channels: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``(B, C, H, W)`` values on the 256-level grid in ``[-1, 1]``, one independent draw per position.

    Exact sampler of the discretized distribution: pick a component (Gumbel-max on the logits), draw a
    continuous logistic per channel by inverse CDF with the mean shifted by the already *quantised* earlier
    channels, round to the nearest level and clamp (edges absorb the tails) -- the same bins as the likelihood.
    """
    if params.dim() != 4:
        raise ValueError(f"params must be (B, P, H, W), got {tuple(params.shape)}")
    c = image_channels
    per_component = 10 if c == 3 else 3
    if c not in (1, 3) or params.shape[1] % per_component or params.shape[1] == 0:
        raise ValueError(f"params with {params.shape[1]} channels do not fit a {c}-channel mixture")
    k = params.shape[1] // per_component
    params = params.float() if params.dtype in (torch.float16, torch.bfloat16) else params
    b, _, h, w = params.shape
    logit_probs, means, log_scales, coeffs = _unpack(params, c, k)
    eps = torch.finfo(params.dtype).eps

    def uniform(shape):
        return torch.rand(shape, generator=generator, device=params.device, dtype=params.dtype).clamp(eps, 1 - eps)

    gumbel = -torch.log(-torch.log(uniform(logit_probs.shape)))
    index = (logit_probs + gumbel).argmax(dim=1, keepdim=True)  # (B, 1, H, W)
    index = index.unsqueeze(1).expand(b, c, 1, h, w)
    mu = means.gather(2, index).squeeze(2)  # (B, C, H, W)
    log_s = log_scales.gather(2, index).squeeze(2)
    coef = coeffs.gather(2, index).squeeze(2) if coeffs is not None else None
    u = uniform((b, c, h, w))
    noise = torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))

    def quantise(y):
        return torch.clamp(torch.round((y + 1.0) * 127.5), 0.0, 255.0) / 127.5 - 1.0

    x0 = quantise(mu[:, 0] + noise[:, 0])
    if c == 1:
        return x0.unsqueeze(1)
    x1 = quantise(mu[:, 1] + coef[:, 0] * x0 + noise[:, 1])
    x2 = quantise(mu[:, 2] + coef[:, 1] * x0 + coef[:, 2] * x1 + noise[:, 2])
    return torch.stack((x0, x1, x2), dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Scores and losses
# ----------------------------------------------------------------------------------------------------------------


def bits_per_dim(nll: torch.Tensor, num_subpixels: int) -> torch.Tensor:
    """``nll / (num_subpixels * ln 2)``: nats per image -> bits per subpixel. The anomaly score (higher = more anomalous)."""
    if num_subpixels <= 0:
        raise ValueError(f"num_subpixels must be positive, got {num_subpixels}")
    return nll / (num_subpixels * math.log(2.0))


def preprocess_pixels(images: torch.Tensor) -> torch.Tensor:
    """Map images to the model's input scale ``[-1, 1]`` on the 256-level grid.

    ``uint8`` (0..255) -> ``x / 127.5 - 1``; floating point is taken as ``[0, 1]`` (``ToTensor()`` output) and
    snapped to the nearest of the 256 levels first. Shape is kept.
    """
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"floating-point images must be in [0, 1] (got range [{lo:.4g}, {hi:.4g}])")
    return torch.round(images.clamp(0, 1) * 255.0) / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """``elu([x, -x])`` along channels (doubles the channel count)."""
    return F.elu(torch.cat((x, -x), dim=1))


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift one row down (zero row on top, last row dropped)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift one column right (zero column on the left, last column dropped)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class WeightNormConv2d(nn.Module):
    """Conv2d / ConvTranspose2d with weight normalisation ``w = g * v / ||v||`` (norm per output channel).

    Parameters are named ``v``, ``g``, ``bias`` (not ``weight_v``/``weight_g``, which transformers renames on load).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, transposed=False, init_scale=1.0):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        self.transposed = transposed
        self.init_scale = float(init_scale)
        shape = (in_channels, out_channels, kh, kw) if transposed else (out_channels, in_channels, kh, kw)
        self.v = nn.Parameter(torch.empty(shape))
        self.g = nn.Parameter(torch.empty(out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        _init.normal_(self.v, mean=0.0, std=0.05)  # reference initialiser; only the direction matters
        _init.constant_(self.g, self.init_scale)
        _init.zeros_(self.bias)

    def weight(self) -> torch.Tensor:
        if self.transposed:
            scale = self.g / self.v.pow(2).sum(dim=(0, 2, 3)).clamp_min(1e-24).sqrt()
            return self.v * scale.view(1, -1, 1, 1)
        scale = self.g / self.v.pow(2).sum(dim=(1, 2, 3)).clamp_min(1e-24).sqrt()
        return self.v * scale.view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            # output_padding=1: (H-1)*s + kh + 1 rows; the caller crops to the causal part.
            return F.conv_transpose2d(x, self.weight(), self.bias, stride=self.stride, output_padding=1)
        return F.conv2d(x, self.weight(), self.bias, stride=self.stride)


class Nin(WeightNormConv2d):
    """"Network in network": a weight-normalised 1x1 convolution (a dense layer over channels)."""

    def __init__(self, in_channels, out_channels, init_scale=1.0):
        super().__init__(in_channels, out_channels, (1, 1), init_scale=init_scale)


class DownShiftedConv2d(nn.Module):
    """Convolution whose output at (i, j) sees rows ``<= i`` and columns ``j - (kw-1)/2 .. j + (kw-1)/2``.

    With ``shift_output_down`` the output is shifted one row down, so it sees only rows ``< i``.
    """

    def __init__(self, in_channels, out_channels, filter_size=(2, 3), stride=1, shift_output_down=False, init_scale=1.0):
        super().__init__()
        kh, kw = filter_size
        self.padding = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)  # left, right, top, bottom
        self.conv = WeightNormConv2d(in_channels, out_channels, filter_size, stride, init_scale=init_scale)
        self.shift_output_down = shift_output_down

    def forward(self, x):
        x = self.conv(F.pad(x, self.padding))
        return down_shift(x) if self.shift_output_down else x


class DownRightShiftedConv2d(nn.Module):
    """Convolution whose output at (i, j) sees rows ``<= i`` and columns ``<= j`` (``shift_output_right``: ``< j``)."""

    def __init__(self, in_channels, out_channels, filter_size=(2, 2), stride=1, shift_output_right=False, init_scale=1.0):
        super().__init__()
        kh, kw = filter_size
        self.padding = (kw - 1, 0, kh - 1, 0)
        self.conv = WeightNormConv2d(in_channels, out_channels, filter_size, stride, init_scale=init_scale)
        self.shift_output_right = shift_output_right

    def forward(self, x):
        x = self.conv(F.pad(x, self.padding))
        return right_shift(x) if self.shift_output_right else x


class DownShiftedConvTranspose2d(nn.Module):
    """Stride-2 up-sampling that keeps the down-shifted causal structure (crop of a transposed conv)."""

    def __init__(self, in_channels, out_channels, filter_size=(2, 3), stride=2):
        super().__init__()
        self.filter_size = filter_size
        self.conv = WeightNormConv2d(in_channels, out_channels, filter_size, stride, transposed=True, init_scale=2.0)

    def forward(self, x):
        x = self.conv(x)
        kh, kw = self.filter_size
        h, w = x.shape[-2:]
        return x[:, :, : h - kh + 1, (kw - 1) // 2 : w - (kw - 1) // 2]


class DownRightShiftedConvTranspose2d(nn.Module):
    """Stride-2 up-sampling that keeps the down-right-shifted causal structure."""

    def __init__(self, in_channels, out_channels, filter_size=(2, 2), stride=2):
        super().__init__()
        self.filter_size = filter_size
        self.conv = WeightNormConv2d(in_channels, out_channels, filter_size, stride, transposed=True, init_scale=2.0)

    def forward(self, x):
        x = self.conv(x)
        kh, kw = self.filter_size
        h, w = x.shape[-2:]
        return x[:, :, : h - kh + 1, : w - kw + 1]


class GatedResnet(nn.Module):
    """``x + A * sigmoid(B)``, ``[A, B] = conv2(dropout(concat_elu(conv1(concat_elu(x)) + nin(concat_elu(a)))))``."""

    def __init__(self, num_filters: int, conv_class: type, skip_connection: int = 0, dropout: float = 0.5):
        super().__init__()
        self.conv_input = conv_class(2 * num_filters, num_filters)
        self.nin_skip = Nin(2 * skip_connection * num_filters, num_filters) if skip_connection else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv_class(2 * num_filters, 2 * num_filters, init_scale=0.1)

    def forward(self, x: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_input(concat_elu(x))
        if a is not None:
            h = h + self.nin_skip(concat_elu(a))
        h = self.conv_out(self.dropout(concat_elu(h)))
        value, gate = h.chunk(2, dim=1)
        return x + value * torch.sigmoid(gate)


class PixelCNNUpLayer(nn.Module):
    """``nr_resnet`` gated resnets on both streams of one resolution (up pass); returns every intermediate output."""

    def __init__(self, nr_resnet: int, nr_filters: int, dropout: float):
        super().__init__()
        self.u_stream = nn.ModuleList(
            GatedResnet(nr_filters, DownShiftedConv2d, skip_connection=0, dropout=dropout) for _ in range(nr_resnet)
        )
        self.ul_stream = nn.ModuleList(
            GatedResnet(nr_filters, DownRightShiftedConv2d, skip_connection=1, dropout=dropout) for _ in range(nr_resnet)
        )

    def forward(self, u, ul):
        u_list, ul_list = [], []
        for u_block, ul_block in zip(self.u_stream, self.ul_stream):
            u = u_block(u)
            ul = ul_block(ul, a=u)
            u_list.append(u)
            ul_list.append(ul)
        return u_list, ul_list


class PixelCNNDownLayer(nn.Module):
    """``nr_resnet`` gated resnets of one resolution (down pass), each fed the matching up-pass outputs."""

    def __init__(self, nr_resnet: int, nr_filters: int, dropout: float):
        super().__init__()
        self.u_stream = nn.ModuleList(
            GatedResnet(nr_filters, DownShiftedConv2d, skip_connection=1, dropout=dropout) for _ in range(nr_resnet)
        )
        self.ul_stream = nn.ModuleList(
            GatedResnet(nr_filters, DownRightShiftedConv2d, skip_connection=2, dropout=dropout) for _ in range(nr_resnet)
        )

    def forward(self, u, ul, u_list, ul_list):
        for u_block, ul_block in zip(self.u_stream, self.ul_stream):
            u = u_block(u, a=u_list.pop())
            ul = ul_block(ul, a=torch.cat((u, ul_list.pop()), dim=1))
        return u, ul


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PixelCNNPPOutput(ModelOutput):
    """Output of :class:`PixelCNNPPModel`.

    Attributes:
        loss: mean nll per subpixel in nats, ``nll.sum() / (B * D)`` (``None`` when ``return_loss=False``).
            Bits per dim of the batch = ``loss / ln 2``.
        logits: ``(B, P, H, W)`` discretized-logistic-mixture parameters (layout in docs/modules.md).
        nll: ``(B,)`` negative log-likelihood of each image in nats, summed over its ``D = C*H*W`` subpixels.
        bits_per_dim: ``(B,)`` ``nll / (D ln 2)``, the anomaly score (higher = more anomalous).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    nll: torch.Tensor | None = None
    bits_per_dim: torch.Tensor | None = None


# Accepted by forward() and ignored: class labels of image datasets (the targets are the pixels themselves).
_IGNORED_FORWARD_KWARGS = frozenset({"labels", "label", "label_ids", "num_items_in_batch"})


class PixelCNNPPPreTrainedModel(PreTrainedModel):
    config_class = PixelCNNPPConfig
    base_model_prefix = "pixelcnnpp"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False
    # The loss is a per-image mean: Trainer must not pass num_items_in_batch / skip its own
    # gradient-accumulation scaling.
    accepts_loss_kwargs = False
    _no_split_modules = ["GatedResnet"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, WeightNormConv2d):
            module.reset_parameters()  # guarded init functions: loaded tensors are not overwritten


class PixelCNNPPModel(PixelCNNPPPreTrainedModel):
    """PixelCNN++ density model. ``forward(pixel_values)`` returns mixture parameters and per-image nll in nats."""

    def __init__(self, config: PixelCNNPPConfig):
        super().__init__(config)
        c, f, r, p = config.image_channels, config.nr_filters, config.nr_resnet, config.dropout
        self.u_init = DownShiftedConv2d(c + 1, f, filter_size=(2, 3), shift_output_down=True)
        self.ul_init_down = DownShiftedConv2d(c + 1, f, filter_size=(1, 3), shift_output_down=True)
        self.ul_init_right = DownRightShiftedConv2d(c + 1, f, filter_size=(2, 1), shift_output_right=True)
        self.up_layers = nn.ModuleList(PixelCNNUpLayer(r, f, p) for _ in range(3))
        self.down_layers = nn.ModuleList(PixelCNNDownLayer(n, f, p) for n in (r, r + 1, r + 1))
        self.downsize_u = nn.ModuleList(DownShiftedConv2d(f, f, filter_size=(2, 3), stride=2) for _ in range(2))
        self.downsize_ul = nn.ModuleList(DownRightShiftedConv2d(f, f, filter_size=(2, 2), stride=2) for _ in range(2))
        self.upsize_u = nn.ModuleList(DownShiftedConvTranspose2d(f, f, filter_size=(2, 3)) for _ in range(2))
        self.upsize_ul = nn.ModuleList(DownRightShiftedConvTranspose2d(f, f, filter_size=(2, 2)) for _ in range(2))
        self.nin_out = Nin(f, config.num_mixture_params)
        self.post_init()

    def _prepare_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            raise ValueError("pixel_values must be a (B, C, H, W) tensor")
        b, c, h, w = pixel_values.shape
        if c != self.config.image_channels:
            raise ValueError(f"pixel_values has {c} channels, the model was built for {self.config.image_channels}")
        if h % 4 or w % 4 or h == 0 or w == 0:
            raise ValueError(f"image height and width must be positive multiples of 4, got {h}x{w}")
        if pixel_values.dtype == torch.uint8:
            return pixel_values.to(self.nin_out.v.dtype) / 127.5 - 1.0
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values must be floating point in [-1, 1] or uint8, got {pixel_values.dtype}")
        lo, hi = torch.aminmax(pixel_values.detach())
        if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
            raise ValueError(
                f"pixel_values must be scaled to [-1, 1] (got [{float(lo):.4g}, {float(hi):.4g}]); see preprocess_pixels()"
            )
        return pixel_values

    def compute_params(self, x: torch.Tensor) -> torch.Tensor:
        """The network alone: ``(B, C, H, W)`` in [-1, 1] -> mixture parameters ``(B, P, H, W)``."""
        x_pad = torch.cat((x, torch.ones_like(x[:, :1])), dim=1)
        u_list = [self.u_init(x_pad)]
        ul_list = [self.ul_init_down(x_pad) + self.ul_init_right(x_pad)]
        for i in range(3):
            u_out, ul_out = self.up_layers[i](u_list[-1], ul_list[-1])
            u_list += u_out
            ul_list += ul_out
            if i < 2:
                u_list.append(self.downsize_u[i](u_list[-1]))
                ul_list.append(self.downsize_ul[i](ul_list[-1]))
        u, ul = u_list.pop(), ul_list.pop()
        for i in range(3):
            u, ul = self.down_layers[i](u, ul, u_list, ul_list)
            if i < 2:
                u, ul = self.upsize_u[i](u), self.upsize_ul[i](ul)
        assert not u_list and not ul_list
        return self.nin_out(F.elu(ul))

    def forward(
        self,
        pixel_values: torch.Tensor,
        return_loss: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PixelCNNPPOutput | tuple:
        """Args:
        pixel_values: ``(B, C, H, W)`` in ``[-1, 1]`` (or ``uint8`` 0..255); they are also the likelihood targets.
        return_loss: ``False`` skips the likelihood and returns only ``logits`` (``loss``/``nll``/``bits_per_dim``
            are ``None``).
        kwargs: only the class-label columns that image datasets carry (``labels``, ``label``, ``label_ids``) and
            ``num_items_in_batch`` are accepted, and ignored; anything else is an error.
        """
        unknown = set(kwargs) - _IGNORED_FORWARD_KWARGS
        if unknown:
            raise TypeError(f"PixelCNNPPModel.forward got unexpected keyword argument(s) {sorted(unknown)}")
        x = self._prepare_input(pixel_values)
        params = self.compute_params(x)
        loss = nll = bpd = None
        if return_loss:
            num_subpixels = x.shape[1] * x.shape[2] * x.shape[3]
            nll = -discretized_logistic_mixture_log_prob(x, params)
            loss = nll.mean() / num_subpixels
            bpd = bits_per_dim(nll, num_subpixels)
        output = PixelCNNPPOutput(loss=loss, logits=params, nll=nll, bits_per_dim=bpd)
        return output if return_dict is not False else output.to_tuple()

    @torch.no_grad()
    def sample(
        self,
        num_samples: int = 16,
        image_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling, pixel by pixel in raster order (one full forward per pixel; H*W forwards).

        Runs in eval mode (dropout off) and restores the previous mode. Returns ``(N, C, S, S)`` in ``[-1, 1]``
        on the 256-level grid, ``S = image_size or config.image_size``.
        """
        size = int(image_size or self.config.image_size)
        if size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {size}")
        c = self.config.image_channels
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(num_samples, c, size, size, device=self.nin_out.v.device, dtype=self.nin_out.v.dtype)
            for i in range(size):
                for j in range(size):
                    params = self.compute_params(x)[:, :, i : i + 1, j : j + 1]
                    x[:, :, i, j] = sample_discretized_logistic_mixture(params, c, generator)[:, :, 0, 0].to(x.dtype)
        finally:
            self.train(was_training)
        return x


def register_auto_classes() -> None:
    """Register with ``AutoConfig`` / ``AutoModel`` (idempotent: importing or calling twice does not fail)."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(MODEL_TYPE, PixelCNNPPConfig, exist_ok=True)
        AutoModel.register(PixelCNNPPConfig, PixelCNNPPModel, exist_ok=True)
    except TypeError:  # pragma: no cover - transformers without exist_ok
        try:
            AutoConfig.register(MODEL_TYPE, PixelCNNPPConfig)
            AutoModel.register(PixelCNNPPConfig, PixelCNNPPModel)
        except ValueError:
            pass


register_auto_classes()
