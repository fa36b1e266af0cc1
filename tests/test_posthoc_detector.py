"""Post-hoc detectors for any fine-tuned classifier (issue 21, items 4 and 7): ``oe build-detector`` on a plain model
folder and labelled .csv / .tsv / .jsonl (.gz) files, ``oe score`` / ``oe eval`` on a plain folder or Hub id, and the
predicted label name + probability in ``oe score``'s output.

Tiny random-init BERT + an in-memory tokenizer (tests/test_textcls_detector.py), saved as a plain
``save_pretrained`` folder (no detector_config.json): each test runs in about a second.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_textcls_detector import random_texts, tiny_bert, tiny_tokenizer

from oe_common.deployment import cli
from oe_common.deployment.detector import DETECTOR_CONFIG_NAME, OODDetector, threshold_for_fpr
from oe_common.deployment.detector_io import load_detector
from oe_common.experiments.table_files import MissingColumnError, read_columns
from oe_text import TokenizerPreprocessing

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads
LABELS = ["greeting", "travel", "music"]


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    """A fine-tuned classifier as users have it: model.save_pretrained + tokenizer.save_pretrained, nothing else."""
    tok = tiny_tokenizer()
    model = tiny_bert(len(tok), seed=4)
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {name: i for i, name in enumerate(LABELS)}
    folder = tmp_path_factory.mktemp("plain") / "my-intent-model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert not (folder / DETECTOR_CONFIG_NAME).exists()
    return folder


def reference_detector(folder: Path, max_length: int = 32, **kw) -> OODDetector:
    """The same model and tokenizer, built by hand (the bare transformers calls + TokenizerPreprocessing)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return OODDetector(model, TokenizerPreprocessing(tok, max_length=max_length), device="cpu", progress=False, **kw)


