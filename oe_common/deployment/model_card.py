"""The model card (``README.md``) written next to every saved :class:`~oe_common.deployment.detector.OODDetector`.

Details: docs/modules.md, section ``oe_common.deployment.model_card``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import yaml

from ..maths.metrics import OODTable

__all__ = ["LIBRARY_NAME", "BASE_TAGS", "card_metadata", "render_model_card", "parse_front_matter", "evaluation_table", "is_oe_model_card"]

#: ``training["method"]`` of a detector built post hoc around an unchanged model (``oe build-detector``).
POST_HOC_METHOD = "post-hoc"
#: ``library_name`` on the Hub (the PyPI name of this toolkit).
LIBRARY_NAME = "oe-toolkit"
#: Tags every detector card carries.
BASE_TAGS = ("outlier-exposure", "anomaly-detection", "out-of-distribution-detection")

_DATASET_KEYS = ("in_distribution_dataset", "outlier_dataset", "test_anomaly_datasets")
_SCORE_TEXT = {
    "nll": "mean negative log-likelihood per predicted token (nats), averaged over the sequence",
    "uniform_xent": "mean over positions of the negative cross-entropy to the uniform distribution, "
    "`(1/K) Σ_k log p_k` (OE's training target; highest for a uniform prediction)",
    "msp": "negative maximum softmax probability, `-max_k p_k` (Hendrycks & Gimpel, 2017)",
    "max_logit": "negative maximum logit, `-max_k z_k`",
    "energy": "free energy `-T · logsumexp(z / T)`",
    "mahalanobis": "Mahalanobis distance of the penultimate (pooled) feature to the nearest class mean, "
    "`min_k sqrt((x - μ_k)ᵀ Σ⁺ (x - μ_k))`, with class means and a shared covariance fitted on the training set "
    "(Lee et al., 2018)",
}
_CITATION = """@inproceedings{hendrycks2019oe,
  title     = {Deep Anomaly Detection with Outlier Exposure},
  author    = {Hendrycks, Dan and Mazeika, Mantas and Dietterich, Thomas},
  booktitle = {International Conference on Learning Representations},
  year      = {2019}
}"""


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def evaluation_table(evaluation: Mapping[str, Any] | None) -> OODTable | None:
    """Rebuild the :class:`OODTable` stored in a detector config (``None`` when there is none)."""
    if not evaluation or not evaluation.get("rows"):
        return None
    return OODTable(
        rows=list(evaluation["rows"]),
        recall_level=float(evaluation.get("recall_level", 0.95)),
        n_draws=int(evaluation.get("n_draws", 1)),
        ratio=int(evaluation.get("ratio", 5)),
        seed=int(evaluation.get("seed", 0)),
        meta=dict(evaluation.get("meta") or {}),
        allow_small_sets=bool(evaluation.get("allow_small_sets", False)),
    )


def card_metadata(config: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML metadata of a detector config (``detector_config.json`` content)."""
    training = dict(config.get("training") or {})
    modality = "image" if config.get("task") == "image-classification" else "text"
    tags = [*BASE_TAGS, modality]
    if config.get("model_type"):
        tags.append(str(config["model_type"]))
    datasets: list[str] = []
    for key in _DATASET_KEYS:
        for name in _as_list(training.get(key)):
            if name not in datasets:
                datasets.append(name)
    table = evaluation_table(config.get("evaluation"))
    recall = table.recall_level if table is not None else (0.95 if modality == "image" else 0.90)
    metadata: dict[str, Any] = {
        "library_name": LIBRARY_NAME,
        "tags": tags,
        "datasets": datasets,
        "metrics": ["auroc", "aupr", f"fpr{round(recall * 100):d}"],
    }
    if training.get("license"):
        metadata["license"] = str(training["license"])
    return metadata


