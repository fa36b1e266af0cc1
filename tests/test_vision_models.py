"""oe_vision models: Wide ResNet presets, the MNIST ConvNet, the confidence branch, HF round-trips, Auto classes."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

import oe_vision  # noqa: F401  (registers the Auto classes)
from oe_common.maths.losses import confidence_branch_oe_loss
from oe_vision.confidence import (
    ConfidenceImageClassifierOutput,
    confidence_branch_loss,
    confidence_branch_score,
    update_confidence_lambda,
)
from oe_vision import (
    WRN_PRESETS,
    MnistConvNetConfig,
    MnistConvNetForImageClassification,
    WideResNetConfig,
    WideResNetForImageClassification,
    WideResNetModel,
)


# ------------------------------------------------------------------------------------------------ counts by hand


def wrn_param_count(depth: int, k: int, num_classes: int = 10, in_channels: int = 3, confidence: bool = False) -> int:
    """Parameters of a pre-activation WRN-depth-k, summed layer by layer from the architecture (not the code)."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = 3 * 3 * in_channels * widths[0]  # stem conv, no bias
    for stage in range(3):
        c_out = widths[stage + 1]
        for block in range(n):
            c_in = widths[stage] if block == 0 else c_out
            stride = 2 if (stage > 0 and block == 0) else 1
            total += 2 * c_in  # BN1 (weight, bias)
            total += 9 * c_in * c_out  # conv3x3, no bias
            total += 2 * c_out  # BN2
            total += 9 * c_out * c_out  # conv3x3
            if c_in != c_out or stride != 1:
                total += c_in * c_out  # 1x1 shortcut conv
    total += 2 * widths[3]  # final BN
    total += widths[3] * num_classes + num_classes  # linear
    if confidence:
        total += widths[3] + 1
    return total


def convnet_param_count(num_classes: int = 10, confidence: bool = False) -> int:
    conv1 = 1 * 10 * 5 * 5 + 10
    conv2 = 10 * 20 * 5 * 5 + 20
    fc1 = 320 * 50 + 50
    fc2 = 50 * num_classes + num_classes
    return conv1 + conv2 + fc1 + fc2 + (50 + 1 if confidence else 0)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (preset, published size in millions, tolerance)
PUBLISHED = {"40-2": (2.24, 0.005), "40-4": (8.9, 0.06), "16-4": (2.75, 0.005)}


@pytest.mark.parametrize("preset", sorted(WRN_PRESETS))
def test_wrn_preset_parameter_count_and_shapes(preset):
    cfg = WideResNetConfig.from_preset(preset)
    model = WideResNetForImageClassification(cfg).eval()
    expected = wrn_param_count(cfg.depth, cfg.widen_factor)
    assert n_params(model) == expected
    published, tol = PUBLISHED[preset]
    assert abs(expected / 1e6 - published) < tol
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert isinstance(out, ConfidenceImageClassifierOutput)
    assert out.logits.shape == (1, 10) and out.loss is None and out.confidence_logits is None
    k = cfg.widen_factor
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [(16, 32, 32), (16 * k, 32, 32), (32 * k, 16, 16), (64 * k, 8, 8)]


def test_wrn_exact_counts_and_presets():
    assert wrn_param_count(40, 2) == 2_243_546
    assert wrn_param_count(40, 4) == 8_949_210
    assert wrn_param_count(16, 4) == 2_748_890
    assert WRN_PRESETS["40-2"]["dropout"] == 0.3 and WRN_PRESETS["16-4"]["dropout"] == 0.4
    assert WideResNetConfig.from_preset("WRN-16-4").depth == 16
    # k = 1: the first stage keeps 16 channels, so it has no shortcut conv
    for depth, k, classes, ch in [(10, 1, 10, 3), (16, 2, 100, 1), (22, 3, 7, 3)]:
        model = WideResNetForImageClassification(WideResNetConfig(depth=depth, widen_factor=k, num_labels=classes, num_channels=ch))
        assert n_params(model) == wrn_param_count(depth, k, classes, ch)
    model = WideResNetForImageClassification(WideResNetConfig(depth=10, widen_factor=1, confidence_branch=True))
    assert n_params(model) == wrn_param_count(10, 1, confidence=True)


