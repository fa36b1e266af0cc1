"""OODDetector for text classifiers on raw strings (issue #12, detector part): a Hugging Face tokenizer saved in the
detector folder (oe_text.textcls.tokenizer_preprocessing.TokenizerPreprocessing), the ``mahalanobis`` feature score, the
model card's accuracy, and the CLI in a fresh process.

Fast tests use a tiny tokenizer built in memory and tiny random-init models (BERT, the paper's GRU). The slow test
attaches a fresh 150-way head to the REAL sentence-transformers/all-MiniLM-L6-v2 checkpoint (placed into a temporary
HF_HOME by `oe fetch-checkpoint`, the fixture of tests/test_hub_checkpoints.py), saves a detector and scores two
strings with `oe score` in a fresh process with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hub_checkpoints import minilm_home  # noqa: F401 - the real-checkpoint fixture (module scoped), reused

from oe_common.deployment import cli
from oe_common.deployment.detector import DETECTOR_CONFIG_NAME, DetectorCheckpointError, DetectorInputError, OODDetector, accuracy
from oe_common.maths.feature_scores import MAHALANOBIS_NAME
from oe_common.deployment.model_card import parse_front_matter
from oe_common.maths.scores import FEATURE_SCORES, LOGIT_SCORE_NAMES, SCORE_NAMES, example_scores
from oe_text import GRUClassifierConfig, GRUForSequenceClassification, TextPreprocessing, TokenizerPreprocessing
from oe_text.lm.vocab import Vocabulary

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads
REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat on mat is good bad movie what how where why hello world time flight book play song".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHORT = "hello world"
LONGER = ["the cat sat on the mat and the dog sat on the cat", "what is a good movie", "how bad is the song where the dog is"]


def tiny_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(SPECIAL + WORDS + ["##s", "##ing"])})


def tiny_bert(vocab_size: int, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.3,  # the default 0.02 gives near-identical pooled features (covariance condition ~1e10)
    )
    return BertForSequenceClassification(config)


def tiny_gru(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    return GRUForSequenceClassification(
        GRUClassifierConfig(vocab_size=vocab_size, embedding_size=8, hidden_size=8, num_labels=3, pad_token_id=0)
    )


def detector(kind: str, max_length: int = 16, **kw) -> OODDetector:
    tok = tiny_tokenizer()
    model = tiny_bert(len(tok)) if kind == "bert" else tiny_gru(len(tok))
    return OODDetector(model, TokenizerPreprocessing(tok, max_length=max_length), device="cpu", progress=False, **kw)


def random_texts(n: int, seed: int, lo: int = 2, hi: int = 12) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)))) for _ in range(n)]


def oe_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------ tokenizer path
@pytest.mark.parametrize("kind", ["bert", "gru"])
def test_save_load_round_trip_gives_identical_scores_on_raw_strings(kind, tmp_path):
    det = detector(kind, score="energy", score_kwargs={"temperature": 2.0})
    texts = [SHORT, *LONGER]
    before = det.score(texts)
    folder = det.save_pretrained(tmp_path / "det")
    spec = json.loads((folder / DETECTOR_CONFIG_NAME).read_text())["preprocessing"]
    assert spec["type"] == "tokenizer" and spec["max_length"] == 16 and spec["padding_side"] == "right"
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(spec["tokenizer_files"]) <= {p.name for p in folder.iterdir()}
    loaded = OODDetector.from_pretrained(folder, device="cpu", progress=False)
    assert isinstance(loaded.preprocessing, TokenizerPreprocessing) and loaded.preprocessing.max_length == 16
    assert (loaded.score_name, loaded.score_kwargs) == ("energy", {"temperature": 2.0})
    np.testing.assert_allclose(loaded.score(texts), before, rtol=1e-5)  # a loaded model may round differently
    # the reference: the bare model on the tokenizer's own encoding, one text at a time
    tok = tiny_tokenizer()
    with torch.no_grad():
        logits = torch.cat([det.model(**tok(t, return_tensors="pt")).logits for t in texts])
    np.testing.assert_allclose(before, -2.0 * torch.logsumexp(logits / 2.0, -1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "gru"])
def test_a_string_scores_the_same_alone_and_padded_in_a_batch_with_longer_strings(kind):
    det = detector(kind)
    alone = det.score([SHORT])
    batched = det.score([*LONGER[:2], SHORT, LONGER[2]])  # one batch: SHORT is padded to the longest
    np.testing.assert_allclose(batched[2], alone[0], rtol=1e-5, atol=1e-6)
    det.batch_size = 2  # other batch compositions, same scores
    np.testing.assert_allclose(det.score([*LONGER[:2], SHORT, LONGER[2]]), batched, rtol=1e-5, atol=1e-6)
    # the batches are right-padded (the GRU reads its lengths from the mask): mask rows are 1..1 0..0
    _, _, batches = det.preprocessing.batches([SHORT, *LONGER], det.task, 8)
    inputs, owners = next(batches)
    mask = inputs["attention_mask"]
    assert sorted(owners.tolist()) == [0, 1, 2, 3] and bool((mask[:, :-1] >= mask[:, 1:]).all()) and bool((mask == 0).any())


def test_a_left_padding_tokenizer_is_padded_on_the_right(tmp_path):
    """A tokenizer saved with padding_side='left' (decoder-style checkpoints) still gives right-padded batches: the GRU
    refuses left padding outright, and padding it on the left would move its last state onto padding."""
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path / "left")
    model = tiny_gru(len(tok))
    rows = [tok(t) for t in (SHORT, LONGER[0])]
    left = tok.pad(rows, padding="longest", return_tensors="pt")
    with pytest.raises(ValueError, match="RIGHT-padded"):
        model(input_ids=left["input_ids"], attention_mask=left["attention_mask"])
    from transformers import AutoTokenizer

    det = OODDetector(model, TokenizerPreprocessing(AutoTokenizer.from_pretrained(tmp_path / "left")), device="cpu", progress=False)
    np.testing.assert_allclose(det.score([LONGER[0], SHORT])[1], det.score([SHORT])[0], rtol=1e-5)


def test_truncation_at_the_saved_max_length(tmp_path):
    base = "the cat sat on the mat"
    a, b = base + " good movie", base + " bad song where"
    det = detector("bert", max_length=8)  # [CLS] + 6 words + [SEP] = 8: the tails are cut
    _, _, batches = det.preprocessing.batches([a, b, SHORT], det.task, 8)
    inputs, _ = next(batches)
    assert inputs["input_ids"].shape[1] == 8 and bool((inputs["input_ids"][:2, -1] == 3).all())  # ends with [SEP]
    scores = det.score([a, b])
    # same tokens after truncation: the same score up to float rounding (other rows of a batch, another batch shape
    # and a loaded model may round differently on other CPUs)
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)
    loaded = OODDetector.from_pretrained(det.save_pretrained(tmp_path / "det"), device="cpu", progress=False)
    assert loaded.preprocessing.max_length == 8 and loaded.score([a])[0] == pytest.approx(scores[0], rel=1e-5)
    untruncated = detector("bert", max_length=32).score([a, b])
    assert untruncated[0] != pytest.approx(untruncated[1], rel=1e-3)  # the tails do matter without truncation
    with pytest.raises(ValueError, match="max_length=64 does not fit the model's 32 positions"):
        detector("bert", max_length=64)


def test_empty_strings_are_input_errors_with_their_indices():
    with pytest.raises(DetectorInputError, match="2 input\\(s\\) empty or only whitespace at index 1, 3") as err:
        detector("gru").score([SHORT, "", "a cat", "  "])
    assert err.value.indices == [1, 3]


def test_corrupt_tokenizer_file_is_a_one_line_error_naming_it(tmp_path, capsys):
    folder = detector("gru").save_pretrained(tmp_path / "det")
    (folder / "queries.txt").write_text(SHORT + "\n")
    good = (folder / "tokenizer.json").read_text()
    capsys.readouterr()  # drop the save's progress output
    for bad in ('{"truncated": ', '{"version": "1.0", "model": 7}'):  # not JSON; JSON that is no tokenizer
        (folder / "tokenizer.json").write_text(bad)
        with pytest.raises(DetectorCheckpointError, match="tokenizer.json") as err:
            OODDetector.from_pretrained(folder, device="cpu")
        assert "\n" not in str(err.value)
        assert cli.main(["score", "--model", str(folder), "--input", str(folder / "queries.txt")]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "tokenizer.json" in lines[0] and lines[0].startswith("oe score: error: cannot load detector")
    (folder / "tokenizer.json").write_text(good)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(DetectorCheckpointError, match="is missing tokenizer_config.json"):
        OODDetector.from_pretrained(folder, device="cpu")


def test_existing_vocabulary_detectors_still_load_and_the_type_picks_the_class(tmp_path):
    vocab = Vocabulary.build(["good", "bad", "movie"])
    det = OODDetector(tiny_gru(len(vocab)), TextPreprocessing(vocab, seq_len=8), device="cpu", progress=False)
    folder = det.save_pretrained(tmp_path / "vocab_det")
    config_path = folder / DETECTOR_CONFIG_NAME
    config = json.loads(config_path.read_text())
    assert config["preprocessing"]["type"] == "text" and config["mahalanobis_file"] is None
    expected = det.score(["good movie", "bad"])
    del config["preprocessing"]["type"], config["mahalanobis_file"]  # as written before either key existed
    config_path.write_text(json.dumps(config))
    loaded = OODDetector.from_pretrained(folder, device="cpu", progress=False)
    assert type(loaded.preprocessing) is TextPreprocessing
    np.testing.assert_allclose(loaded.score(["good movie", "bad"]), expected, rtol=1e-5)
    config["preprocessing"]["type"] = "image"
    config_path.write_text(json.dumps(config))
    with pytest.raises(DetectorCheckpointError, match="preprocessing type 'image' does not serve task 'text-classification'"):
        OODDetector.from_pretrained(folder, device="cpu")


def test_cli_scores_raw_strings_in_a_fresh_process(tmp_path):
    det = detector("gru", score="mahalanobis")
    det.fit_mahalanobis(random_texts(60, seed=1), np.arange(60) % 3)
    det.fit_threshold([SHORT, *LONGER], target_fpr=0.25)
    folder = det.save_pretrained(tmp_path / "det")
    queries = [SHORT, "where is my flight", *LONGER]
    (tmp_path / "queries.txt").write_text("\n".join(queries) + "\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "oe_common.deployment.cli", "score", "--model", str(folder), "--input", str(tmp_path / "queries.txt")],
        env=oe_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(len(queries)))
    expected = det.score(queries)
    np.testing.assert_allclose([r["score"] for r in records], expected, rtol=1e-6)
    assert [r["is_anomaly"] for r in records] == (expected > det.threshold).tolist()


# ------------------------------------------------------------------------------------------------ mahalanobis
def reference_features(model, tok, texts: list[str]) -> np.ndarray:
    """Penultimate features without the detector (one text at a time, no padding): BERT's pooler output / the GRU's last state at the last token."""
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, truncation=True, max_length=16, return_tensors="pt")  # the detector truncates at 16
            if hasattr(model, "bert"):
                rows.append(model.bert(**enc).pooler_output[0])
            else:
                rows.append(model(**enc, output_hidden_states=True).hidden_states[-1][0, -1])
    return torch.stack(rows).double().numpy()


def numpy_mahalanobis(train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
    """min_k sqrt((x - mu_k)^T pinv(Sigma) (x - mu_k)), Sigma = (1/N) sum (x_i - mu_{y_i})(x_i - mu_{y_i})^T."""
    means = np.stack([train[labels == k].mean(0) for k in range(labels.max() + 1)])
    centred = train - means[labels]
    precision = np.linalg.pinv(centred.T @ centred / len(train), hermitian=True)
    diff = test[:, None, :] - means[None]
    return np.sqrt(np.einsum("nkd,de,nke->nk", diff, precision, diff).clip(min=0)).min(1)


@pytest.mark.parametrize("kind", ["bert", "gru"])
def test_mahalanobis_scores_equal_a_numpy_reference_and_survive_save_load(kind, tmp_path):
    det = detector(kind, score="mahalanobis", batch_size=7)
    train, labels = random_texts(60, seed=2), np.arange(60) % 3
    test = [SHORT, *LONGER, *random_texts(5, seed=3, lo=10, hi=20)]
    fitted = det.fit_mahalanobis(train, labels)
    assert fitted is det.mahalanobis and tuple(fitted.means.shape) == (3, 16 if kind == "bert" else 8)
    tok = tiny_tokenizer()
    expected = numpy_mahalanobis(reference_features(det.model, tok, train), labels, reference_features(det.model, tok, test))
    scores = det.score(test)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)  # float32 features of padded batches vs one text alone
    folder = det.save_pretrained(tmp_path / "det")
    assert (folder / MAHALANOBIS_NAME).is_file() and json.loads((folder / DETECTOR_CONFIG_NAME).read_text())["mahalanobis_file"] == MAHALANOBIS_NAME
    assert "Mahalanobis distance" in (folder / "README.md").read_text() and MAHALANOBIS_NAME in (folder / "README.md").read_text()
    loaded = OODDetector.from_pretrained(folder, device="cpu", progress=False, batch_size=7)
    np.testing.assert_allclose(loaded.score(test), scores, rtol=1e-5)  # another model object: rounding may differ (AMD: 4e-7)
    (folder / MAHALANOBIS_NAME).write_bytes(b"\x00" * 20)
    with pytest.raises(DetectorCheckpointError, match=f"{MAHALANOBIS_NAME} is not a readable Mahalanobis statistics file"):
        OODDetector.from_pretrained(folder, device="cpu")
    (folder / MAHALANOBIS_NAME).unlink()
    with pytest.raises(DetectorCheckpointError, match=f"is missing {MAHALANOBIS_NAME}"):
        OODDetector.from_pretrained(folder, device="cpu")


def test_mahalanobis_is_a_feature_score_of_the_one_registry():
    assert "mahalanobis" in SCORE_NAMES and "mahalanobis" in FEATURE_SCORES and "mahalanobis" not in LOGIT_SCORE_NAMES
    with pytest.raises(ValueError, match="need the model's features and fitted statistics"):
        example_scores(torch.zeros(2, 3), ["msp", "mahalanobis"])
    det = detector("gru", score="mahalanobis")
    with pytest.raises(ValueError, match="call detector.fit_mahalanobis"):
        det.score([SHORT])
    with pytest.raises(ValueError, match="takes no argument"):
        detector("gru", score="mahalanobis", score_kwargs={"temperature": 1.0})
    with pytest.raises(ValueError, match="has no module 'head'"):
        detector("gru", score="mahalanobis", score_kwargs={"head": "head"}).fit_mahalanobis([SHORT] * 3, [0, 1, 2])
    with pytest.raises(ValueError, match="classes \\[2\\] have no training example"):
        det.fit_mahalanobis([SHORT, SHORT], [0, 1])


def test_mahalanobis_falls_out_for_image_classifiers():
    from oe_common.maths.feature_scores import MahalanobisScore, classifier_input_features
    from oe_vision import MnistConvNetConfig, MnistConvNetForImageClassification

    torch.manual_seed(0)
    model = MnistConvNetForImageClassification(MnistConvNetConfig(image_size=16, num_labels=3)).eval()
    train, test, labels = torch.rand(60, 1, 16, 16), torch.rand(5, 1, 16, 16), np.arange(60) % 3
    det = OODDetector(model, score="mahalanobis", score_kwargs={"head": "fc2"}, device="cpu", progress=False)
    det.fit_mahalanobis(train, labels)
    reference = MahalanobisScore().fit(classifier_input_features(model, {"pixel_values": train}, "fc2"), labels)
    # the reference's features come from one batch; the detector's from its own batches (float32 convolutions of other
    # shapes round differently, and the inverse covariance magnifies that: 5e-6 with batches of 3 on an AMD EPYC)
    np.testing.assert_allclose(det.score(test), reference(classifier_input_features(model, {"pixel_values": test}, "fc2").numpy()), rtol=1e-4)


# ------------------------------------------------------------------------------------------------ model card
def test_model_card_has_dataset_accuracy_and_detection_table(tmp_path):
    det = detector("gru", training={"in_distribution_dataset": "clinc150", "outlier_dataset": "wikitext-2"})
    texts, labels = [SHORT, *LONGER], np.array([0, 1, 2, 0])
    with torch.no_grad():
        enc = det.preprocessing.tokenizer(texts, padding=True, return_tensors="pt")
        predicted = det.model(**enc).logits.argmax(-1).numpy()
    value = accuracy(det, texts, labels, data="clinc150 test")
    assert value == pytest.approx(np.mean(predicted == labels))
    det.evaluate(random_texts(20, seed=4), {"oos": random_texts(10, seed=5, lo=12, hi=20)})
    assert det.evaluation["accuracy"] == value and det.evaluation["rows"]  # evaluate keeps the accuracy
    folder = det.save_pretrained(tmp_path / "det")
    metadata, body = parse_front_matter((folder / "README.md").read_text())
    assert metadata["datasets"] == ["clinc150", "wikitext-2"]
    assert f"Classification accuracy on clinc150 test, 4 examples: **{100 * value:.2f}%**" in body
    assert "| oos |" in body and "BertTokenizer" in body and "`tokenizer.json`" in body and "vocab.json" not in body
    loaded = OODDetector.from_pretrained(folder, device="cpu", progress=False)
    assert loaded.evaluation["accuracy"] == value


# ------------------------------------------------------------------------------------------------ the real checkpoint
REAL_SAVE = r"""
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from oe_common.deployment.detector import OODDetector
from oe_text import TokenizerPreprocessing
from oe_text.textcls.hub_checkpoints import MINILM_REPO_ID, MINILM_REVISION

torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(MINILM_REPO_ID, revision=MINILM_REVISION)
model = AutoModelForSequenceClassification.from_pretrained(MINILM_REPO_ID, revision=MINILM_REVISION, num_labels=150)
det = OODDetector(model, TokenizerPreprocessing(tok, max_length=64), device="cpu", progress=False,
                  training={"in_distribution_dataset": "clinc150", "base_model": MINILM_REPO_ID + "@" + MINILM_REVISION})
det.save_pretrained(sys.argv[1])
print("RESULT " + json.dumps(det.score(sys.argv[2:]).tolist()))
"""


@pytest.mark.slow
def test_real_minilm_detector_saves_and_scores_raw_strings_offline_in_a_fresh_process(minilm_home, tmp_path):  # noqa: F811
    queries = ["what is my checking account balance", "tell me a joke about the moon landing"]
    folder = tmp_path / "minilm_detector"
    env = oe_env(HF_HOME=str(minilm_home))
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", REAL_SAVE, str(folder), *queries], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved_scores = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    config = json.loads((folder / DETECTOR_CONFIG_NAME).read_text())
    assert config["architecture"] == "BertForSequenceClassification" and config["preprocessing"]["vocab_size"] == 30522
    (tmp_path / "queries.txt").write_text("\n".join(queries) + "\n", encoding="utf-8")
    # a fresh shell: no HF_HOME holding the checkpoint, offline; everything comes from the detector folder
    fresh = oe_env(HF_HOME=str(tmp_path / "empty_hf_home"))
    fresh.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "oe_common.deployment.cli", "score", "--model", str(folder), "--input", str(tmp_path / "queries.txt")],
        env=fresh, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    scores = [json.loads(line)["score"] for line in done.stdout.splitlines()]
    np.testing.assert_allclose(scores, saved_scores, rtol=1e-5)
    assert all(-1.0 <= s <= -1 / 150 for s in scores)  # msp of a 150-way head


@pytest.mark.parametrize("kind", ["bert", "gru"])
def test_the_recipe_scoring_loop_gives_the_detectors_scores(kind):
    """oe_text.textcls.textcls_scoring (the text-classifier recipe's one pass per batch for every score) scores texts as a
    saved detector does: each logit score and ``mahalanobis`` (fitted on the same training texts) equal the
    detector's, and the mean-pooled features are the mean of the last hidden layer over the real tokens."""
    from oe_text.textcls.textcls_scoring import fit_feature_scores, forward_texts, score_texts

    base = detector(kind)
    model, preprocessing = base.model, base.preprocessing
    train, labels, texts = random_texts(40, 1), np.arange(40) % 3, random_texts(25, 2) + [SHORT, LONGER[0]]
    fitted, present = fit_feature_scores(model, preprocessing, train, labels, knn_k=5, batch_size=8, desc="fit")
    assert present.tolist() == [0, 1, 2] and set(fitted) == {"mahalanobis", "knn", "mahalanobis_mean", "knn_mean"}
    logit_scores = ("msp", "max_logit", "energy", "uniform_xent")  # the classifier logit scores
    scores, logits = score_texts(model, preprocessing, texts, logit_scores, fitted, batch_size=8, desc="test")
    assert logits.shape == (len(texts), 3) and set(scores) == {*logit_scores, *fitted}
    for name in (*logit_scores, "mahalanobis"):
        reference = detector(kind, score=name, mahalanobis=fitted["mahalanobis"][1]).score(texts)
        # float64 distances through a whitening of condition ~1e8 (tiny random model), batched differently: 1e-5
        np.testing.assert_allclose(scores[name], reference, rtol=1e-5 if name == "mahalanobis" else 1e-6, atol=1e-6, err_msg=name)
    tok = tiny_tokenizer()
    inputs = tok([SHORT], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][0]
    _, feats = forward_texts(model, preprocessing, [SHORT], batch_size=8, desc="one")
    np.testing.assert_allclose(feats["mean"][0], hidden.mean(0).numpy(), rtol=1e-5, atol=1e-6)
