"""One path from model outputs to scores (issue #13): for the same logits, ``OETrainer``, ``OODDetector`` and the
vision pipeline give IDENTICAL scores, because all go through ``oe_common.maths.scores.example_scores``.

(Before, the detector summed language-model token scores in float64 while the trainer averaged in float32: the
scores differed in the last bits, so a detector's threshold did not apply exactly to the trainer's scores.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _oe_tiny import hf_dataset, tiny_gpt2_lm

from oe_common.deployment.detector import OODDetector
from oe_text.lm.preprocessing import TextPreprocessing
from oe_vision.preprocessing import ImagePreprocessing
from oe_common.maths.scores import LOGIT_SCORE_NAMES, example_scores
from oe_common.training.trainer import OETrainer, OETrainingArguments
from oe_text.lm.vocab import Vocabulary
from oe_vision import MnistConvNetConfig, MnistConvNetForImageClassification

TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads
N = 6


def trainer_for(model, tmp_path) -> OETrainer:
    args = OETrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_eval_batch_size=N, report_to="none", disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0,
    )
    return OETrainer(model=model, args=args)


class Images(torch.utils.data.Dataset):
    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i]}


@pytest.mark.parametrize("score", ["msp", "uniform_xent", "max_logit", "energy"])
def test_classifier_scores_are_identical_in_trainer_detector_and_vision_pipeline(tmp_path, score):
    from oe_vision.classifier_experiment import anomaly_scores

    torch.manual_seed(0)
    model = MnistConvNetForImageClassification(MnistConvNetConfig(image_size=16, num_labels=10)).eval()
    pixels = torch.rand(N, 1, 16, 16)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    # the same batch as the trainer's (N), so the same computation on the same shapes: bit-identical scores
    detector = OODDetector(model, ImagePreprocessing(), score=score, device="cpu", progress=False, batch_size=N)
    from_detector = detector.score(pixels)
    from_trainer = trainer_for(model, tmp_path).compute_scores(Images(pixels), score)
    np.testing.assert_array_equal(from_detector, from_trainer)
    if score in ("msp", "uniform_xent"):  # the vision pipeline's scores (the others it does not offer)
        np.testing.assert_array_equal(anomaly_scores({"logits": logits}, score), from_trainer)
    expected = {
        "msp": -F.softmax(logits.double(), -1).amax(-1),
        "uniform_xent": F.log_softmax(logits.double(), -1).mean(-1),
        "max_logit": -logits.double().amax(-1),
        "energy": -torch.logsumexp(logits.double(), -1),
    }[score]
    np.testing.assert_allclose(from_trainer, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score", ["nll", "uniform_xent", "msp", "energy"])
def test_language_model_scores_are_identical_in_trainer_and_detector(tmp_path, score):
    words = [f"w{i}" for i in range(30)]
    vocab = Vocabulary.build(words)  # 30 words + <eos> + <unk> = the tiny GPT-2's 32 ids
    model = tiny_gpt2_lm().eval()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(N)]
    ids = [vocab.encode([vocab.eos, *text.split(), vocab.eos]).tolist() for text in texts]  # what the detector feeds
    detector = OODDetector(model, TextPreprocessing(vocab, seq_len=10), score=score, device="cpu", progress=False, batch_size=N)
    from_detector = detector.score(texts)
    dataset = hf_dataset({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]})
    from_trainer = trainer_for(model, tmp_path).compute_scores(dataset, score)
    np.testing.assert_array_equal(from_detector, from_trainer)
    if score == "nll":  # and it is the model's own loss (position t predicts token t+1)
        with torch.no_grad():
            losses = [model(input_ids=torch.tensor([row]), labels=torch.tensor([row])).loss.item() for row in ids]
        np.testing.assert_allclose(from_trainer, losses, rtol=1e-5)


def test_example_scores_knows_every_registered_name_and_refuses_others():
    logits = torch.randn(3, 4, 5)
    targets = torch.randint(0, 5, (3, 4))
    scores = example_scores(logits, LOGIT_SCORE_NAMES, targets=targets, causal=True)
    assert set(scores) == set(LOGIT_SCORE_NAMES) and all(v.shape == (3,) for v in scores.values())
    with pytest.raises(ValueError, match="unknown score"):
        example_scores(logits, ("entropy",), targets=targets)
    with pytest.raises(ValueError, match="nll"):
        example_scores(logits[:, 0], ("nll",))