def test_wrn_block_structure_and_init():
    model = WideResNetForImageClassification(WideResNetConfig.from_preset("40-4"))
    block = model.wide_resnet.block2.layer[0]
    assert block.conv1.stride == (2, 2) and block.conv_shortcut is not None and block.conv_shortcut.kernel_size == (1, 1)
    assert model.wide_resnet.block2.layer[1].conv_shortcut is None
    assert block.dropout.p == 0.3
    # He init (fan_out): std = sqrt(2 / (9 * out_channels))
    w = model.wide_resnet.block3.layer[1].conv2.weight
    assert abs(w.std().item() / math.sqrt(2 / (9 * w.shape[0])) - 1) < 0.01
    assert abs(w.mean().item()) < 1e-3
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.classifier.bias == 0)
    bound = 1 / math.sqrt(model.classifier.in_features)  # kaiming_uniform(a=sqrt 5) = U(-1/sqrt(fan_in), ..)
    assert model.classifier.weight.abs().max() <= bound


def test_wrn_other_inputs_and_errors():
    model = WideResNetForImageClassification(WideResNetConfig(depth=10, widen_factor=1, num_channels=1, image_size=28)).eval()
    assert model(torch.rand(3, 1, 28, 28)).logits.shape == (3, 10)  # global pooling: any size
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.rand(3, 3, 28, 28))
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNetConfig(depth=41)
    with pytest.raises(ValueError, match="preset"):
        WideResNetConfig.from_preset("28-10")
    features = WideResNetModel(WideResNetConfig(depth=10, widen_factor=2)).eval()(torch.rand(2, 3, 32, 32))
    assert features.pooler_output.shape == (2, 128) and features.last_hidden_state.shape == (2, 128, 8, 8)


def test_forward_signature_takes_no_kwargs():
    # HF Trainer skips its gradient-accumulation loss scaling for models whose forward accepts **kwargs /
    # num_items_in_batch; these models compute a plain mean loss, so they must not advertise that.
    for cls in (WideResNetForImageClassification, MnistConvNetForImageClassification):
        params = inspect.signature(cls.forward).parameters
        assert list(params)[:3] == ["self", "pixel_values", "labels"]
        assert not any(p.kind == p.VAR_KEYWORD for p in params.values())


# ------------------------------------------------------------------------------------------------ MNIST ConvNet


def test_convnet_shapes_and_params():
    model = MnistConvNetForImageClassification(MnistConvNetConfig()).eval()
    assert n_params(model) == convnet_param_count() == 21_840
    x = torch.rand(5, 1, 28, 28)
    out = model(x, output_hidden_states=True)
    assert out.logits.shape == (5, 10)
    assert [tuple(h.shape) for h in out.hidden_states] == [(5, 10, 12, 12), (5, 20, 4, 4), (5, 50)]
    assert model.config.flat_size == 320
    branch = MnistConvNetForImageClassification(MnistConvNetConfig(confidence_branch=True)).eval()
    assert n_params(branch) == convnet_param_count(confidence=True)
    assert branch(x).confidence_logits.shape == (5,)
    assert isinstance(model.conv2_drop, torch.nn.Dropout2d) and model.conv2_drop.p == 0.5 and model.fc_drop.p == 0.5
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.rand(5, 1, 32, 32))


@pytest.mark.parametrize("cls,cfg", [
    (MnistConvNetForImageClassification, MnistConvNetConfig()),
    (WideResNetForImageClassification, WideResNetConfig(depth=10, widen_factor=1)),
])
def test_loss_is_cross_entropy_and_tuple_output(cls, cfg):
    torch.manual_seed(0)
    model = cls(cfg).eval()
    c = cfg.num_channels
    side = cfg.image_size
    x, y = torch.rand(4, c, side, side), torch.tensor([0, 3, 9, 1])
    out = model(x, labels=y)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, y))
    tup = model(x, labels=y, return_dict=False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.loss) and torch.equal(tup[1], out.logits)


# ------------------------------------------------------------------------------------------------ confidence branch


def reference_confidence_loss(logits, c, labels, hints, lmbda, eps=1e-12):
    """DeVries & Taylor's loss written out per example with Python floats."""
    total_nll, total_pen = 0.0, 0.0
    for i in range(logits.shape[0]):
        z = logits[i].tolist()
        m = max(z)
        denom = sum(math.exp(v - m) for v in z)
        p_y = min(max(math.exp(z[int(labels[i])] - m) / denom, eps), 1 - eps)
        b = min(max(1 / (1 + math.exp(-float(c[i]))), eps), 1 - eps)
        b_used = b if hints[i] else 1.0
        total_nll += -math.log(b_used * p_y + (1 - b_used))
        total_pen += -math.log(b)
    n = logits.shape[0]
    return total_nll / n + lmbda * total_pen / n, total_nll / n, total_pen / n


