"""The MSP paper's abnormality module: frozen parts, the head's loss, the ``abnormality`` score and a detector using it.

Tiny models and few steps (seconds): a 16x16 MNIST ConvNet (untrained: the head can tell noised images from clean
ones by the reconstruction residual alone), a small decoder and head, real MNIST images for the direction test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from oe_common.deployment import cli
from oe_common.deployment.detector import OODDetector
from oe_common.maths.metrics import evaluate_ood
from oe_common.maths.scores import SCORE_NAMES, abnormality_score, example_scores, output_score
from oe_common.training.trainer import OETrainingArguments
from oe_vision import ImagePreprocessing, MnistConvNetConfig, MnistConvNetForImageClassification
from oe_vision.abnormality_trainer import AbnormalityModuleTrainer, NoisedImageDataset
from oe_vision.data import TensorImageDataset, image_collate, load_idx_corpus
from oe_vision.modeling_abnormality_module import AbnormalityModuleForImageClassification, abnormality_head_loss
from oe_vision.synthetic import SyntheticImageDataset, generate

TORCH_THREADS = 1
SIDE = 16


def _module(seed: int = 0) -> AbnormalityModuleForImageClassification:
    torch.manual_seed(seed)
    classifier = MnistConvNetForImageClassification(MnistConvNetConfig(num_labels=10, image_size=SIDE))
    return AbnormalityModuleForImageClassification.from_classifier(
        classifier, feature_size=classifier.config.flat_size, decoder_sizes=(16, 32), head_sizes=(16,))


@pytest.fixture(scope="module")
def mnist16(data_dir) -> TensorImageDataset:
    """1,200 MNIST training images at 16x16 in [0, 1]."""
    train = load_idx_corpus("mnist", "train", data_dir)
    x = torch.as_tensor(np.asarray(train.images[:1200]), dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    x = F.interpolate(x, size=(SIDE, SIDE), mode="area")
    return TensorImageDataset(x, torch.as_tensor(np.asarray(train.labels[:1200]), dtype=torch.long), name="mnist16")


def _trainer(model, part: str, train, tmp_path, steps: int, noised=None, lam: float = 2.0) -> AbnormalityModuleTrainer:
    args = OETrainingArguments(output_dir=str(tmp_path / part), per_device_train_batch_size=32, max_steps=steps, learning_rate=3e-3,
                               lr_scheduler_type="constant", report_to="none", save_strategy="no", logging_strategy="no",
                               disable_tqdm=True, seed=0, use_cpu=True, oe_batch_size=64, oe_lambda=lam, dataloader_num_workers=0)
    return AbnormalityModuleTrainer(model=model, args=args, train_dataset=train, data_collator=image_collate, outlier_dataset=noised,
                                    part=part)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(mnist16, tmp_path_factory):
    """A module trained decoder (40 steps) then head (60 steps), with parameter snapshots around each part."""
    tmp = tmp_path_factory.mktemp("abnormality")
    train = TensorImageDataset(mnist16.pixel_values[:1000], mnist16.labels[:1000])
    model = _module()
    snaps = {"start": {n: _snapshot(getattr(model, n)) for n in ("classifier", "decoder", "head")}}
    _trainer(model, "decoder", train, tmp, 40).train()
    snaps["decoder"] = {n: _snapshot(getattr(model, n)) for n in ("classifier", "decoder", "head")}
    _trainer(model, "head", train, tmp, 60, noised=NoisedImageDataset(train, seed=1)).train()
    snaps["head"] = {n: _snapshot(getattr(model, n)) for n in ("classifier", "decoder", "head")}
    return model.eval(), snaps


def test_each_part_trains_alone_and_the_frozen_parts_stay_frozen(trained):
    model, snaps = trained
    start, after_decoder, after_head = snaps["start"], snaps["decoder"], snaps["head"]
    # decoder part: only the decoder moved; head part: only the head moved; the classifier never
    assert not _same(start["decoder"], after_decoder["decoder"])
    assert _same(start["head"], after_decoder["head"]) and _same(start["classifier"], after_decoder["classifier"])
    assert not _same(after_decoder["head"], after_head["head"])
    assert _same(after_decoder["decoder"], after_head["decoder"]) and _same(start["classifier"], after_head["classifier"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("head."))


def test_frozen_parts_stay_in_eval_mode_under_train():
    model = _module()
    model.set_trainable_part("head")
    model.train()
    assert model.head.training and not model.classifier.training and not model.decoder.training
    x = torch.rand(8, 1, SIDE, SIDE)
    first, second = model(pixel_values=x), model(pixel_values=x)
    # the classifier has dropout: in train mode two passes would differ; frozen, they are identical
    assert torch.equal(first.logits, second.logits) and torch.equal(first.reconstruction, second.reconstruction)
    with pytest.raises(ValueError, match="part must be one of"):
        model.set_trainable_part("classifier")


def test_head_loss_is_clean_bce_plus_lambda_noised_bce(mnist16, tmp_path):
    model = _module()
    train = TensorImageDataset(mnist16.pixel_values[:200], mnist16.labels[:200])
    lam = 1.5
    trainer = _trainer(model, "head", train, tmp_path, 1, noised=NoisedImageDataset(train, seed=3), lam=lam)
    clean = image_collate([train[i] for i in range(32)])
    noised_batch = {"pixel_values": torch.stack([trainer.outlier_dataset[i][0] for i in range(64)])}
    trainer.next_outlier_batch = lambda: noised_batch
    model.train()
    loss = trainer.compute_loss(model, clean)
    with torch.no_grad():
        a_in = model(pixel_values=clean["pixel_values"]).abnormality_logits
        a_out = model(pixel_values=noised_batch["pixel_values"]).abnormality_logits
    expected = F.softplus(a_in).mean() + lam * F.softplus(-a_out).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the model's own loss with abnormal_labels is the same binary cross-entropy
    labels = torch.tensor([0.0, 1.0, 1.0])
    logits = torch.tensor([0.3, -2.0, 4.0])
    manual = (F.softplus(logits) - labels * logits).mean()
    assert abnormality_head_loss(logits, labels).item() == pytest.approx(manual.item(), rel=1e-6)


def test_decoder_loss_is_the_mean_squared_reconstruction_error(mnist16, tmp_path):
    model = _module()
    train = TensorImageDataset(mnist16.pixel_values[:64], mnist16.labels[:64])
    trainer = _trainer(model, "decoder", train, tmp_path, 1)
    batch = image_collate([train[i] for i in range(16)])
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        rec = model(pixel_values=batch["pixel_values"]).reconstruction
    assert loss.item() == pytest.approx(((batch["pixel_values"] - rec) ** 2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="outlier_dataset"):
        _trainer(model, "head", train, tmp_path, 1)


def test_abnormality_score_is_higher_for_noised_and_noise_images(trained, mnist16):
    model, _ = trained
    held_out = TensorImageDataset(mnist16.pixel_values[1000:], mnist16.labels[1000:])
    noised = torch.stack([NoisedImageDataset(held_out, seed=7)[i][0] for i in range(len(held_out))])
    uniform = generate("uniform", 200, seed=0, shape=(1, SIDE, SIDE))
    with torch.no_grad():
        scores = {name: output_score("abnormality", model(pixel_values=x)).numpy()
                  for name, x in {"clean": held_out.pixel_values, "noised": noised, "uniform": uniform}.items()}
    table = evaluate_ood(scores["clean"], {"noised": scores["noised"], "uniform": scores["uniform"]}, ratio=1)
    aurocs = {row["name"]: row["auroc"] for row in table.rows}
    assert aurocs["noised"] > 0.9 and aurocs["uniform"] > 0.95, aurocs
    # higher = more anomalous: the score is sigmoid of the head's logit, increasing in it
    a = torch.tensor([-3.0, 0.0, 2.0, 40.0])
    s = abnormality_score(a)
    assert torch.all(s[1:] > s[:-1]) and s[1].item() == 0.5 and s.dtype == torch.float64


def test_abnormality_is_a_registered_score_that_needs_the_head():
    assert "abnormality" in SCORE_NAMES
    with pytest.raises(ValueError, match="own head"):
        example_scores(torch.zeros(2, 10), ("abnormality",))
    with pytest.raises(ValueError, match="abnormality_logits"):
        output_score("abnormality", {"logits": torch.zeros(2, 10)})


def test_detector_with_abnormality_score_saves_loads_and_scores_from_the_cli(trained, mnist16, tmp_path):
    model, _ = trained
    det = OODDetector(model, ImagePreprocessing(size=SIDE, channels=1), score="abnormality", device="cpu", progress=False)
    clean, noise = mnist16.pixel_values[1000:1100], generate("uniform", 20, seed=1, shape=(1, SIDE, SIDE))
    det.fit_threshold(clean, target_fpr=0.05)
    with torch.no_grad():
        direct = torch.sigmoid(model(pixel_values=clean).abnormality_logits.double()).numpy()
    np.testing.assert_allclose(det.score(clean), direct, rtol=1e-6)
    folder = det.save_pretrained(tmp_path / "det")
    loaded = OODDetector.from_pretrained(folder, device="cpu")
    assert loaded.score_name == "abnormality" and type(loaded.model).__name__ == "AbnormalityModuleForImageClassification"
    assert loaded.threshold == det.threshold
    np.testing.assert_array_equal(loaded.score(clean), det.score(clean))
    assert loaded.predict(noise).mean() > 0.9 and loaded.predict(clean).mean() < 0.2
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.fromarray((clean[i, 0].numpy() * 255).round().astype(np.uint8)).save(images / f"d{i}.png")
    out = tmp_path / "scores.jsonl"
    assert cli.main(["score", "--model", str(folder), "--input", str(images), "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(0.0 <= r["score"] <= 1.0 for r in records)


def test_uniform_noise_kind():
    x = generate("uniform", 50, seed=3)
    assert x.shape == (50, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) < 1.0
    assert abs(float(x.mean()) - 0.5) < 0.01 and torch.equal(x, generate("uniform", 50, seed=3))
    ds = SyntheticImageDataset("uniform", 50, seed=3)
    assert torch.equal(ds[7][0], x[7]) and not torch.equal(x, generate("uniform", 50, seed=4))
    y = generate("uniform", 10, shape=(1, 4, 4), low=-1.0, high=1.0)
    assert float(y.min()) >= -1.0 and float(y.min()) < 0.0
    with pytest.raises(ValueError, match="low < high"):
        generate("uniform", 1, low=1.0, high=1.0)


def test_recipe_stages_copy_the_baseline_and_report_table11(data_dir, tmp_path):
    """The MNIST recipe's ``--abnormality-module`` stages on the ``test`` preset (a few hundred steps; the Table 11
    sets replaced by small stand-ins so that the test needs no CIFAR-10): the module's classifier is the baseline's
    weights, the baseline itself goes on to ``oe`` untouched by the module, and the records and detector exist."""
    import dataclasses

    from oe_vision.classifier_experiment import load_vision_data, preset_config, run_vision_oe

    plain = preset_config("mnist", "test", branch=False, calibration=False, abnormality_decoder_max_steps=20,
                          abnormality_head_max_steps=20, baseline_max_steps=100, oe_max_steps=5, train_size=500,
                          holdout_size=100, test_size=300, ood_size=60, n_draws=1, save_steps=1000)
    data = load_vision_data(plain, data_dir)
    data.table11 = {"notmnist": data.ood["notmnist"], "uniform": data.ood["gaussian"]}
    cfg = dataclasses.replace(plain, abnormality_module=True)
    assert cfg.stages == ("baseline", "abnormality_decoder", "abnormality", "oe")
    result = run_vision_oe(cfg, tmp_path / "run", data=data)
    records = [r for r in result["records"] if r.get("paper_table") == "msp_table11"]
    assert {(r["score"], r["ood_set"]) for r in records} == {(s, d) for s in ("msp", "abnormality") for d in ("notmnist", "uniform", "mean")}
    assert all(r["stage"] == "abnormality" and r["model"] == "convnet" and r["n_in"] == len(data.test) for r in records)
    baseline = MnistConvNetForImageClassification.from_pretrained(tmp_path / "run" / "baseline_model")
    module = AbnormalityModuleForImageClassification.from_pretrained(tmp_path / "run" / "abnormality_model")
    assert _same(_snapshot(baseline), _snapshot(module.classifier))
    outputs = result["outputs"]
    torch.testing.assert_close(outputs["abnormality"]["test"]["logits"], outputs["baseline"]["test"]["logits"])
    assert not torch.equal(outputs["oe"]["test"]["logits"], outputs["baseline"]["test"]["logits"])
    loaded = OODDetector.from_pretrained(tmp_path / "run" / "abnormality_detector", device="cpu")
    assert loaded.score_name == "abnormality" and loaded.threshold is not None
    # the card's evaluation is the stage's own Table 11 table of the module's score (the records' numbers)
    card = {row["name"]: (row["auroc"], row["fpr99"], row["n_out"]) for row in loaded.evaluation["rows"]}
    assert card == {r["ood_set"]: (r["auroc"], r["fpr99"], r["n_out"]) for r in records if r["score"] == "abnormality"}
    assert "MSP paper Table 11" in (tmp_path / "run" / "results.md").read_text()