def _kv_table(mapping: Mapping[str, Any], header: tuple[str, str] = ("setting", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    for key, value in mapping.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        cell = str(shown).replace("|", "\\|")
        lines.append(f"| `{key}` | {cell} |")
    return "\n".join(lines)


def render_model_card(
    config: Mapping[str, Any],
    *,
    model_config: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    num_parameters: int | None = None,
) -> str:
    """The full ``README.md`` text (front matter + body) for a detector config."""
    metadata = card_metadata(config)
    training = dict(config.get("training") or {})
    task = config.get("task", "?")
    score = config.get("score", "?")
    pre = dict(config.get("preprocessing") or {})
    where = repo_id or "path/to/this/folder"
    in_name = training.get("in_distribution_dataset") or "the training data"
    arch = config.get("architecture") or (model_config or {}).get("model_type", "model")
    text = task != "image-classification"

    out = ["---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    post_hoc = training.get("method") == POST_HOC_METHOD
    if post_hoc:
        out.append(f"# Post-hoc anomaly detector ({arch}, {training.get('base_model')})")
    else:
        out.append(f"# Outlier Exposure anomaly detector ({arch}, {in_name})")
    out.append("")
    size = f" with {num_parameters:,} parameters" if num_parameters else ""
    what = (f"A fine-tuned `{task}` model{size} (`{training.get('base_model')}`) with a post-hoc anomaly detector: the model "
            "itself was not trained with Outlier Exposure, its outputs are scored as they are."
            if post_hoc else
            f"A `{task}` model{size} trained with Outlier Exposure (Hendrycks, Mazeika & Dietterich, ICLR 2019) to flag "
            f"inputs unlike {in_name}.")
    out.append(
        f"{what} Anomaly score: `{score}`, {_SCORE_TEXT.get(score, score)}. "
        "Higher scores are more anomalous; an input is flagged when `score > threshold`."
    )
    out.append("")

    out += ["## How to use", "", "```python", "from oe_common.deployment.detector import OODDetector", "",
            f'detector = OODDetector.from_pretrained("{where}")']
    if text:
        out += ['scores = detector.score(["first example", "second example"])  # one text per example',
                "flags = detector.predict([\"first example\"])                    # True = anomaly"]
    else:
        out += ['scores = detector.score(["img1.png", "img2.png"])  # image files, PIL images or uint8 arrays',
                'flags = detector.predict(["img1.png"])             # True = anomaly']
    out += ["```", "", "From the command line (JSON lines `{\"index\", \"score\", \"is_anomaly\"}`):", "", "```bash"]
    if text:
        out.append(f"oe score --model {where} --input examples.txt --output scores.jsonl   # one example per line")
    else:
        out.append(f"oe score --model {where} --input images/ --output scores.jsonl       # a folder of images")
    out += ["```", ""]

    out += ["## Detector", ""]
    threshold = config.get("threshold")
    info = dict(config.get("threshold_info") or {})
    if threshold is None:
        out.append("No threshold was fitted: use the scores, or call `detector.fit_threshold(held_out, target_fpr=...)`.")
    else:
        how = ""
        if info.get("rule") == "target_fpr":
            what = f" ({info['data']})" if info.get("data") else ""
            how = (f" It was fitted on {info.get('n_in', '?')} held-out in-distribution examples{what} to flag at most "
                   f"{100 * info['target_fpr']:.2f}% of them (achieved {100 * info.get('achieved_fpr', float('nan')):.2f}%).")
        elif info.get("rule") == "target_tpr":
            how = (f" It was fitted on held-out data to detect at least {100 * info['target_tpr']:.2f}% of "
                   f"{info.get('n_out', '?')} anomalies (achieved TPR {100 * info.get('achieved_tpr', float('nan')):.2f}%, "
                   f"FPR {100 * info.get('achieved_fpr', float('nan')):.2f}%).")
        out.append(f"Threshold: `{threshold!r}`.{how}")
    out.append("")
    if pre:
        out += ["Preprocessing (`detector_config.json` → `preprocessing`):", "", _kv_table(pre), ""]
        if pre.get("type") == "tokenizer":
            out += [f"Raw strings go through the Hugging Face tokenizer saved in this folder (`{pre.get('tokenizer_class')}`), "
                    f"truncated at {pre.get('max_length')} tokens and right-padded.", ""]
        if text and pre.get("long_text") == "window":
            out += [f"Texts longer than {pre.get('seq_len')} predicted tokens are cut into non-overlapping windows "
                    "and scored by the token-weighted mean over the windows.", ""]

    out += ["## Training", ""]
    if post_hoc:
        out += ["No training: the detector was built post hoc (`oe build-detector`) around the unchanged model; "
                "what it was fitted on:", "", _kv_table(training), ""]
    elif training:
        out += ["Outlier Exposure objective `E_in[L(f(x), y)] + λ · E_OE[L_OE(f(x'))]`; settings:", "", _kv_table(training), ""]
    else:
        out += ["No training information was recorded.", ""]

    out += ["## Evaluation", ""]
    evaluation = dict(config.get("evaluation") or {})
    if evaluation.get("accuracy") is not None:
        on = evaluation.get("accuracy_data") or f"the {in_name} test set"
        n_acc = f", {evaluation['accuracy_n']} examples" if evaluation.get("accuracy_n") else ""
        out += [f"Classification accuracy on {on}{n_acc}: **{100 * float(evaluation['accuracy']):.2f}%**.", ""]
    table = evaluation_table(evaluation)
    if table is None:
        out += ["No detection results were recorded.", ""]
    else:
        n_in = table.rows[0].get("n_in", "?")
        out += [
            f"Anomalies are the positive class. All {n_in} in-distribution test examples against `n_in // {table.ratio}` "
            f"anomalies per test set (what ran: {table.sampling}; seed {table.seed}); {table.fpr_label} is the false-positive "
            f"rate at {round(table.recall_level * 100)}% recall. Values in %. Score: `{table.meta.get('score', score)}`."
            + (f" Examples: {table.meta['examples']}." if table.meta.get("examples") else ""),
            "",
            table.to_markdown(),
            "",
        ]

    out += ["## Files", "",
            "`config.json` + `model.safetensors` (the model; loads with the `transformers` Auto classes once the "
            "toolkit is installed: its packages register their model types), `detector_config.json` (score, threshold, preprocessing, "
            "training settings, results)" + _extra_files(config, text) + ". No pickle files.",
            "", "## Citation", "", "```bibtex", _CITATION, "```", ""]
    return "\n".join(out)


def _extra_files(config: Mapping[str, Any], text: bool) -> str:
    """The card's list of the files besides the model and the config: tokenizer / vocabulary, Mahalanobis statistics."""
    pre = dict(config.get("preprocessing") or {})
    parts = []
    if pre.get("type") == "tokenizer":
        parts.append(", ".join(f"`{name}`" for name in pre.get("tokenizer_files") or []) + " (the tokenizer)")
    elif text:
        parts.append("`vocab.json` (the vocabulary)")
    if config.get("mahalanobis_file"):
        parts.append(f"`{config['mahalanobis_file']}` (class means and shared covariance of the `mahalanobis` score)")
    return "".join(", " + part for part in parts)


def parse_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split a model card into its YAML metadata (``{}`` when there is none) and its Markdown body."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ValueError("the model card opens a YAML block with '---' but never closes it")
    metadata = yaml.safe_load(text[4:end]) or {}
    if not isinstance(metadata, dict):
        raise ValueError("the model card's YAML front matter is not a mapping")
    return metadata, text[end + 5 :]


def is_oe_model_card(text: str) -> bool:
    """True when ``text`` is a card this toolkit wrote: YAML front matter with ``library_name: oe-toolkit``.

    :meth:`~oe_common.deployment.detector.OODDetector.save_pretrained` overwrites only such a ``README.md``; any other
    file of that name (no front matter, another library's card, unparsable YAML) belongs to the user.
    """
    try:
        metadata, _ = parse_front_matter(text)
    except (ValueError, yaml.YAMLError):
        return False
    return metadata.get("library_name") == LIBRARY_NAME