def test_confidence_branch_loss_matches_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=gen) * 3
    c = torch.randn(16, generator=gen) * 2
    labels = torch.randint(0, 10, (16,), generator=gen)
    hints = torch.rand(16, generator=gen) < 0.5
    result = confidence_branch_loss(logits, c, labels, lmbda=0.3, hint_mask=hints)
    loss, nll, pen = reference_confidence_loss(logits, c, labels, hints.tolist(), 0.3)
    assert result.loss.item() == pytest.approx(loss, rel=1e-5)
    assert result.nll.item() == pytest.approx(nll, rel=1e-5)
    assert result.confidence_penalty.item() == pytest.approx(pen, rel=1e-5)
    # no hints: the NLL is the plain cross-entropy
    plain = confidence_branch_loss(logits, c[:, None], labels, lmbda=0.0, hint_mask=torch.zeros(16))
    assert plain.nll.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    # lambda as a tensor works the same
    tensor_lmbda = confidence_branch_loss(logits, c, labels, lmbda=torch.tensor(0.3), hint_mask=hints)
    assert torch.allclose(tensor_lmbda.loss, result.loss)


def test_confidence_branch_gradient_signs():
    logits = torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    c = torch.zeros(8, requires_grad=True)
    # the -log b penalty alone: gradient descent raises b
    only_penalty = confidence_branch_loss(logits, c, labels, lmbda=1.0, hint_mask=torch.zeros(8))
    (grad,) = torch.autograd.grad(only_penalty.loss, c)  # no hints: the NLL does not depend on c
    assert torch.all(grad < 0)
    # the hinted NLL alone: asking for hints (lower b) lowers the NLL, so descent lowers b on hinted examples
    hints = torch.tensor([1, 0] * 4)
    nll_only = confidence_branch_loss(logits, c, labels, lmbda=0.0, hint_mask=hints)
    (grad,) = torch.autograd.grad(nll_only.loss, c)
    assert torch.all(grad[hints == 1] > 0) and torch.all(grad[hints == 0] == 0)
    # OE term for the branch (paper: + 0.5 * E_OE[log b]): descent lowers b on outliers
    c_out = torch.zeros(8, requires_grad=True)
    (grad,) = torch.autograd.grad(0.5 * confidence_branch_oe_loss(c_out), c_out)
    assert torch.all(grad > 0)


def test_confidence_hint_mask_default_and_validation():
    logits, c, labels = torch.randn(4000, 3), torch.zeros(4000), torch.randint(0, 3, (4000,))
    a = confidence_branch_loss(logits, c, labels, generator=torch.Generator().manual_seed(1))
    b = confidence_branch_loss(logits, c, labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.loss, b.loss)
    # with b = 0.5 everywhere the hinted fraction h gives nll = mean over examples of -log(h ? 0.5 p + 0.5 : p)
    p_y = torch.softmax(logits, -1).gather(1, labels[:, None])[:, 0]
    full = -torch.log(0.5 * p_y + 0.5).mean()
    none = -torch.log(p_y).mean()
    frac = (none - a.nll) / (none - full)
    assert 0.45 < frac.item() < 0.55
    with pytest.raises(ValueError, match="labels"):
        confidence_branch_loss(logits[:4], c[:4], torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="branch_logit"):
        confidence_branch_loss(logits[:4], c[:3], labels[:4])


def test_update_confidence_lambda():
    assert update_confidence_lambda(0.1, 0.2, budget=0.3) == pytest.approx(0.1 / 1.01)  # under budget: shrink
    assert update_confidence_lambda(0.1, 0.5, budget=0.3) == pytest.approx(0.1 / 0.99)  # over budget: grow
    assert update_confidence_lambda(0.1, 0.3, budget=0.3) == pytest.approx(0.1 / 0.99)  # DeVries: budget <= penalty
    t = update_confidence_lambda(torch.tensor(0.1), torch.tensor(0.2))
    assert isinstance(t, torch.Tensor) and t.item() == pytest.approx(0.1 / 1.01)
    assert update_confidence_lambda(torch.tensor(0.1), torch.tensor(0.5)).item() == pytest.approx(0.1 / 0.99)


