"""OODDetector: thresholds, score orientation, windows, save/load round trip, model card, Hub calls (offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oe_text  # noqa: F401  (registers the AWD-LSTM with the Auto classes)
import oe_vision  # noqa: F401
from oe_common.deployment.detector import (
    DetectorCheckpointError,
    DetectorInputError,
    OODDetector,
    threshold_for_fpr,
    threshold_for_tpr,
)
from oe_common.maths.metrics import fpr_at_recall
from oe_common.deployment.model_card import parse_front_matter
from oe_common.maths.scores import sequence_uniform_xent_score
from oe_text.lm.models import build_language_model, shifted_logits_and_targets
from oe_text.lm.normalize import normalize_text
from oe_text.lm.preprocessing import TextPreprocessing
from oe_text.lm.vocab import Vocabulary
from oe_text.lm.windows import make_windows
from oe_vision import MnistConvNetConfig, MnistConvNetForImageClassification
from oe_vision.preprocessing import ImagePreprocessing

IN_WORDS = [f"in{i}" for i in range(8)]
OUT_WORDS = [f"out{i}" for i in range(8)]
NO_DROPOUT = dict(embedding_dropout=0.0, input_dropout=0.0, hidden_dropout=0.0, output_dropout=0.0, weight_dropout=0.0)
TRAINING = {"oe_lambda": 0.5, "oe_loss": "uniform", "outlier_dataset": "wikitext-2", "in_distribution_dataset": "ptb", "epochs": 1}


TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


def make_vocab() -> Vocabulary:
    return Vocabulary.build(IN_WORDS + OUT_WORDS)


def tiny_lm(vocab: Vocabulary, seed: int = 0):
    torch.manual_seed(seed)
    return build_language_model("lstm", len(vocab), "tiny", embedding_size=8, hidden_size=16, **NO_DROPOUT)


def crafted_lm(vocab: Vocabulary):
    """Logits = a bias that makes the in-distribution words (and <eos>) likely, the others unlikely."""
    model = tiny_lm(vocab)
    with torch.no_grad():
        model.get_input_embeddings().weight.zero_()  # tied with lm_head.weight: logits = lm_head.bias
        bias = torch.full((len(vocab),), -4.0)
        for w in IN_WORDS + [vocab.eos]:
            bias[vocab.stoi[w]] = 4.0
        model.lm_head.bias.copy_(bias)
    return model


def lines_from(words, n, seed, length=(3, 9)):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(*length)))) for _ in range(n)]


def text_detector(model=None, **kwargs) -> OODDetector:
    vocab = make_vocab()
    pre = TextPreprocessing(vocab, seq_len=kwargs.pop("seq_len", 6), long_text=kwargs.pop("long_text", None))
    return OODDetector(model if model is not None else tiny_lm(vocab), pre, device="cpu", **kwargs)


def crafted_convnet():
    """Confident (class 0) on bright images, uniform on black ones."""
    model = MnistConvNetForImageClassification(MnistConvNetConfig(image_size=16, num_labels=10))
    with torch.no_grad():
        for layer in (model.conv1, model.conv2, model.fc1):
            fan_in = layer.weight[0].numel()
            layer.weight.fill_(1.0 / fan_in)
            layer.bias.zero_()
        model.fc2.weight.zero_()
        model.fc2.weight[0].fill_(0.2)
        model.fc2.bias.zero_()
    return model


def image_detector(**kwargs) -> OODDetector:
    return OODDetector(crafted_convnet(), ImagePreprocessing(size=16, channels=1), device="cpu", **kwargs)


def gray_images(values, size=16):
    return [np.full((size, size), v, dtype=np.uint8) for v in values]


# =============================================================================================== thresholds
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target_fpr", [0.0, 0.05, 0.1, 0.29, 0.5])
def test_threshold_for_fpr_is_the_smallest_valid_threshold(target_fpr, ties):
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 20, 1000).astype(float) if ties else rng.normal(size=1000)
    t = threshold_for_fpr(scores, target_fpr)
    allowed = math.floor(round(target_fpr * scores.size, 9))
    assert np.sum(scores > t) <= allowed
    lower = scores[scores < t]
    if lower.size:  # the next-lower candidate threshold flags more than allowed
        assert np.sum(scores > lower.max()) > allowed
    if not ties:
        assert np.sum(scores > t) == allowed  # no ties: exactly floor(f * n)


def test_threshold_for_fpr_rejects_bad_targets():
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for_fpr(np.arange(10.0), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        threshold_for_fpr(np.array([0.0, np.nan]), 0.1)


@pytest.mark.parametrize("ties", [False, True])
def test_threshold_for_tpr_matches_fpr_at_recall(ties):
    rng = np.random.default_rng(2)
    ins, outs = rng.normal(size=500), rng.normal(1.5, 1.0, size=120)
    if ties:
        ins, outs = np.round(ins, 1), np.round(outs, 1)
    for tpr in (0.5, 0.9, 0.95, 1.0):
        t = threshold_for_tpr(ins, outs, tpr)
        assert np.mean(outs > t) >= tpr
        assert np.mean(ins > t) == pytest.approx(fpr_at_recall(ins, outs, tpr))
        higher = np.concatenate([ins, outs])
        higher = higher[higher > t]
        assert np.mean(outs > higher.min()) < tpr  # the next candidate above t detects too few


def test_fit_threshold_api():
    det = text_detector()
    with pytest.raises(ValueError, match="no threshold"):
        det.predict(["in0 in1"])
    with pytest.raises(ValueError, match="exactly one"):
        det.fit_threshold_from_scores(np.arange(10.0), target_fpr=0.1, target_tpr=0.9)
    with pytest.raises(ValueError, match="out_data"):
        det.fit_threshold_from_scores(np.arange(10.0), target_tpr=0.9)
    held_out = lines_from(IN_WORDS, 40, seed=3)
    t = det.fit_threshold(held_out, target_fpr=0.25)
    assert det.threshold == t and det.threshold_info["rule"] == "target_fpr"
    assert det.predict(held_out).mean() <= 0.25
    assert det.threshold_info["achieved_fpr"] == pytest.approx(det.predict(held_out).mean())


# =============================================================================================== scores
def test_lm_scores_are_per_sequence_means_with_causal_shift():
    det = text_detector(score="nll")
    vocab, model = det.vocab, det.model
    line = "in1 out2 in3 in4"
    ids = torch.from_numpy(vocab.encode([vocab.eos, *line.split(), vocab.eos]))[None]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
        shifted, targets = shifted_logits_and_targets(out.logits, ids)
        uxent = sequence_uniform_xent_score(shifted, targets != -100)
    assert det.score([line])[0] == pytest.approx(out.loss.item(), rel=1e-5)
    det.score_name = "uniform_xent"
    assert det.score(line)[0] == pytest.approx(uxent.item(), rel=1e-5)


def test_batching_and_padding_do_not_change_scores():
    det = text_detector(seq_len=6)
    lines = lines_from(IN_WORDS + OUT_WORDS, 13, seed=4, length=(1, 20))
    one_by_one = np.array([det.score([line])[0] for line in lines])
    det.batch_size = 4
    np.testing.assert_allclose(det.score(lines), one_by_one, rtol=1e-5)


def test_long_text_is_the_token_weighted_mean_over_windows():
    det = text_detector(seq_len=4)
    vocab, model = det.vocab, det.model
    line = " ".join(IN_WORDS + OUT_WORDS[:3])  # 11 tokens -> 13 ids -> windows of 5, 5 and 3 ids
    ids = vocab.encode([vocab.eos, *line.split(), vocab.eos])
    windows = make_windows(ids, 4, pad_id=vocab.eos_id)
    assert windows["input_ids"].shape[0] == 3
    losses, weights = [], []
    for row, mask in zip(windows["input_ids"], windows["attention_mask"]):
        w = torch.tensor(row[: int(mask.sum())], dtype=torch.long)[None]
        with torch.no_grad():
            losses.append(model(input_ids=w, labels=w).loss.item())
        weights.append(w.shape[1] - 1)
    expected = np.average(losses, weights=weights)
    assert weights == [4, 4, 2]
    assert det.score([line])[0] == pytest.approx(expected, rel=1e-5)
    det.preprocessing.long_text = "truncate"
    assert det.score([line])[0] == pytest.approx(losses[0], rel=1e-5)
    det.preprocessing.long_text = "error"
    with pytest.raises(DetectorInputError, match="longer than seq_len=4") as err:
        det.score(["in0", line])
    assert err.value.indices == [1]


def test_empty_lines_are_rejected_with_their_index():
    det = text_detector()
    with pytest.raises(DetectorInputError, match="index 1, 3") as err:
        det.score(["in0 in1", "", "in2", "   "])
    assert err.value.indices == [1, 3]
    assert isinstance(err.value, ValueError)


def test_score_orientation_language_model():
    det = text_detector(crafted_lm(make_vocab()))
    in_scores = det.score(lines_from(IN_WORDS, 30, seed=5))
    out_scores = det.score(lines_from(OUT_WORDS, 30, seed=6))
    assert in_scores.max() < out_scores.min()
    det.fit_threshold_from_scores(in_scores, target_fpr=0.0)
    assert det.predict(lines_from(OUT_WORDS, 10, seed=7)).all()
    assert not det.predict_from_scores(in_scores).any()


@pytest.mark.parametrize("score", ["msp", "uniform_xent", "max_logit", "energy"])
def test_score_orientation_image_classifier(score):
    det = image_detector(score=score, score_kwargs={"temperature": 2.0} if score == "energy" else None)
    in_scores = det.score(gray_images([200, 230, 255]))
    out_scores = det.score(gray_images([0, 0]))
    assert in_scores.max() < out_scores.min()
    if score == "msp":
        np.testing.assert_allclose(out_scores, -0.1, rtol=1e-6)  # uniform prediction on a black image


def test_image_inputs_paths_pil_arrays_tensors(tmp_path):
    det = image_detector()
    arrays = gray_images([0, 90, 255], size=20)  # resized to 16 by the preprocessing
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).convert("RGB").save(paths[-1])
    from_paths = det.score(paths)
    np.testing.assert_allclose(det.score([Image.fromarray(a) for a in arrays]), from_paths, rtol=1e-6)
    np.testing.assert_allclose(det.score(arrays), from_paths, rtol=1e-6)
    pixels = torch.stack([ImagePreprocessing(size=16, channels=1).transform()(Image.fromarray(a)) for a in arrays])
    np.testing.assert_allclose(det.score(pixels), from_paths, rtol=1e-6)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DetectorInputError, match="broken.png") as err:
        det.score([paths[0], bad])
    assert err.value.indices == [1]


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="nll"):
        image_detector(score="nll")
    with pytest.raises(ValueError, match="unknown score"):
        text_detector(score="entropy")
    with pytest.raises(TypeError, match="TextPreprocessing"):
        OODDetector(tiny_lm(make_vocab()), ImagePreprocessing(), device="cpu")
    with pytest.raises(ValueError, match="normalizer"):
        TextPreprocessing(make_vocab(), normalizer="lowercase")


def test_normalizers():
    assert normalize_text("The price rose 3.5 % , to $ 10 .", "ptb") == ["the", "price", "rose", "N", "N", "to", "$", "N"]
    ptb_line = "the N stock <unk> did n't fall 's $ N mgm\\/ua"
    assert normalize_text(ptb_line, "ptb") == ptb_line.split()  # idempotent on PTB text
    assert normalize_text("a  b\t c ", "whitespace") == ["a", "b", "c"]
    charset = list("abcdefghijklmnopqrstuvwxyz0123456789N_")
    assert "".join(normalize_text("Hi there , 42 !", "ptb_char", charset)) == "hi_there_N"
    assert "".join(normalize_text("Role @-@ playing 1990s", "wikitext_char", charset)) == "roleplaying_1990s"


def test_char_level_detector():
    chars = Vocabulary.build(list("abcdefgh_"), unk=None, level="char")
    det = OODDetector(
        tiny_lm(chars), TextPreprocessing(chars, normalizer="ptb_char", seq_len=8), device="cpu"
    )
    scores = det.score(["abc def", "Hägh , BAD !"])  # unknown characters are dropped by the normaliser
    assert scores.shape == (2,) and np.isfinite(scores).all()
    with pytest.raises(DetectorInputError, match="empty after"):
        det.score(["xyz ..."])
    raw = OODDetector(tiny_lm(chars), TextPreprocessing(chars, normalizer="whitespace", seq_len=8), device="cpu")
    with pytest.raises(DetectorInputError, match="not in the char vocabulary"):
        raw.score(["a b z"])


def test_text_sequence_classifier_round_trip(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    vocab = make_vocab()
    model = BertForSequenceClassification(
        BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=16, num_labels=3)
    )
    det = OODDetector(model, TextPreprocessing(vocab, seq_len=8), device="cpu")
    assert det.task == "text-classification" and det.score_name == "msp"
    lines = lines_from(IN_WORDS, 5, seed=8, length=(1, 14))
    scores = det.score(lines)
    assert ((scores >= -1) & (scores <= -1 / 3 + 1e-6)).all()
    det.save_pretrained(tmp_path / "clf")
    np.testing.assert_allclose(OODDetector.from_pretrained(tmp_path / "clf", device="cpu").score(lines), scores, rtol=1e-5)


# =============================================================================================== persistence
def _fitted_text_detector() -> OODDetector:
    det = text_detector(training=TRAINING)
    det.fit_threshold(lines_from(IN_WORDS, 20, seed=9), target_fpr=0.1)
    det.evaluate(lines_from(IN_WORDS, 20, seed=10), {"outs": lines_from(OUT_WORDS, 20, seed=11)})
    return det


def test_save_and_load_round_trip_text(tmp_path, monkeypatch):
    det = _fitted_text_detector()
    folder = det.save_pretrained(tmp_path / "det")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "detector_config.json", "model.safetensors", "vocab.json"
    ]
    for path in folder.iterdir():  # no pickle anywhere (pickle streams start with 0x80 <protocol>)
        assert not path.read_bytes().startswith(b"\x80"), path

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = OODDetector.from_pretrained(folder, device="cpu")
    lines = lines_from(IN_WORDS + OUT_WORDS, 12, seed=12, length=(1, 15))
    scores = det.score(lines)
    np.testing.assert_allclose(loaded.score(lines), scores, rtol=1e-5)  # a loaded model may round differently
    clear = np.abs(scores - det.threshold) > 1e-4 * np.abs(det.threshold)  # flags of scores AT the threshold may flip
    np.testing.assert_array_equal(loaded.predict(lines)[clear], det.predict(lines)[clear])
    assert loaded.threshold == det.threshold and loaded.vocab == det.vocab
    assert loaded.training == TRAINING and loaded.evaluation == json.loads(json.dumps(det.evaluation))
    assert loaded.preprocessing.to_dict() == det.preprocessing.to_dict()
    config = json.loads((folder / "detector_config.json").read_text())
    assert config["training"]["oe_lambda"] == 0.5 and config["score"] == "nll" and config["task"] == "causal-lm"


def test_save_and_load_round_trip_image(tmp_path):
    det = image_detector(score="energy", score_kwargs={"temperature": 2.0}, threshold=-3.0)
    det.save_pretrained(tmp_path / "img")
    loaded = OODDetector.from_pretrained(str(tmp_path / "img"), device="cpu")
    images = gray_images([0, 50, 255])
    np.testing.assert_allclose(loaded.score(images), det.score(images), rtol=1e-5)
    assert loaded.score_kwargs == {"temperature": 2.0} and loaded.threshold == -3.0
    assert loaded.preprocessing == det.preprocessing


@pytest.mark.parametrize("name", ["model.safetensors", "vocab.json", "detector_config.json", "config.json"])
def test_missing_file_is_named(tmp_path, name):
    folder = text_detector().save_pretrained(tmp_path / "det")
    (folder / name).unlink()
    with pytest.raises(DetectorCheckpointError, match=f"missing .*{name}"):
        OODDetector.from_pretrained(folder)


def test_pickle_only_weights_are_refused(tmp_path):
    folder = text_detector().save_pretrained(tmp_path / "det")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(DetectorCheckpointError, match="pickle"):
        OODDetector.from_pretrained(folder)


def test_unknown_model_type_is_a_clear_error(tmp_path):
    folder = text_detector().save_pretrained(tmp_path / "det")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "my_secret_lstm"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DetectorCheckpointError, match="unknown model_type 'my_secret_lstm'.*trust_remote_code"):
        OODDetector.from_pretrained(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(DetectorCheckpointError, match="does not exist"):
        OODDetector.from_pretrained(tmp_path / "nope")
    with pytest.raises(DetectorCheckpointError, match="does not exist"):
        OODDetector.from_pretrained("./no/such/checkpoint")


def test_model_card_front_matter_and_results(tmp_path):
    folder = _fitted_text_detector().save_pretrained(tmp_path / "det")
    meta, body = parse_front_matter((folder / "README.md").read_text())
    assert meta["library_name"] == "oe-toolkit"
    assert {"outlier-exposure", "anomaly-detection"} <= set(meta["tags"])
    assert meta["datasets"] == ["ptb", "wikitext-2"]
    assert meta["metrics"] == ["auroc", "aupr", "fpr90"]
    assert "| outs |" in body and "**mean**" in body and "FPR90" in body  # the results table
    assert "`oe_lambda`" in body and "wikitext-2" in body  # how it was trained
    assert "OODDetector.from_pretrained" in body and "oe score" in body


# =============================================================================================== hub (offline)
def test_push_to_hub_offline_is_a_clear_error():
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set.*save_pretrained"):
        text_detector().push_to_hub("someone/oe-detector")


def test_push_to_hub_uploads_the_saved_folder(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        return None

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = text_detector().push_to_hub("someone/oe-detector", private=True)
    assert url.endswith("someone/oe-detector") and calls["create"] == ("someone/oe-detector", {"private": True, "exist_ok": True})
    assert "model.safetensors" in calls["files"] and "README.md" in calls["files"]

    def refuse(self, repo_id, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    with pytest.raises(RuntimeError, match="ConnectionError.*logged in"):
        text_detector().push_to_hub("someone/oe-detector")


def test_from_pretrained_hub_id(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set.*local checkpoint folder"):
        OODDetector.from_pretrained("nobody/no-such-oe-detector", cache_dir=tmp_path / "cache")
    folder = _fitted_text_detector().save_pretrained(tmp_path / "snapshot")
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    det = OODDetector.from_pretrained("someone/oe-detector", revision="v1", device="cpu")
    assert seen["repo_id"] == "someone/oe-detector" and seen["revision"] == "v1" and seen["local_files_only"] is True
    assert det.threshold is not None