def write_table(path: Path, rows: list[dict]) -> Path:
    """``rows`` as the file type of ``path``'s suffix (.csv with RFC 4180 quoting, .tsv, .jsonl; + .gz)."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        keys = list(rows[0])

        def cell(value) -> str:
            value = str(value)
            return '"' + value.replace('"', '""') + '"' if sep == "," and any(c in value for c in ',"\n') else value

        text = sep.join(keys) + "\n" + "".join(sep.join(cell(r[k]) for k in keys) + "\n" for r in rows)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def train_rows(n: int = 30, seed: int = 1, labels=LABELS) -> list[dict]:
    texts = random_texts(n, seed=seed)
    # quoted commas and quotes inside the text: a hand-split CSV line would break here
    return [{"text": f'{t}, "{i}"' if i % 4 == 0 else t, "label": labels[i % len(labels)]} for i, t in enumerate(texts)]


def build(plain_model: Path, out: Path, *extra: str) -> int:
    return cli.main(["build-detector", "--model", str(plain_model), "--output", str(out), "--no-progress", "--device", "cpu", *extra])


# ------------------------------------------------------------------------------------------------ plain folders
def test_oe_score_on_a_plain_model_folder_equals_the_hand_built_detector_with_label_and_probability(plain_model, tmp_path, capsys):
    texts = random_texts(9, seed=7)
    src = tmp_path / "queries.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert cli.main(["score", "--model", str(plain_model), "--input", str(src), "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert "no threshold" in captured.err
    assert all(set(r) == {"index", "score", "is_anomaly", "label", "label_probability"} and r["is_anomaly"] is None for r in records)
    ref = reference_detector(plain_model)
    np.testing.assert_allclose([r["score"] for r in records], ref.score(texts), rtol=1e-6)  # score msp by default
    tok = tiny_tokenizer()
    with torch.no_grad():  # the bare model, one text at a time
        probs = torch.cat([torch.softmax(ref.model(**tok(t, return_tensors="pt")).logits, -1) for t in texts]).double().numpy()
    assert [r["label"] for r in records] == [LABELS[k] for k in probs.argmax(1)]
    np.testing.assert_allclose([r["label_probability"] for r in records], probs.max(1), rtol=1e-5)

    assert cli.main(["score", "--model", str(plain_model), "--input", str(src), "--score", "energy", "--device", "cpu"]) == 0
    energy = [json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose(energy, reference_detector(plain_model, score="energy").score(texts), rtol=1e-6)

    assert cli.main(["eval", "--model", str(plain_model), "--in", str(src), "--out", str(src), "--allow-small-sets"]) == 0
    assert "| **mean** |" in capsys.readouterr().out


def test_a_plain_model_is_loaded_from_the_hub_cache_by_repo_id(plain_model, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--intent-clf"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in plain_model.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    det = load_detector("someone/intent-clf", device="cpu", progress=False, cache_dir=tmp_path / "hub")  # HF_HUB_OFFLINE=1
    assert det.threshold is None and det.score_name == "msp" and det.training["base_model"] == "someone/intent-clf"
    texts = random_texts(4, seed=8)
    np.testing.assert_allclose(det.score(texts), reference_detector(plain_model).score(texts), rtol=1e-6)


def test_score_choices_on_plain_and_detector_folders(plain_model, tmp_path, capsys):
    src = tmp_path / "q.txt"
    src.write_text("hello world\n", encoding="utf-8")
    assert cli.main(["score", "--model", str(plain_model), "--input", str(src), "--score", "mahalanobis"]) == 1
    assert "oe build-detector" in capsys.readouterr().err
    assert build(plain_model, tmp_path / "det") == 0
    capsys.readouterr()
    assert cli.main(["score", "--model", str(tmp_path / "det"), "--input", str(src), "--score", "energy"]) == 1
    err = capsys.readouterr().err
    assert "saved with score 'msp'" in err and len(err.strip().splitlines()) == 1
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((plain_model / name).read_bytes())
    assert cli.main(["score", "--model", str(bare), "--input", str(src)]) == 1
    err = capsys.readouterr().err
    assert "cannot load the tokenizer of the model folder" in err and len(err.strip().splitlines()) == 1


def test_score_and_predict_is_one_pass_equal_to_score_for_a_feature_score(plain_model):
    det = reference_detector(plain_model, score="mahalanobis", batch_size=4)
    train = random_texts(30, seed=2)
    det.fit_mahalanobis(train, np.arange(30) % 3)
    texts = random_texts(10, seed=3)
    scores, ids, probs = det.score_and_predict(texts)
    np.testing.assert_array_equal(scores, det.score(texts))  # the same batches, the same computation
    with torch.no_grad():
        logits = torch.cat([det.model(**tiny_tokenizer()(t, return_tensors="pt")).logits for t in texts]).double()
    np.testing.assert_array_equal(ids, logits.argmax(1).numpy())
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).amax(1).numpy(), rtol=1e-5)


# ------------------------------------------------------------------------------------------------ build-detector
@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train.jsonl", "train.csv.gz", "train.jsonl.gz"])
def test_build_detector_fits_mahalanobis_like_fit_mahalanobis_on_every_file_type(plain_model, tmp_path, name, capsys):
    rows = train_rows()
    if name.startswith("train.jsonl"):  # integer class ids in JSON, names in CSV / TSV
        rows = [{**r, "label": LABELS.index(r["label"])} for r in rows]
    if name == "train.tsv":  # a column mixing names and ids given as digit strings
        rows = [{**r, "label": str(LABELS.index(r["label"])) if i % 2 else r["label"]} for i, r in enumerate(rows)]
    train = write_table(tmp_path / name, rows)
    assert read_columns(train, ["text"])["text"] == [r["text"] for r in rows]  # quoted commas and quotes survive
    out = tmp_path / "det"
    assert build(plain_model, out, "--train-file", str(train), "--score", "mahalanobis") == 0
    assert "score mahalanobis" in capsys.readouterr().err
    det = OODDetector.from_pretrained(out, device="cpu", progress=False)
    ref = reference_detector(plain_model)
    ref.fit_mahalanobis([r["text"] for r in rows], np.arange(len(rows)) % 3)
    np.testing.assert_array_equal(det.mahalanobis.means.numpy(), ref.mahalanobis.means.numpy())
    np.testing.assert_array_equal(det.mahalanobis.covariance.numpy(), ref.mahalanobis.covariance.numpy())
    assert det.score_name == "mahalanobis" and det.threshold is None
    config = json.loads((out / DETECTOR_CONFIG_NAME).read_text())
    assert config["training"]["mahalanobis_data"]["file"] == str(train) and config["training"]["mahalanobis_data"]["rows"] == 30
    assert config["training"]["threshold_data"].startswith("none: no validation file")


def test_build_detector_threshold_flags_5_percent_of_the_validation_texts(plain_model, tmp_path, capsys):
    validation = write_table(tmp_path / "val.jsonl", [{"text": t, "id": i} for i, t in enumerate(random_texts(40, seed=5))])
    out = tmp_path / "det"
    assert build(plain_model, out, "--validation-file", str(validation)) == 0  # no labels needed, no train file
    det = OODDetector.from_pretrained(out, device="cpu", progress=False)
    texts = [json.loads(line)["text"] for line in validation.read_text().splitlines()]
    ref_scores = reference_detector(plain_model).score(texts)
    assert det.threshold == threshold_for_fpr(ref_scores, 0.05) and det.mahalanobis is None
    assert (ref_scores > det.threshold).sum() == 2  # floor(0.05 * 40)
    assert det.threshold_info["data"] == f"column 'text' of {validation}" and det.threshold_info["n_in"] == 40
    card = (out / "README.md").read_text()
    assert "# Post-hoc anomaly detector (BertForSequenceClassification, " in card and "post-hoc anomaly detector" in card
    assert "Outlier Exposure objective" not in card and str(validation) in card
    src = tmp_path / "q.txt"
    src.write_text("\n".join(texts[:6]) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["score", "--model", str(out), "--input", str(src)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["is_anomaly"] for r in records] == (ref_scores[:6] > det.threshold).tolist()
    assert all(r["label"] in LABELS and 1 / 3 <= r["label_probability"] <= 1 for r in records)


def test_bad_inputs_are_one_line_errors_and_nothing_is_written(plain_model, tmp_path, capsys):
    out = tmp_path / "det"
    good = write_table(tmp_path / "train.csv", train_rows())

    def tree() -> list[Path]:
        return sorted([*tmp_path.rglob("*"), *plain_model.rglob("*")])

    def fails(code: int, *extra: str, model: Path = plain_model, output: Path = out) -> str:
        before = tree()
        assert build(model, output, *extra) == code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("oe build-detector: error: ")
        assert tree() == before  # nothing written: no output folder, no partial folder, nothing in the model folder
        return err

    err = fails(2, "--train-file", str(good), "--text-column", "utterance")
    assert str(good) in err and "'utterance'" in err and "its columns: 'text', 'label'" in err
    err = fails(2, "--validation-file", str(good), "--text-column", "utterance")
    assert str(good) in err
    unknown = write_table(tmp_path / "unknown.csv", train_rows()[:5] + [{"text": "hello", "label": "weather"}])
    err = fails(1, "--train-file", str(unknown))
    assert str(unknown) in err and "'weather' (row 6)" in err and "'greeting'" in err
    err = fails(1, "--train-file", str(write_table(tmp_path / "ids.jsonl", [{"text": "a", "label": 3}])))
    assert "'3' (row 1)" in err
    (tmp_path / "empty.csv").write_text("")
    assert "is empty" in fails(1, "--train-file", str(tmp_path / "empty.csv"))
    (tmp_path / "header.tsv").write_text("text\tlabel\n")
    assert "no rows" in fails(1, "--train-file", str(tmp_path / "header.tsv"))
    (tmp_path / "blank.csv").write_text('text,label\nhello,music\n"",music\n  ,travel\n')
    assert "2 empty or non-text cell(s) at row 2, 3" in fails(1, "--train-file", str(tmp_path / "blank.csv"))
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,music\n".encode("latin-1"))
    assert "UnicodeDecodeError" in fails(1, "--train-file", str(tmp_path / "latin1.csv"))
    assert "unknown file type" in fails(1, "--train-file", str(tmp_path / "train.txt"))
    two_classes = write_table(tmp_path / "two.csv", train_rows(labels=LABELS[:2]))
    assert "no row has label 'music'" in fails(1, "--train-file", str(two_classes))
    assert "needs a training file" in fails(1, "--score", "mahalanobis")
    assert "inside the model folder" in fails(1, output=plain_model / "detector")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.txt").write_text("x")
    assert "is not empty" in fails(1, "--train-file", str(good), output=tmp_path / "used")
    # the same inputs, fixed, succeed (and the detector loads through the plain-folder code path's checks)
    assert build(plain_model, out, "--train-file", str(good)) == 0
    assert load_detector(plain_model, kind="model", device="cpu").training["base_model"] == str(plain_model)


def test_read_columns_lists_what_it_found(tmp_path):
    path = write_table(tmp_path / "x.tsv", [{"sentence": "a, b", "category": "c"}])
    with pytest.raises(MissingColumnError, match=r"has no column 'text'; its columns: 'sentence', 'category'"):
        read_columns(path, ["text"])
    assert read_columns(path, ["sentence"]) == {"sentence": ["a, b"]}


def test_a_save_that_fails_halfway_leaves_no_folder(plain_model, tmp_path, monkeypatch, capsys):
    def broken_save(self, folder, **kw):
        (Path(folder) / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OODDetector, "save_pretrained", broken_save)
    assert build(plain_model, tmp_path / "det") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the output nor the hidden partial folder


def test_build_detector_help_names_the_data_formats(capsys):
    assert cli.main(["build-detector", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--train-file" in out and "--validation-file" in out and ".jsonl" in out


def test_build_detector_on_a_trained_detector_folder_reproduces_its_scores(plain_model, tmp_path):
    """As for a model fine-tuned by the recipe: its detector folder (model + tokenizer at the root, max_length 8,
    Mahalanobis fitted on the training texts) rebuilt post hoc from the same training file gives the same scores."""
    rows = train_rows(seed=6)
    recipe_like = reference_detector(plain_model, max_length=8, score="mahalanobis")
    recipe_like.fit_mahalanobis([r["text"] for r in rows], np.arange(len(rows)) % 3)
    saved = recipe_like.save_pretrained(tmp_path / "recipe-run" / "detector")
    train = write_table(tmp_path / "train.csv.gz", rows)
    out = tmp_path / "rebuilt"
    assert build(saved, out, "--train-file", str(train), "--score", "mahalanobis", "--max-length", "8") == 0
    rebuilt = OODDetector.from_pretrained(out, device="cpu", progress=False)
    assert rebuilt.preprocessing.max_length == 8
    texts = [*random_texts(8, seed=9, lo=6, hi=14), "hello world"]  # longer than 8 tokens: truncation matters
    np.testing.assert_allclose(rebuilt.score(texts), recipe_like.score(texts), rtol=1e-6)
    assert build(plain_model, tmp_path / "too-long", "--max-length", "64") == 1  # the model has 32 positions