def test_confidence_branch_score():
    c = torch.tensor([-5.0, 0.0, 5.0])
    score = confidence_branch_score(c)
    assert torch.allclose(score, 1 - torch.sigmoid(c))
    assert score[0] > score[1] > score[2]  # low confidence = more anomalous
    assert torch.equal(confidence_branch_score(c[:, None]), score)
    with pytest.raises(ValueError):
        confidence_branch_score(torch.zeros(3, 2))


@pytest.mark.parametrize("cls,cfg", [
    (MnistConvNetForImageClassification, MnistConvNetConfig(confidence_branch=True)),
    (WideResNetForImageClassification, WideResNetConfig(depth=10, widen_factor=1, confidence_branch=True)),
])
def test_model_confidence_training_updates_lambda(cls, cfg):
    torch.manual_seed(0)
    model = cls(cfg)
    assert model.confidence_lambda.item() == pytest.approx(0.1)
    side, ch = cfg.image_size, cfg.num_channels
    x, y = torch.rand(6, ch, side, side), torch.randint(0, 10, (6,))
    model.train()
    out = model(x, labels=y)
    out.loss.backward()  # the in-place lambda update must not break autograd
    assert out.confidence_logits.shape == (6,)
    assert model.confidence.weight.grad is not None
    # b ~ 0.5 at init: -log b ~ 0.69 > budget 0.3, so lambda grows by 1/0.99
    assert model.confidence_lambda.item() == pytest.approx(0.1 / 0.99)
    model.eval()
    with torch.no_grad():
        out = model(x, labels=y)
    assert model.confidence_lambda.item() == pytest.approx(0.1 / 0.99)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, y))


# ------------------------------------------------------------------------------------------------ HF integration


def _bump_state(model, cfg):
    """One training forward with labels so BN running stats and confidence_lambda differ from their init."""
    model.train()
    side, ch = cfg.image_size, cfg.num_channels
    model(torch.rand(4, ch, side, side), labels=torch.tensor([0, 1, 2, 3]))
    model.eval()


@pytest.mark.parametrize("cls,cfg", [
    (WideResNetForImageClassification, WideResNetConfig(depth=16, widen_factor=2, dropout=0.3)),
    (WideResNetForImageClassification, WideResNetConfig(depth=10, widen_factor=2, num_labels=5, confidence_branch=True)),
    (MnistConvNetForImageClassification, MnistConvNetConfig()),
    (MnistConvNetForImageClassification, MnistConvNetConfig(confidence_branch=True, confidence_budget=0.2)),
])
def test_save_load_round_trip_exact(tmp_path, cls, cfg):
    torch.manual_seed(0)
    model = cls(cfg)
    _bump_state(model, cfg)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is cls and not loaded.training
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.config.to_dict()) == strip(model.config.to_dict())
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    x = torch.rand(3, cfg.num_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        out_a, out_b = model(x), loaded(x)
    # Weights are bit-identical (above); outputs may differ in the last bits: the loaded tensors are not 64-byte
    # aligned, and the CPU BLAS then takes another summation order (seen: 3.7e-9 on an AMD EPYC).
    torch.testing.assert_close(out_a.logits, out_b.logits, rtol=0, atol=1e-6)
    if cfg.confidence_branch:
        torch.testing.assert_close(out_a.confidence_logits, out_b.confidence_logits, rtol=0, atol=1e-6)
        assert loaded.confidence_lambda.item() != pytest.approx(cfg.confidence_lambda)  # the adapted value came back


def test_auto_registration():
    cfg = AutoConfig.for_model("oe_wide_resnet", depth=16, widen_factor=4, dropout=0.4)
    assert isinstance(cfg, WideResNetConfig)
    assert type(AutoModelForImageClassification.from_config(cfg)) is WideResNetForImageClassification
    assert type(AutoModel.from_config(cfg)) is WideResNetModel
    cfg = AutoConfig.for_model("oe_mnist_convnet")
    assert isinstance(cfg, MnistConvNetConfig) and cfg.num_labels == 10
    assert type(AutoModelForImageClassification.from_config(cfg)) is MnistConvNetForImageClassification


def test_config_labels_round_trip(tmp_path):
    cfg = WideResNetConfig(depth=10, widen_factor=1, id2label={0: "in", 1: "out", 2: "other"})
    assert cfg.num_labels == 3
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.num_labels == 3 and loaded.id2label[1] == "out" and loaded.depth == 10
    assert WideResNetConfig().num_labels == 10 and MnistConvNetConfig(num_labels=4).num_labels == 4
