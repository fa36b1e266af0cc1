"""``OODDetector``: a trained model + its preprocessing + an anomaly score + a threshold, saved as a Hub checkpoint.

A detector answers "is this input unlike the training data?" for raw inputs (text lines, image files):

    >>> det = OODDetector.from_pretrained("path/or/hub-id")        # doctest: +SKIP
    >>> det.score(["the company said it expects N sales", "lol idk"])   # higher = more anomalous
    >>> det.predict(["..."])                                         # True = anomaly = score > threshold

Tasks and scores (all "higher = more anomalous", see :mod:`oe_common.scores`)
------------------------------------------------------------------------------
* ``"causal-lm"`` (e.g. :class:`oe_text.AWDLSTMForCausalLM`, GPT-2): a text is encoded with its
  :class:`~oe_text.vocab.Vocabulary` after the normalisation used in training, as ids
  ``[<eos>] + tokens + [<eos>]`` (``prepend_eos`` / ``append_eos``: the leading ``<eos>`` plays the role of the
  previous sentence's end in the training stream, so the first word is predicted too). With the causal shift,
  position ``t`` predicts id ``t+1``; the score is a **per-sequence mean over the predicted (real) tokens**:

  - ``nll``: ``(1/T) sum_t -log p(x_{t+1} | x_<=t)`` (nats; / ln 2 for bits per word / character),
  - ``uniform_xent``: ``(1/T) sum_t (mean_k z_tk - logsumexp_k z_tk)`` (what the OE authors' LM code recorded),
  - ``msp`` / ``max_logit`` / ``energy``: the classifier score of each position's next-token distribution,
    averaged the same way.

  **Over-long texts** (more than ``seq_len`` predicted tokens) are cut into non-overlapping windows of
  ``seq_len + 1`` ids exactly as :func:`oe_text.windows.make_windows` cuts a stream (each window starts from a
  zero state; the first id of each window is context only, a final lone id is dropped), and the text's score
  is the **token-weighted mean over its windows** ``sum_w T_w s_w / sum_w T_w`` = the mean over all predicted
  tokens (``long_text="window"``, the default). ``long_text="truncate"`` scores the first window only,
  ``long_text="error"`` raises :class:`DetectorInputError`.
* ``"text-classification"`` (any ``AutoModelForSequenceClassification``): ids ``tokens`` (no ``<eos>`` by
  default), score ``msp`` / ``uniform_xent`` / ``max_logit`` / ``energy`` of the logits; texts longer than
  ``seq_len`` tokens are truncated by default (``"window"``: token-weighted mean over chunks of ``seq_len``).
* ``"image-classification"`` (:mod:`oe_vision` models): inputs are image files / PIL images / uint8 arrays,
  preprocessed by :func:`oe_vision.data.image_transform` built from a small JSON spec
  (:class:`ImagePreprocessing`: size, channels, invert, mean, std, center_crop), or an already
  preprocessed float tensor ``(N, C, H, W)``. Scores ``msp`` (default), ``uniform_xent``, ``max_logit``,
  ``energy``.

Thresholds (:meth:`OODDetector.fit_threshold`; exact rules in :func:`threshold_for_fpr` /
:func:`threshold_for_tpr`): an input is flagged when ``score > threshold``.

* ``target_fpr=f`` (held-out in-distribution data only): the smallest observed in-distribution score ``t``
  with ``#{s_i > t} <= floor(f * n)``, i.e. the ``(n - floor(f n))``-th smallest score, the (1 - f)
  quantile. At most a fraction ``f`` of the held-out data is flagged (fewer when scores tie at ``t``:
  ties are never flagged), and any lower threshold would flag more than ``f n``.
* ``target_tpr=r`` (needs held-out anomalies ``out_data``): the highest threshold that still flags at least
  ``ceil(r m)`` of the ``m`` anomalies. On the fitting data its false-positive rate equals
  :func:`oe_common.metrics.fpr_at_recall` at ``recall_level=r`` (the paper's FPR95 / FPR90).

Checkpoint layout (:meth:`OODDetector.save_pretrained`), all at the ROOT of the folder / Hub repo so that
``AutoModel*.from_pretrained(dir)`` also loads the bare model::

    config.json, model.safetensors   the model, via its own save_pretrained (safetensors only)
    detector_config.json             task, score, threshold, preprocessing spec, OE hyper-parameters, results
    vocab.json                       the Vocabulary (text tasks)
    README.md                        the generated model card (YAML metadata + results table)

Loading never unpickles anything (``use_safetensors=True``, no ``torch.load``) and never uses
``trust_remote_code``: the model type must be registered with the ``transformers`` Auto classes (importing
``oe_text`` / ``oe_vision`` does it for the toolkit's models; :meth:`OODDetector.from_pretrained` imports them).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .metrics import OODTable, as_score_array, evaluate_ood
from .scores import energy_score, max_logit_score, msp_score, token_nll, uniform_xent_score

__all__ = [
    "OODDetector",
    "TextPreprocessing",
    "ImagePreprocessing",
    "DetectorInputError",
    "DetectorCheckpointError",
    "threshold_for_fpr",
    "threshold_for_tpr",
    "normalize_text",
    "TASKS",
    "TEXT_TASKS",
    "SCORE_NAMES",
    "NORMALIZERS",
    "LONG_TEXT_MODES",
    "DETECTOR_CONFIG_NAME",
    "VOCAB_NAME",
    "MODEL_CARD_NAME",
    "IMAGE_SUFFIXES",
]

DETECTOR_CONFIG_NAME = "detector_config.json"
VOCAB_NAME = "vocab.json"
MODEL_CARD_NAME = "README.md"
MODEL_CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5")
_FORMAT = "oe.OODDetector"
_VERSION = 1

TEXT_TASKS = ("causal-lm", "text-classification")
TASKS = TEXT_TASKS + ("image-classification",)
SCORE_NAMES = ("msp", "uniform_xent", "max_logit", "energy", "nll")
NORMALIZERS = ("whitespace", "ptb", "ptb_char", "wikitext_char", "spelled")
LONG_TEXT_MODES = ("window", "truncate", "error")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: Default score per task: the LM's mean NLL (paper section 2), -MSP for classifiers (Table 1).
DEFAULT_SCORE = {"causal-lm": "nll", "text-classification": "msp", "image-classification": "msp"}
#: Default batch size (windows for text, images for vision).
DEFAULT_BATCH_SIZE = {"causal-lm": 32, "text-classification": 64, "image-classification": 256}
#: Auto class per task (no trust_remote_code: the model type must be registered).
_AUTO_CLASS = {
    "causal-lm": "AutoModelForCausalLM",
    "text-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
}
#: Packages whose import registers the toolkit's model types with the Auto classes.
_REGISTERING_PACKAGES = {"causal-lm": ("oe_text",), "text-classification": ("oe_text",), "image-classification": ("oe_vision",)}
#: A progress bar is shown automatically from this many batches on (``progress=None``).
PROGRESS_MIN_BATCHES = 20

# Tokens the "ptb" normaliser drops as punctuation (PTB keeps $ # & ' % * / as words or N).
_PUNCT_CHARS = frozenset('!"(),-.:;?[]{}`\u2013\u2014\u2026\u201c\u201d\u00ab\u00bb')
_PUNCT_TOKENS = frozenset({"``", "''", "-lrb-", "-rrb-", "-lcb-", "-rcb-"})


# =============================================================================================== errors
class DetectorInputError(ValueError):
    """Some inputs cannot be scored (empty text, unknown characters, over-long text, unreadable image).

    ``indices`` holds the 0-based positions of the offending inputs (so a command line can name the lines).
    """

    def __init__(self, message: str, indices: Sequence[int] = ()):
        super().__init__(message)
        self.indices = list(indices)


class DetectorCheckpointError(ValueError):
    """A checkpoint folder / Hub repo cannot be loaded (missing file, unknown model type, pickle-only weights)."""


# =============================================================================================== thresholds
def threshold_for_fpr(in_scores: Any, target_fpr: float) -> float:
    """Threshold flagging at most ``target_fpr`` of the held-out in-distribution ``in_scores`` (flag = ``score > t``).

    Rule: with ``n`` scores sorted ascending ``s_(1) <= ... <= s_(n)`` and ``k = floor(target_fpr * n)`` (the
    largest allowed number of flagged examples), ``t = s_(n-k)``: the (1 - f) quantile, taken on the observed
    values. Then ``#{s_i > t} <= k`` (strictly fewer when several scores tie at ``t``: ties are never flagged,
    the conservative choice), and every ``t' < t`` flags ``#{s_i >= t} >= k + 1`` examples, more than allowed.

    Args:
        in_scores: ``(n,)`` anomaly scores of held-out in-distribution examples.
        target_fpr: allowed false-positive rate, in ``[0, 1)``.
    """
    scores = np.sort(as_score_array(in_scores, "in_scores"))
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be a number in [0, 1), got {target_fpr!r}")
    n = scores.size
    k = int(math.floor(round(target_fpr * n, 9)))  # round(): 0.29 * 100 = 28.999999999999996 must give 29
    return float(scores[n - k - 1])


def threshold_for_tpr(in_scores: Any, out_scores: Any, target_tpr: float) -> float:
    """Highest threshold flagging at least ``ceil(target_tpr * m)`` of the ``m`` held-out anomalies (flag = ``score > t``).

    With ``j = ceil(target_tpr * m)`` and ``o*`` the ``j``-th largest anomaly score, ``t`` is the largest
    observed score (in-distribution or anomaly) strictly below ``o*`` (``nextafter(o*, -inf)`` when there is
    none). The flagged set on the fitting data is then ``{score >= o*}``: the first ROC point whose TPR reaches
    ``target_tpr``, so the in-distribution flag rate equals :func:`oe_common.metrics.fpr_at_recall`.

    Args:
        in_scores: ``(n,)`` held-out in-distribution scores (used for the candidate thresholds).
        out_scores: ``(m,)`` held-out anomaly scores.
        target_tpr: fraction of anomalies to detect, in ``(0, 1]``.
    """
    ins = as_score_array(in_scores, "in_scores")
    outs = np.sort(as_score_array(out_scores, "out_scores"))
    if isinstance(target_tpr, bool) or not isinstance(target_tpr, (int, float)) or not 0.0 < target_tpr <= 1.0:
        raise ValueError(f"target_tpr must be a number in (0, 1], got {target_tpr!r}")
    m = outs.size
    j = max(1, int(math.ceil(round(target_tpr * m, 9))))
    o_star = outs[m - j]
    pooled = np.concatenate([ins, outs])
    below = pooled[pooled < o_star]
    return float(below.max()) if below.size else float(np.nextafter(o_star, -np.inf))


# =============================================================================================== preprocessing
def _is_punct_token(token: str) -> bool:
    return token in _PUNCT_TOKENS or all(c in _PUNCT_CHARS for c in token)


def normalize_text(line: str, normalizer: str, charset: Iterable[str] | None = None) -> list[str]:
    """Tokens of one raw text line under a named normalisation (no ``<eos>``; see :data:`NORMALIZERS`).

    * ``"whitespace"``: ``line.split()``: text already in the corpus' token format (PTB / WikiText word files,
      PTB-char files with space-separated characters, EWT ``paper`` protocol). OOV words become ``<unk>``.
    * ``"ptb"``: whitespace-tokenised English mapped to PTB word conventions, the EWT ``clean`` rule
      (:func:`oe_text.normalize.normalize_ewt_clean`) with every token made only of punctuation
      (``. , ? ! : ; ( ) " -- ...``) treated as PUNCT and dropped: lower-case, numbers -> ``N``, ``/ *``
      escaped; PTB's ``N`` stays ``N`` (so PTB text is unchanged). Punctuation glued to a word (``end.``) is
      not split off: tokenise first.
    * ``"ptb_char"``: ``"ptb"`` then spelled out as PTB-char (characters of each word, ``_`` between words);
      characters outside ``charset`` are dropped.
    * ``"wikitext_char"``: the rule applied to the WikiText-2 OE outliers at character level
      (:func:`oe_text.normalize.wikitext_char_line`: glue ``@-@``, lower-case, drop non-PTB characters, ``_``).
    * ``"spelled"``: raw English read the way the char-level EWT evaluation (protocol ``spelled``) reads it
      (:func:`oe_text.normalize.spelled_line`: PTB-style tokenisation, the ``clean`` rule, no vocabulary cut,
      characters outside ``charset`` and ``< >`` dropped, ``_`` between words).
    """
    from oe_text.normalize import ConlluWord, normalize_ewt_clean, wikitext_char_line

    if normalizer == "whitespace":
        return line.split()
    if normalizer in ("ptb", "ptb_char"):
        # PTB's own number token "N" stays a number (lower-casing would turn it into the word "n"), so the
        # rule is idempotent on PTB text.
        words = [ConlluWord("0" if tok == "N" else tok, "PUNCT" if _is_punct_token(tok) else "X") for tok in line.split()]
        tokens = normalize_ewt_clean(words)
        if normalizer == "ptb":
            return tokens
        if charset is None:
            raise ValueError("the 'ptb_char' normaliser needs the character set (the char vocabulary)")
        keep = set(charset)
        return [c for c in "_".join(tokens) if c in keep]
    if normalizer == "spelled":
        from oe_text.normalize import spelled_line

        if charset is None:
            raise ValueError("the 'spelled' normaliser needs the character set (the char vocabulary)")
        return list(spelled_line(line, charset))
    if normalizer == "wikitext_char":
        if charset is None:
            raise ValueError("the 'wikitext_char' normaliser needs the character set (the char vocabulary)")
        return list(wikitext_char_line(line, charset))
    raise ValueError(f"unknown normalizer {normalizer!r}; choose one of {NORMALIZERS}")


@dataclass
class TextPreprocessing:
    """How raw text becomes model input. Everything but ``vocab`` is saved in ``detector_config.json``.

    Args:
        vocab: the :class:`oe_text.vocab.Vocabulary` the model was trained with (saved as ``vocab.json``).
        normalizer: one of :data:`NORMALIZERS` (see :func:`normalize_text`).
        seq_len: language models: predicted tokens per window (70 word / 150 char, as in training);
            classifiers: tokens per input.
        prepend_eos / append_eos: add ``<eos>`` before / after the tokens (``None``: both for a causal LM,
            neither for a classifier).
        long_text: what to do with texts longer than one window: ``"window"`` / ``"truncate"`` / ``"error"``
            (``None``: ``"window"`` for a causal LM, ``"truncate"`` for a classifier).
    """

    vocab: Any
    normalizer: str = "whitespace"
    seq_len: int = 70
    prepend_eos: bool | None = None
    append_eos: bool | None = None
    long_text: str | None = None

    def __post_init__(self) -> None:
        from oe_text.vocab import Vocabulary

        if not isinstance(self.vocab, Vocabulary):
            raise TypeError(f"vocab must be an oe_text.vocab.Vocabulary, got {type(self.vocab).__name__}")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {self.normalizer!r}; choose one of {NORMALIZERS}")
        if self.normalizer in ("ptb_char", "wikitext_char", "spelled") and self.vocab.level != "char":
            raise ValueError(f"normalizer {self.normalizer!r} produces characters but the vocabulary is {self.vocab.level}-level")
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, (int, np.integer)) or self.seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {self.seq_len!r}")
        self.seq_len = int(self.seq_len)
        if self.long_text is not None and self.long_text not in LONG_TEXT_MODES:
            raise ValueError(f"long_text must be one of {LONG_TEXT_MODES}, got {self.long_text!r}")

    def resolved(self, task: str) -> "TextPreprocessing":
        """A copy with the task's defaults filled in for the ``None`` fields."""
        lm = task == "causal-lm"
        return TextPreprocessing(
            vocab=self.vocab,
            normalizer=self.normalizer,
            seq_len=self.seq_len,
            prepend_eos=lm if self.prepend_eos is None else bool(self.prepend_eos),
            append_eos=lm if self.append_eos is None else bool(self.append_eos),
            long_text=("window" if lm else "truncate") if self.long_text is None else self.long_text,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "text",
            "level": self.vocab.level,
            "vocab_file": VOCAB_NAME,
            "vocab_size": len(self.vocab),
            "normalizer": self.normalizer,
            "seq_len": self.seq_len,
            "prepend_eos": self.prepend_eos,
            "append_eos": self.append_eos,
            "long_text": self.long_text,
        }

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], vocab: Any) -> "TextPreprocessing":
        keys = ("normalizer", "seq_len", "prepend_eos", "append_eos", "long_text")
        return cls(vocab=vocab, **{k: spec[k] for k in keys if k in spec})

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of each text (normalised, ``<eos>`` added as configured).

        Raises:
            DetectorInputError: naming every text (0-based index) that is empty after normalisation or holds
                tokens that the vocabulary cannot encode.
        """
        vocab = self.vocab
        charset = vocab.symbols() if vocab.level == "char" else None
        empty, unencodable, ids_list = [], {}, []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text inputs must be str, got {type(text).__name__} at index {index}")
            tokens = normalize_text(text, self.normalizer, charset)
            if not tokens:
                empty.append(index)
                ids_list.append(None)
                continue
            if vocab.unk is None:
                bad = sorted({t for t in tokens if t not in vocab.stoi})
                if bad:
                    unencodable[index] = bad
                    ids_list.append(None)
                    continue
            if self.prepend_eos:
                tokens = [vocab.eos, *tokens]
            if self.append_eos:
                tokens = [*tokens, vocab.eos]
            ids_list.append(vocab.encode(tokens))
        if empty or unencodable:
            parts = []
            if empty:
                what = "empty" if self.normalizer == "whitespace" else f"empty after the {self.normalizer!r} normalisation"
                parts.append(f"{len(empty)} input(s) {what} at index {_some(empty)}")
            if unencodable:
                detail = "; ".join(f"index {i}: {toks[:5]}" for i, toks in list(unencodable.items())[:5])
                parts.append(f"{len(unencodable)} input(s) with tokens not in the {vocab.level} vocabulary (it has no unk) ({detail})")
            raise DetectorInputError("; ".join(parts), sorted(empty + list(unencodable)))
        return ids_list


@dataclass
class ImagePreprocessing:
    """A JSON-serialisable description of the image pipeline (:func:`oe_vision.data.image_transform` arguments).

    ``size`` (side in pixels), ``channels`` (1 grayscale / 3 RGB), ``invert``, ``mean`` / ``std``
    (per-channel ``Normalize``, both or neither), ``center_crop`` (resize the shorter side then crop).
    No augmentation is ever applied at scoring time.
    """

    size: int | None = None
    channels: int | None = None
    invert: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    center_crop: bool = False

    def __post_init__(self) -> None:
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 1):
            raise ValueError(f"size must be a positive int or None, got {self.size!r}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {self.channels!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (or neither)")
        self.mean = None if self.mean is None else [float(v) for v in self.mean]
        self.std = None if self.std is None else [float(v) for v in self.std]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "image", **asdict(self)}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "ImagePreprocessing":
        allowed = {"size", "channels", "invert", "mean", "std", "center_crop"}
        unknown = sorted(set(spec) - allowed - {"type"})
        if unknown:
            raise DetectorCheckpointError(f"unknown image preprocessing field(s) {unknown}; known: {sorted(allowed)}")
        return cls(**{k: spec[k] for k in allowed if k in spec})

    def transform(self) -> Callable:
        """The torchvision v2 pipeline (input: PIL image, HWC uint8 array or CHW uint8 tensor)."""
        from oe_vision.data import image_transform

        return image_transform(
            size=self.size, channels=self.channels, invert=self.invert, mean=self.mean, std=self.std, center_crop=self.center_crop
        )

    @property
    def pil_mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


def _some(indices: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in list(indices)[:limit])
    return shown + (f", ... ({len(indices) - limit} more)" if len(indices) > limit else "")


# =============================================================================================== hub helpers
def _truthy_env(name: str) -> bool:
    value = os.environ.get(name)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (in the environment now, or when ``huggingface_hub`` was imported)."""
    if _truthy_env("HF_HUB_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else with a path shape is a (missing) local folder."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None, token: Any, cache_dir: Any) -> Path:
    """A local folder holding the checkpoint: the folder itself, or a ``snapshot_download`` of a Hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DetectorCheckpointError(f"{str(name_or_path)!r} is a file; give the checkpoint FOLDER (the one with {DETECTOR_CONFIG_NAME})")
        return path
    name = str(name_or_path)
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise DetectorCheckpointError(f"checkpoint folder {name!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except Exception as exc:
        raise DetectorCheckpointError(f"{name!r} is neither an existing folder nor a valid Hub repo id ({exc})") from None
    offline = hub_offline()
    try:
        local = snapshot_download(
            name,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            allow_patterns=["*.json", "*.safetensors", "README.md"],
            local_files_only=offline,
        )
    except Exception as exc:  # offline, no connection, repo not found, gated, ...: re-raise with what to do
        kind = type(exc).__name__
        if offline:
            hint = (
                f"HF_HUB_OFFLINE is set and {name!r} (revision {revision or 'main'}) is not in the local Hugging Face "
                "cache. Pass a local checkpoint folder, or unset HF_HUB_OFFLINE on a machine with network access."
            )
        elif "NotFound" in kind or "RepositoryNotFound" in kind:
            hint = f"the Hub has no repo {name!r} you can read (check the id and revision; private repos need a token / `hf auth login`)."
        else:
            hint = "the Hub could not be reached (no network?). Pass a local checkpoint folder or retry with network access."
        raise RuntimeError(f"cannot load detector {name!r} from the Hugging Face Hub: {hint} [{kind}: {exc}]") from exc
    return Path(local)


# =============================================================================================== the detector
def _infer_task(model: torch.nn.Module) -> str:
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if name.endswith("ForSequenceClassification"):
        return "text-classification"
    if name.endswith("ForImageClassification"):
        return "image-classification"
    raise ValueError(f"cannot tell the task of a {name}; pass task= one of {TASKS}")


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _logits(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, (tuple, list)) else output
    return logits


class OODDetector:
    """An anomaly detector: ``model`` + ``preprocessing`` + ``score`` + ``threshold`` (flag = ``score > threshold``).

    Args:
        model: a trained ``transformers`` model: causal LM, text sequence classifier or image classifier.
        preprocessing: :class:`TextPreprocessing` (text tasks) or :class:`ImagePreprocessing` (images; default:
            no resizing / normalisation, scale to ``[0, 1]``).
        score: one of :data:`SCORE_NAMES` (``nll`` for causal LMs only); default ``nll`` for LMs, ``msp`` else.
        threshold: decision threshold, or None until :meth:`fit_threshold` (``predict`` needs one).
        task: ``"causal-lm"``, ``"text-classification"`` or ``"image-classification"``; inferred from the model
            class name when None.
        score_kwargs: extra arguments of the score (``{"temperature": T}`` for ``energy``).
        training: OE hyper-parameters and provenance (``oe_lambda``, ``oe_loss``, ``outlier_dataset``,
            ``in_distribution_dataset``, epochs, ...), saved in the config and shown on the model card.
        evaluation: detection results (``OODTable.to_dict()``), normally set by :meth:`evaluate`.
        device: where the model runs (default ``cuda`` when available, else ``cpu``).
        batch_size: windows (text) / images per forward pass (default by task, :data:`DEFAULT_BATCH_SIZE`).
        progress: tqdm progress bar: True / False, or None = automatic (from :data:`PROGRESS_MIN_BATCHES` batches).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: TextPreprocessing | ImagePreprocessing | None = None,
        *,
        score: str | None = None,
        threshold: float | None = None,
        task: str | None = None,
        score_kwargs: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
        threshold_info: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ):
        self.task = _infer_task(model) if task is None else task
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task in TEXT_TASKS:
            if not isinstance(preprocessing, TextPreprocessing):
                raise TypeError(f"a {self.task} detector needs preprocessing=TextPreprocessing(vocab, ...), got {type(preprocessing).__name__}")
            preprocessing = preprocessing.resolved(self.task)
        else:
            preprocessing = ImagePreprocessing() if preprocessing is None else preprocessing
            if not isinstance(preprocessing, ImagePreprocessing):
                raise TypeError(f"an image detector needs preprocessing=ImagePreprocessing(...), got {type(preprocessing).__name__}")
        self.preprocessing = preprocessing
        self.score_name = DEFAULT_SCORE[self.task] if score is None else score
        if self.score_name not in SCORE_NAMES:
            raise ValueError(f"unknown score {self.score_name!r}; choose one of {SCORE_NAMES}")
        if self.score_name == "nll" and self.task != "causal-lm":
            raise ValueError("score 'nll' needs a causal language model; classifiers use msp / uniform_xent / max_logit / energy")
        self.score_kwargs = dict(score_kwargs or {})
        unknown = sorted(set(self.score_kwargs) - ({"temperature"} if self.score_name == "energy" else set()))
        if unknown:
            raise ValueError(f"score {self.score_name!r} takes no argument(s) {unknown}")
        self.threshold = None if threshold is None else float(threshold)
        self.threshold_info = dict(threshold_info or {})
        self.training = dict(training or {})
        self.evaluation = None if evaluation is None else dict(evaluation)
        self.batch_size = DEFAULT_BATCH_SIZE[self.task] if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.progress = progress
        self.device = _default_device() if device is None else torch.device(device)
        self.model = model.to(self.device).eval()
        self._check_model_fits()

    # ------------------------------------------------------------------ properties
    @property
    def vocab(self):
        """The vocabulary (text tasks), else None."""
        return self.preprocessing.vocab if isinstance(self.preprocessing, TextPreprocessing) else None

    @property
    def is_text(self) -> bool:
        return self.task in TEXT_TASKS

    def __repr__(self) -> str:
        return (
            f"OODDetector(task={self.task!r}, model={type(self.model).__name__}, score={self.score_name!r}, "
            f"threshold={self.threshold!r}, device={str(self.device)!r})"
        )

    def to(self, device: str | torch.device) -> "OODDetector":
        """Move the model to ``device``; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def _check_model_fits(self) -> None:
        config = getattr(self.model, "config", None)
        if self.is_text:
            vocab_size = getattr(config, "vocab_size", None)
            if vocab_size is not None and len(self.vocab) > vocab_size:
                raise ValueError(f"the vocabulary has {len(self.vocab)} tokens but the model only {vocab_size}")
            width = self.preprocessing.seq_len + (1 if self.task == "causal-lm" else 0)
            n_pos = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
            if n_pos is not None and width > n_pos:
                raise ValueError(f"windows of {width} ids do not fit the model's {n_pos} positions; lower seq_len")

    # ------------------------------------------------------------------ scoring
    def _progress_bar(self, n_batches: int, desc: str):
        from tqdm.auto import tqdm

        show = self.progress if self.progress is not None else n_batches >= PROGRESS_MIN_BATCHES
        return tqdm(total=n_batches, desc=desc, unit="batch", disable=not show, leave=False)

    def _classifier_score(self, logits: torch.Tensor) -> torch.Tensor:
        if self.score_name == "msp":
            return msp_score(logits)
        if self.score_name == "uniform_xent":
            return uniform_xent_score(logits)
        if self.score_name == "max_logit":
            return max_logit_score(logits)
        if self.score_name == "energy":
            return energy_score(logits, **self.score_kwargs)
        raise ValueError(f"score {self.score_name!r} is not a classifier score")

    def score(self, inputs: Any) -> np.ndarray:
        """Anomaly scores (higher = more anomalous), float64 array of shape ``(N,)``.

        Args:
            inputs: text tasks: a str or a sequence of str (one example each); images: a sequence of image
                paths / PIL images / uint8 arrays (HW or HWC) / uint8 CHW tensors, or a float tensor
                ``(N, C, H, W)`` that is already preprocessed.
        Raises:
            DetectorInputError: inputs that cannot be scored (empty texts, over-long texts with
                ``long_text="error"``, unreadable images), with their 0-based indices.
        """
        if self.is_text:
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            return self._score_text(texts)
        return self._score_images(inputs)

    def predict(self, inputs: Any) -> np.ndarray:
        """``score(inputs) > threshold`` as a bool array (True = anomaly)."""
        return self.predict_from_scores(self.score(inputs))

    def predict_from_scores(self, scores: Any) -> np.ndarray:
        """``scores > threshold`` (bool array); needs a threshold (:meth:`fit_threshold` or ``threshold=``)."""
        if self.threshold is None:
            raise ValueError("this detector has no threshold: call fit_threshold(in_data, target_fpr=...) or set .threshold")
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def _windows(self, ids_list: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Cut each text's ids into windows; returns the windows (real ids only) and their owner text index."""
        from oe_text.windows import make_windows

        pre = self.preprocessing
        lm = self.task == "causal-lm"
        width = pre.seq_len + 1 if lm else pre.seq_len
        too_long = [i for i, ids in enumerate(ids_list) if ids.size > width]
        if too_long and pre.long_text == "error":
            unit = "predicted tokens" if lm else "tokens"
            sizes = ", ".join(f"index {i}: {ids_list[i].size - (1 if lm else 0)}" for i in too_long[:5])
            raise DetectorInputError(
                f"{len(too_long)} input(s) longer than seq_len={pre.seq_len} {unit} ({sizes}); "
                "shorten them or use long_text='window' / 'truncate'",
                too_long,
            )
        windows, owners, nothing = [], [], []
        for index, ids in enumerate(ids_list):
            if lm:
                arrays = make_windows(ids, pre.seq_len, pad_id=self.vocab.eos_id)
                rows = [row[: int(mask.sum())] for row, mask in zip(arrays["input_ids"], arrays["attention_mask"])]
            else:
                rows = [ids[start : start + width] for start in range(0, ids.size, width)]
            if pre.long_text == "truncate":
                rows = rows[:1]
            if not rows:
                nothing.append(index)
            windows.extend(rows)
            owners.extend([index] * len(rows))
        if nothing:
            raise DetectorInputError(f"{len(nothing)} input(s) have a single token and nothing to predict (index {_some(nothing)})", nothing)
        return windows, np.asarray(owners, dtype=np.int64)

    @torch.inference_mode()
    def _score_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float64)
        ids_list = self.preprocessing.encode(texts)
        windows, owners = self._windows(ids_list)
        sums = np.zeros(len(texts), dtype=np.float64)
        counts = np.zeros(len(texts), dtype=np.float64)
        order = sorted(range(len(windows)), key=lambda k: -windows[k].size)  # similar lengths share a batch
        n_batches = math.ceil(len(order) / self.batch_size)
        pad_id = self.vocab.eos_id
        with self._progress_bar(n_batches, "scoring texts") as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                length = max(windows[k].size for k in chunk)
                input_ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), length), dtype=torch.long)
                for row, k in enumerate(chunk):
                    w = torch.from_numpy(np.asarray(windows[k], dtype=np.int64))
                    input_ids[row, : w.numel()] = w
                    mask[row, : w.numel()] = 1
                input_ids, mask = input_ids.to(self.device), mask.to(self.device)
                logits = _logits(self.model(input_ids=input_ids, attention_mask=mask))
                if self.task == "causal-lm":
                    window_sum, window_count = self._lm_window_sums(logits, input_ids, mask)
                else:  # one score per chunk, weighted by its number of tokens
                    window_count = mask.sum(-1).double()
                    window_sum = self._classifier_score(logits).double() * window_count
                idx = owners[chunk]
                np.add.at(sums, idx, window_sum.cpu().numpy())
                np.add.at(counts, idx, window_count.cpu().numpy())
                bar.update(1)
        return sums / counts

    def _lm_window_sums(self, logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per window: the sum of the per-token score over predicted positions, and their number ``T_w``.

        Causal shift: ``logits[:, t]`` scores ``input_ids[:, t+1]``; positions whose target is padding are masked.
        ``sum / T_w`` is :func:`~oe_common.scores.sequence_nll_score` / ``sequence_uniform_xent_score``.
        """
        from oe_text.models import shifted_logits_and_targets

        shifted, targets = shifted_logits_and_targets(logits, input_ids, mask)
        valid = targets != -100
        per_token = token_nll(shifted, targets) if self.score_name == "nll" else self._classifier_score(shifted)
        per_token = per_token.double().masked_fill(~valid, 0.0)
        return per_token.sum(-1), valid.sum(-1).double()

    def _load_image(self, item: Any, index: int):
        from PIL import Image, UnidentifiedImageError

        mode = self.preprocessing.pil_mode
        if isinstance(item, (str, os.PathLike)):
            try:
                with Image.open(item) as img:
                    return img.convert(mode)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise DetectorInputError(f"cannot read image {str(item)!r} (index {index}): {exc}", [index]) from None
        if isinstance(item, Image.Image):
            return item.convert(mode)
        if isinstance(item, (np.ndarray, torch.Tensor)):
            if item.dtype not in (np.uint8, torch.uint8):
                raise DetectorInputError(
                    f"image array at index {index} has dtype {item.dtype}; give uint8 images, or a preprocessed float "
                    "tensor (N, C, H, W) for the whole batch",
                    [index],
                )
            return item
        raise DetectorInputError(f"unsupported image input of type {type(item).__name__} at index {index}", [index])

    @torch.inference_mode()
    def _score_images(self, inputs: Any) -> np.ndarray:
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
            if inputs.dim() != 4:
                raise DetectorInputError(f"a preprocessed image tensor must be (N, C, H, W), got shape {tuple(inputs.shape)}")
            batches: Iterator = (inputs[s : s + self.batch_size] for s in range(0, len(inputs), self.batch_size))
            n = len(inputs)
        else:
            if isinstance(inputs, (str, os.PathLike)):
                raise TypeError("give a list of image paths (OODDetector.score does not list folders; see oe_common.cli.list_images)")
            items = list(inputs)
            n = len(items)
            transform = self.preprocessing.transform()

            def make_batches() -> Iterator[torch.Tensor]:
                for s in range(0, n, self.batch_size):
                    tensors = [transform(self._load_image(item, s + k)) for k, item in enumerate(items[s : s + self.batch_size])]
                    shapes = {tuple(t.shape) for t in tensors}
                    if len(shapes) > 1:
                        raise DetectorInputError(
                            f"images {s}..{s + len(tensors) - 1} have different shapes after preprocessing {sorted(shapes)}; "
                            "set ImagePreprocessing(size=...)"
                        )
                    yield torch.stack(tensors)

            batches = make_batches()
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        out = []
        with self._progress_bar(math.ceil(n / self.batch_size), "scoring images") as bar:
            for pixel_values in batches:
                logits = _logits(self.model(pixel_values=pixel_values.to(self.device, torch.float32)))
                out.append(self._classifier_score(logits).double().cpu().numpy())
                bar.update(1)
        return np.concatenate(out)

    # ------------------------------------------------------------------ thresholds and evaluation
    def fit_threshold(
        self,
        in_data: Any,
        out_data: Any = None,
        *,
        target_fpr: float | None = None,
        target_tpr: float | None = None,
    ) -> float:
        """Fit ``threshold`` on HELD-OUT data (never on the test anomalies you report); returns it.

        Give exactly one target:

        * ``target_fpr=f``: flag at most a fraction ``f`` of ``in_data`` (:func:`threshold_for_fpr`);
          ``out_data``, if given, is only used to report the achieved TPR.
        * ``target_tpr=r``: flag at least a fraction ``r`` of the anomalies ``out_data`` (required) with the
          highest such threshold (:func:`threshold_for_tpr`).

        ``in_data`` / ``out_data`` are raw inputs (anything :meth:`score` takes). For precomputed scores use
        :meth:`fit_threshold_from_scores`. The rule and the achieved rates are kept in ``threshold_info``.
        """
        in_scores = self.score(in_data)
        out_scores = None if out_data is None else self.score(out_data)
        return self.fit_threshold_from_scores(in_scores, out_scores, target_fpr=target_fpr, target_tpr=target_tpr)

    def fit_threshold_from_scores(
        self,
        in_scores: Any,
        out_scores: Any = None,
        *,
        target_fpr: float | None = None,
        target_tpr: float | None = None,
    ) -> float:
        """:meth:`fit_threshold` on precomputed scores (``(n,)`` in-distribution, optional ``(m,)`` anomalies)."""
        if (target_fpr is None) == (target_tpr is None):
            raise ValueError("give exactly one of target_fpr (in-distribution data only) or target_tpr (needs out_data)")
        ins = as_score_array(in_scores, "in_scores")
        outs = None if out_scores is None else as_score_array(out_scores, "out_scores")
        if target_fpr is not None:
            threshold = threshold_for_fpr(ins, target_fpr)
            info: dict[str, Any] = {"rule": "target_fpr", "target_fpr": float(target_fpr)}
        else:
            if outs is None:
                raise ValueError(
                    "target_tpr needs held-out anomalies: fit_threshold(in_data, out_data, target_tpr=...); "
                    "with in-distribution data only use target_fpr"
                )
            threshold = threshold_for_tpr(ins, outs, target_tpr)
            info = {"rule": "target_tpr", "target_tpr": float(target_tpr)}
        info.update({"n_in": int(ins.size), "achieved_fpr": float(np.mean(ins > threshold))})
        if outs is not None:
            info.update({"n_out": int(outs.size), "achieved_tpr": float(np.mean(outs > threshold))})
        self.threshold = threshold
        self.threshold_info = info
        return threshold

    def evaluate(
        self,
        in_data: Any,
        out_data_by_set: Mapping[str, Any],
        *,
        recall_level: float | None = None,
        n_draws: int = 1,
        ratio: int = 5,
        seed: int = 0,
        store: bool = True,
    ) -> OODTable:
        """Score the test data and run :func:`oe_common.metrics.evaluate_ood` (1 : ``ratio`` base rate).

        ``recall_level`` defaults to 0.90 for text (FPR90) and 0.95 for images (FPR95), as in the paper.
        With ``store=True`` the table is kept in ``evaluation`` (saved in the config and on the model card).
        """
        level = recall_level if recall_level is not None else (0.90 if self.is_text else 0.95)
        in_scores = self.score(in_data)
        out_scores = {name: self.score(data) for name, data in out_data_by_set.items()}
        table = evaluate_ood(in_scores, out_scores, n_draws=n_draws, ratio=ratio, seed=seed, recall_level=level)
        table.meta.update({"score": self.score_name})
        if store:
            self.evaluation = table.to_dict()
        return table

    # ------------------------------------------------------------------ persistence
    def to_config(self) -> dict[str, Any]:
        """The content of ``detector_config.json``."""
        from . import __version__

        config = getattr(self.model, "config", None)
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "oe_version": __version__,
            "task": self.task,
            "model_type": getattr(config, "model_type", None),
            "architecture": type(self.model).__name__,
            "score": self.score_name,
            "score_kwargs": self.score_kwargs,
            "threshold": self.threshold,
            "threshold_info": self.threshold_info,
            "preprocessing": self.preprocessing.to_dict(),
            "training": self.training,
            "evaluation": self.evaluation,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
        """Write the checkpoint (see the module docstring) into ``save_directory`` (created if needed).

        The model goes to the folder ROOT through its own ``save_pretrained`` (safetensors); no pickle file is
        written. ``repo_id`` only changes the usage snippet on the model card. Returns the folder.
        """
        from .model_card import render_model_card

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in _PICKLE_WEIGHTS:  # never leave pickled weights next to ours
            if (folder / stale).exists():
                raise DetectorCheckpointError(f"{folder / stale} exists: refusing to save a detector next to pickled weights")
        self.model.save_pretrained(folder)
        if not (folder / WEIGHTS_NAME).is_file() and not (folder / WEIGHTS_INDEX_NAME).is_file():
            raise DetectorCheckpointError(f"the model's save_pretrained wrote no {WEIGHTS_NAME} in {folder}")
        config = self.to_config()
        (folder / DETECTOR_CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if self.vocab is not None:
            self.vocab.save(folder / VOCAB_NAME)
        model_config = self.model.config.to_dict() if hasattr(self.model, "config") else {}
        num_parameters = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        card = render_model_card(config, model_config=model_config, repo_id=repo_id, num_parameters=num_parameters)
        (folder / MODEL_CARD_NAME).write_text(card, encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "OODDetector":
        """Load a detector from a local folder or a Hub repo id (``snapshot_download``; ``revision`` = branch/tag/commit).

        Safetensors only, no ``trust_remote_code``. ``oe_text`` / ``oe_vision`` are imported as the task needs so
        their model types are registered with the Auto classes.

        Raises:
            DetectorCheckpointError: the folder lacks a file (all missing files named), holds only pickled
                weights, or names a model type no imported package registers.
            RuntimeError: a Hub id that cannot be fetched (offline / no network / not found), saying what to do.
        """
        folder = _resolve_checkpoint(name_or_path, revision, token, cache_dir)
        missing = [n for n in (DETECTOR_CONFIG_NAME, MODEL_CONFIG_NAME) if not (folder / n).is_file()]
        has_weights = (folder / WEIGHTS_NAME).is_file() or (folder / WEIGHTS_INDEX_NAME).is_file()
        if not has_weights:
            pickled = [n for n in _PICKLE_WEIGHTS if (folder / n).exists()]
            if pickled:
                raise DetectorCheckpointError(
                    f"{folder} has only pickle-based weights {pickled}; OODDetector loads safetensors only "
                    f"({WEIGHTS_NAME}). Re-save the model with save_pretrained() from a trusted environment."
                )
            missing.append(WEIGHTS_NAME)
        config = None
        if (folder / DETECTOR_CONFIG_NAME).is_file():
            config = _read_json(folder / DETECTOR_CONFIG_NAME)
            if config.get("format") != _FORMAT:
                raise DetectorCheckpointError(f"{folder / DETECTOR_CONFIG_NAME} is not an OODDetector config (format={config.get('format')!r})")
            if int(config.get("version", 0)) > _VERSION:
                raise DetectorCheckpointError(f"detector config version {config.get('version')} is newer than this code ({_VERSION}); upgrade oe")
            if config.get("preprocessing", {}).get("type") == "text":
                vocab_file = config["preprocessing"].get("vocab_file", VOCAB_NAME)
                if not (folder / vocab_file).is_file():
                    missing.append(vocab_file)
        if missing:
            raise DetectorCheckpointError(f"checkpoint {str(name_or_path)!r} is missing {', '.join(missing)} (looked in {folder})")
        assert config is not None
        task = config.get("task")
        if task not in TASKS:
            raise DetectorCheckpointError(f"{DETECTOR_CONFIG_NAME}: unknown task {task!r}; known: {TASKS}")
        model = _load_model(folder, task)
        spec = dict(config.get("preprocessing") or {})
        if task in TEXT_TASKS:
            from oe_text.vocab import Vocabulary

            vocab = Vocabulary.load(folder / spec.get("vocab_file", VOCAB_NAME))
            preprocessing: TextPreprocessing | ImagePreprocessing = TextPreprocessing.from_dict(spec, vocab)
        else:
            preprocessing = ImagePreprocessing.from_dict(spec)
        return cls(
            model,
            preprocessing,
            score=config.get("score"),
            threshold=config.get("threshold"),
            task=task,
            score_kwargs=config.get("score_kwargs"),
            training=config.get("training"),
            evaluation=config.get("evaluation"),
            threshold_info=config.get("threshold_info"),
            device=device,
            batch_size=batch_size,
            progress=progress,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload OE detector",
    ) -> str:
        """Save into a temporary folder and upload it (``HfApi().create_repo`` + ``upload_folder``); returns the URL.

        Raises:
            RuntimeError: ``HF_HUB_OFFLINE`` is set, the Hub cannot be reached, or it refuses the upload (no
                token, no permission), with what to do; nothing is uploaded.
        """
        if hub_offline():
            raise RuntimeError(
                f"cannot push to {repo_id!r}: HF_HUB_OFFLINE is set. Unset it on a machine with network access and a "
                "Hugging Face token (`hf auth login` or HF_TOKEN), or save_pretrained(dir) now and upload the folder later."
            )
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="oe-detector-") as tmp:
            self.save_pretrained(tmp, repo_id=repo_id)
            try:
                url = api.create_repo(repo_id, private=private, exist_ok=True)
                api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
            except Exception as exc:
                kind = type(exc).__name__
                raise RuntimeError(
                    f"cannot push the detector to {repo_id!r}: {kind}: {exc}. Check the network connection, that you are "
                    "logged in (`hf auth login` or HF_TOKEN) with write access, or save_pretrained(dir) and upload later."
                ) from exc
        return str(url)


# =============================================================================================== loading helpers
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetectorCheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DetectorCheckpointError(f"{path} must hold a JSON object")
    return data


def _load_model(folder: Path, task: str) -> torch.nn.Module:
    """The model of ``folder`` via the task's Auto class: safetensors only, no remote code."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for package in _REGISTERING_PACKAGES[task]:
        importlib.import_module(package)
    model_config = _read_json(folder / MODEL_CONFIG_NAME)
    model_type = model_config.get("model_type")
    if not model_type:
        raise DetectorCheckpointError(f"{folder / MODEL_CONFIG_NAME} has no model_type")
    if model_type not in CONFIG_MAPPING:
        raise DetectorCheckpointError(
            f"unknown model_type {model_type!r} in {folder / MODEL_CONFIG_NAME}: neither transformers nor "
            f"{'/'.join(_REGISTERING_PACKAGES[task])} registers it, and OODDetector never runs remote code "
            "(trust_remote_code). Import the package that defines the model (and registers it with the Auto "
            "classes) before loading."
        )
    auto_cls = getattr(transformers, _AUTO_CLASS[task])
    try:
        return auto_cls.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    except (ValueError, KeyError) as exc:
        raise DetectorCheckpointError(f"cannot load the {model_type!r} model in {folder} as {_AUTO_CLASS[task]}: {exc}") from exc
