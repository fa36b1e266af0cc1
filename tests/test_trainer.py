"""OETrainer: loss, gradient accumulation, logging, outlier stream, construction errors, scores (CPU, tiny models)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from _oe_tiny import SEQ_LEN, classifier_rows, hf_dataset, lm_rows, tiny_bert_classifier, tiny_gpt2_lm
from oe_common.maths.losses import oe_uniform_loss
from oe_common.maths.metrics import OODTable
from oe_common.training.outlier_stream import OUTLIER_STREAM_STATE_NAME, EmptyOutlierDatasetError, OutlierStream
from oe_common.maths.scores import msp_score, sequence_nll_score, sequence_uniform_xent_score
from oe_common.training.trainer import OETrainer, OETrainingArguments

REPO = Path(__file__).resolve().parents[1]


TORCH_THREADS = 1  # tiny models: see the conftest fixture _torch_threads


def make_args(tmp_path, **overrides) -> OETrainingArguments:
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=1, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    settings.update(overrides)
    return OETrainingArguments(**settings)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict, atol: float = 2e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


def max_change(before: dict, after: dict) -> float:
    return max(float((before[k].float() - after[k].float()).abs().max()) for k in before)


TASKS = {
    "classifier": (tiny_bert_classifier, classifier_rows),
    "causal_lm": (tiny_gpt2_lm, lm_rows),
}


def one_step(tmp_path, task: str, batch: int, accumulation: int, outliers: bool = True, trainer_kwargs=None, **overrides) -> dict:
    """Weights after one optimizer step over the same 8 in-distribution (and 8 outlier) examples."""
    make_model, make_rows = TASKS[task]
    model = make_model()
    args = make_args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, **overrides)
    trainer = OETrainer(
        model=model, args=args, train_dataset=hf_dataset(make_rows(8, seed=1)),
        outlier_dataset=hf_dataset(make_rows(8, seed=2, outliers=True)) if outliers else None,
        **(trainer_kwargs or {}),
    )
    trainer.train()
    return weights(model)


# ---- arguments -----------------------------------------------------------------------------------------------


def test_arguments_defaults_and_validation(tmp_path):
    args = make_args(tmp_path, per_device_train_batch_size=6)
    assert (args.oe_lambda, args.oe_loss, args.oe_batch_ratio, args.oe_concat_forward) == (0.5, "uniform", 1.0, True)
    assert args.outlier_batch_size == 6
    assert make_args(tmp_path, per_device_train_batch_size=6, oe_batch_ratio=2).outlier_batch_size == 12
    assert make_args(tmp_path, oe_batch_size=5, oe_batch_ratio=2).outlier_batch_size == 5
    with pytest.raises(ValueError, match="oe_lambda"):
        make_args(tmp_path, oe_lambda=-0.1)
    with pytest.raises(ValueError, match="oe_loss"):
        make_args(tmp_path, oe_loss="kl")
    with pytest.raises(ValueError, match="oe_batch_ratio"):
        make_args(tmp_path, oe_batch_ratio=0)


# ---- construction errors (before any training) ---------------------------------------------------------------


def test_errors_at_construction(tmp_path):
    train = hf_dataset(classifier_rows(16, seed=1))
    outliers = hf_dataset(classifier_rows(16, seed=2, outliers=True))

    def build(args=None, **kwargs):
        kwargs.setdefault("train_dataset", train)
        return OETrainer(model=tiny_bert_classifier(), args=args or make_args(tmp_path), **kwargs)

    with pytest.raises(ValueError, match="no example|none for"):
        build(outlier_dataset=outliers.select([]))

    def nothing():
        yield from ()

    empty_stream = datasets.IterableDataset.from_generator(nothing, features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64"))}))
    with pytest.raises(EmptyOutlierDatasetError, match="yielded no example"):
        build(outlier_dataset=empty_stream)

    too_big = hf_dataset({"input_ids": [[1, 2, 3, 40]] * 4, "attention_mask": [[1] * 4] * 4})
    with pytest.raises(ValueError, match=r"span \[1, 40\].*32 entries"):
        build(outlier_dataset=too_big)

    stream = outliers.to_iterable_dataset()
    with pytest.raises(ValueError, match="outlier dataset is streaming.*max_steps"):
        build(args=make_args(tmp_path, max_steps=-1), outlier_dataset=stream)
    with pytest.raises(ValueError, match="max_steps"):
        build(args=make_args(tmp_path, max_steps=-1), train_dataset=train.to_iterable_dataset())
    with pytest.raises(TypeError, match="OETrainingArguments"):
        plain = TrainingArguments(output_dir=str(tmp_path / "p"), report_to="none", use_cpu=True)
        build(args=plain, outlier_dataset=outliers)
    args = make_args(tmp_path)
    args.oe_lambda = -1.0  # set after the dataclass check: the trainer checks again
    with pytest.raises(ValueError, match="oe_lambda"):
        build(args=args, outlier_dataset=outliers)
    build(outlier_dataset=stream)  # streaming with max_steps is fine


def test_without_outliers_it_is_a_plain_trainer(tmp_path):
    train = hf_dataset(lm_rows(16, seed=1))
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=3)
    plain_model, oe_model = tiny_gpt2_lm(), tiny_gpt2_lm()
    Trainer(model=plain_model, args=args, train_dataset=train).train()
    trainer = OETrainer(model=oe_model, args=args, train_dataset=train)
    assert trainer.model_accepts_loss_kwargs  # the Trainer's own token-count normalisation stays on
    trainer.train()
    assert_same_weights(weights(plain_model), weights(oe_model), atol=0)
    assert not any("loss_oe" in entry for entry in trainer.state.log_history)


# ---- the objective ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("concat", [True, False], ids=["concat", "two_forwards"])
def test_gradient_accumulation_keeps_the_loss_scale(tmp_path, task, concat):
    """1 step of batch 8 == 4 accumulated steps of batch 2 (SGD, no dropout, fixed-length sequences)."""
    start = weights(TASKS[task][0]())
    full = one_step(tmp_path, task, batch=8, accumulation=1, oe_concat_forward=concat)
    accumulated = one_step(tmp_path, task, batch=2, accumulation=4, oe_concat_forward=concat)
    assert max_change(start, full) > 1e-2  # the step did something
    assert_same_weights(full, accumulated)
    # ... and the OE term really took part (a wrong OE scale would have been visible)
    assert max_change(full, one_step(tmp_path, task, batch=8, accumulation=1, outliers=False)) > 1e-3


@pytest.mark.parametrize("task", sorted(TASKS))
def test_energy_loss_gradient_accumulation(tmp_path, task):
    full = one_step(tmp_path, task, batch=8, accumulation=1, oe_loss="energy", oe_energy_m_in=-5.0, oe_energy_m_out=0.0)
    accumulated = one_step(tmp_path, task, batch=2, accumulation=4, oe_loss="energy", oe_energy_m_in=-5.0, oe_energy_m_out=0.0)
    assert_same_weights(full, accumulated)
    assert max_change(full, one_step(tmp_path, task, batch=8, accumulation=1)) > 1e-3  # not the uniform loss


@pytest.mark.parametrize("concat", [True, False], ids=["concat", "two_forwards"])
def test_gradient_accumulation_with_a_compute_loss_func(tmp_path, concat):
    """A user compute_loss_func is the in-distribution term, and keeps the accumulation scale (all transformers versions)."""

    def weighted(outputs, labels, num_items_in_batch=None):
        return 3.0 * nn.functional.cross_entropy(outputs["logits"], labels)

    kwargs = dict(oe_concat_forward=concat, trainer_kwargs={"compute_loss_func": weighted})
    full = one_step(tmp_path, "classifier", batch=8, accumulation=1, **kwargs)
    assert_same_weights(full, one_step(tmp_path, "classifier", batch=2, accumulation=4, **kwargs))
    assert max_change(full, one_step(tmp_path, "classifier", batch=8, accumulation=1, oe_concat_forward=concat)) > 1e-3


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_concatenated_and_separate_forward_agree_without_batchnorm(tmp_path, task, label_smoothing):
    joint = one_step(tmp_path, task, batch=4, accumulation=2, oe_concat_forward=True, label_smoothing_factor=label_smoothing)
    separate = one_step(tmp_path, task, batch=4, accumulation=2, oe_concat_forward=False, label_smoothing_factor=label_smoothing)
    assert_same_weights(joint, separate)


def test_loss_value_is_in_loss_plus_lambda_uniform_oe(tmp_path):
    """compute_loss on one batch equals the formula computed by hand."""
    model = tiny_gpt2_lm()
    in_rows, out_rows = lm_rows(4, seed=1), lm_rows(4, seed=2, outliers=True)
    trainer = OETrainer(model=model, args=make_args(tmp_path, per_device_train_batch_size=4, oe_lambda=0.7), train_dataset=hf_dataset(in_rows), outlier_dataset=hf_dataset(out_rows))
    inputs = {k: torch.tensor(v) for k, v in in_rows.items()}
    model.train()
    loss = trainer.compute_loss(model, inputs)
    out_batch = {k: torch.tensor(v) for k, v in out_rows.items()}  # a batch of 4 from 4 outliers = all, in some order
    with torch.no_grad():
        expected = model(**inputs).loss + 0.7 * oe_uniform_loss(model(**out_batch).logits)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)


def test_eval_loss_is_the_in_distribution_loss(tmp_path):
    """trainer.evaluate() with outliers configured reports L_in alone (also through compute_loss_func)."""
    eval_set = hf_dataset(classifier_rows(12, seed=5))
    args = make_args(tmp_path, per_device_eval_batch_size=4)
    outliers = hf_dataset(classifier_rows(8, seed=2, outliers=True))
    plain = Trainer(model=tiny_bert_classifier(), args=args).evaluate(eval_set)["eval_loss"]
    with_oe = OETrainer(model=tiny_bert_classifier(), args=args, outlier_dataset=outliers).evaluate(eval_set)["eval_loss"]
    assert with_oe == pytest.approx(plain, rel=1e-6)

    def doubled(outputs, labels, num_items_in_batch=None):
        return 2 * nn.functional.cross_entropy(outputs["logits"], labels)

    custom = OETrainer(model=tiny_bert_classifier(), args=args, outlier_dataset=outliers, compute_loss_func=doubled)
    assert custom.evaluate(eval_set)["eval_loss"] == pytest.approx(2 * plain, rel=1e-6)


def test_padding_is_masked_for_causal_lm_outliers(tmp_path):
    """Padded outlier positions contribute nothing to L_OE (the mask comes from the attention mask)."""
    model = tiny_gpt2_lm()
    ids = lm_rows(4, seed=3, outliers=True)["input_ids"]
    mask = [[1] * 5 + [0] * 3] * 4
    padded = hf_dataset({"input_ids": [row[:5] + [0, 0, 0] for row in ids], "attention_mask": mask})
    trainer = OETrainer(model=model, args=make_args(tmp_path, per_device_train_batch_size=4, oe_lambda=1.0), train_dataset=hf_dataset(lm_rows(4, seed=1)), outlier_dataset=padded)
    batch = trainer.next_outlier_batch()
    logits, out_mask = trainer.outlier_logits(model, batch)
    assert out_mask.sum().item() == 20
    with torch.no_grad():
        short = model(input_ids=batch["input_ids"][:, :5]).logits  # causal: the real positions are unaffected by padding
        torch.testing.assert_close(trainer.oe_term(logits, out_mask, logits, None), oe_uniform_loss(short), atol=1e-5, rtol=1e-5)


def test_concat_falls_back_to_two_forwards_when_lengths_differ(tmp_path, caplog):
    outliers = hf_dataset(lm_rows(8, seed=2, outliers=True, seq_len=6))
    trainer = OETrainer(model=tiny_gpt2_lm(), args=make_args(tmp_path, per_device_train_batch_size=4, max_steps=2), train_dataset=hf_dataset(lm_rows(8, seed=1)), outlier_dataset=outliers)
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "cannot be concatenated" in caplog.text
    assert all(np.isfinite(entry["loss_oe"]) for entry in trainer.state.log_history if "loss_oe" in entry)


class BatchNormNet(nn.Module):
    """A custom (non-transformers) model: features -> BatchNorm -> linear classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(4, momentum=None)  # cumulative average: running_mean = mean of batch means
        self.head = nn.Linear(4, 3)

    def forward(self, x, labels=None):
        logits = self.head(self.norm(x))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class FeatureSet(torch.utils.data.Dataset):
    def __init__(self, n: int, shift: float, labelled: bool, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=generator) + shift
        self.y = torch.randint(0, 3, (n,), generator=generator) if labelled else None

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]} if self.y is not None else {"x": self.x[i]}


@pytest.mark.parametrize("concat", [True, False], ids=["concat", "two_forwards"])
def test_batchnorm_sees_in_and_outlier_batch_together(tmp_path, concat):
    """Custom nn.Module + torch Dataset: with oe_concat_forward, one BatchNorm pass over 4 in + 8 outliers."""
    model = BatchNormNet()
    train, outliers = FeatureSet(4, 0.0, True, seed=1), FeatureSet(8, 5.0, False, seed=2)
    args = make_args(tmp_path, per_device_train_batch_size=4, oe_batch_ratio=2, oe_concat_forward=concat)
    OETrainer(model=model, args=args, train_dataset=train, outlier_dataset=outliers).train()
    in_mean, out_mean = train.x.mean(0), outliers.x.mean(0)
    expected = (4 * in_mean + 8 * out_mean) / 12 if concat else (in_mean + out_mean) / 2
    torch.testing.assert_close(model.norm.running_mean, expected, atol=1e-5, rtol=1e-5)


def test_loss_in_and_loss_oe_are_logged(tmp_path):
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=6, logging_steps=3, learning_rate=0.05, oe_lambda=0.5, gradient_accumulation_steps=2)
    trainer = OETrainer(model=tiny_bert_classifier(), args=args, train_dataset=hf_dataset(classifier_rows(64, seed=1)), outlier_dataset=hf_dataset(classifier_rows(64, seed=2, outliers=True)))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [3, 6]
    for entry in logged:
        assert entry["loss_oe"] > 0 and entry["loss_in"] > 0
        # Trainer's "loss" is the mean over the interval of the full objective: the two parts must add up to it
        assert entry["loss"] == pytest.approx(entry["loss_in"] + 0.5 * entry["loss_oe"], rel=1e-4)
    assert logged[0]["loss_in"] != logged[1]["loss_in"]  # a mean over each interval, not a running total


def test_oe_raises_the_outlier_msp_score(tmp_path):
    """The method works: after OE, the classifier is much less confident on (unseen) outliers than without."""
    train = hf_dataset(classifier_rows(256, seed=1))
    outliers = hf_dataset(classifier_rows(256, seed=2, outliers=True))
    test_in, test_out = hf_dataset(classifier_rows(120, seed=3)), hf_dataset(classifier_rows(120, seed=4, outliers=True))
    results = {}
    for name, oe in [("baseline", None), ("oe", outliers)]:
        args = make_args(tmp_path, per_device_train_batch_size=16, max_steps=40, learning_rate=5e-3, optim="adamw_torch", lr_scheduler_type="linear", logging_steps=20)
        trainer = OETrainer(model=tiny_bert_classifier(), args=args, train_dataset=train, outlier_dataset=oe)
        trainer.train()
        scores = trainer.compute_scores(test_out, "msp")
        accuracy = float((trainer.predict(test_in).predictions.argmax(-1) == np.array(test_in["labels"])).mean())
        results[name] = (scores.mean(), accuracy)
    assert results["oe"][1] > 0.95 and results["baseline"][1] > 0.95  # OE does not hurt the task
    assert results["oe"][0] > -0.45  # near uniform (-1/3)
    assert results["oe"][0] > results["baseline"][0] + 0.15, results


# ---- the outlier stream ----------------------------------------------------------------------------------------


def _ids(batch) -> list[int]:
    return [int(i) for i in batch["id"]]


def _collate(features):
    return {"id": torch.tensor([int(f["id"]) for f in features])}


class IdList(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"id": i}


class IdIterable(torch.utils.data.IterableDataset):
    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return ({"id": i} for i in range(self.n))


SOURCES = {
    "hf_map": lambda n: datasets.Dataset.from_dict({"id": list(range(n))}),
    "torch_map": IdList,
    "hf_streaming": lambda n: datasets.Dataset.from_dict({"id": list(range(n))}).to_iterable_dataset(num_shards=2),
    "torch_iterable": IdIterable,
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_outlier_stream_shards_shuffles_and_cycles(source):
    """Per pass (epoch): the two processes' examples are disjoint and cover the data; every pass is reshuffled."""
    n, world = 23, 2
    passes = []  # passes[rank][epoch] = ids in the order seen
    for rank in range(world):
        stream = OutlierStream(SOURCES[source](n), batch_size=1, collate_fn=_collate, seed=7, rank=rank, world_size=world, shuffle_buffer_size=8)
        seen: dict[int, list[int]] = {}
        for _ in range(40):  # > 3 passes over a shard of ~12: the stream cycles
            (example,) = _ids(next(stream))
            seen.setdefault(stream.epoch, []).append(example)
        assert stream.epoch >= 3
        again = OutlierStream(SOURCES[source](n), batch_size=1, collate_fn=_collate, seed=7, rank=rank, world_size=world, shuffle_buffer_size=8)
        assert [_ids(next(again))[0] for _ in range(40)] == [i for e in sorted(seen) for i in seen[e]]  # seeded
        passes.append(seen)
    for epoch in (0, 1, 2):
        first, second = passes[0][epoch], passes[1][epoch]
        assert len(set(first)) == len(first) and len(set(second)) == len(second)  # a pass has no repeat
        assert not set(first) & set(second) and set(first) | set(second) == set(range(n))
    for rank in range(world):
        assert passes[rank][0] != passes[rank][1]  # reshuffled at the wrap


def test_outlier_stream_batches_are_full_across_the_wrap():
    stream = OutlierStream(IdList(10), batch_size=4, collate_fn=_collate, seed=0)
    ids = [i for _ in range(5) for i in _ids(next(stream))]  # 20 examples = 2 passes, batch 3 spans both
    assert sorted(ids[:10]) == sorted(ids[10:]) == list(range(10)) and ids[:10] != ids[10:]


def test_outlier_stream_calls_set_epoch_on_wrap():
    dataset = IdIterable(5)
    stream = OutlierStream(dataset, batch_size=2, collate_fn=_collate, seed=0)
    for _ in range(6):  # 12 examples = 2.4 passes
        next(stream)
    assert dataset.epochs == [0, 1, 2]


def test_outlier_stream_small_shard_still_gives_full_batches():
    stream = OutlierStream(IdList(3), batch_size=8, collate_fn=_collate, seed=0)
    batch = _ids(next(stream))
    assert len(batch) == 8 and set(batch) == {0, 1, 2}


def test_outlier_stream_with_dataloader_workers_is_the_same_stream():
    def first_batches(workers):
        stream = OutlierStream(IdList(10), batch_size=4, collate_fn=_collate, seed=3, num_workers=workers)
        return [_ids(next(stream)) for _ in range(6)]

    assert first_batches(1) == first_batches(0)


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("rank", [0, 1])
def test_outlier_stream_skip_examples_continues_the_same_sequence(source, rank):
    """A stream started at ``skip_examples=k`` yields the k-th example onwards of the uninterrupted stream, for any
    batch size, across wraps, and counts ``examples_drawn`` from k."""
    def stream(batch_size, skip=0):
        return OutlierStream(SOURCES[source](11), batch_size=batch_size, collate_fn=_collate, seed=5, rank=rank,
                             world_size=2, shuffle_buffer_size=4, skip_examples=skip)

    uninterrupted = stream(3)
    full = [i for _ in range(12) for i in _ids(next(uninterrupted))]  # 36 examples: several passes over a shard of 5-6
    for skip in (0, 4, 6, 13):
        resumed = stream(2, skip)
        rest = [i for _ in range(8) for i in _ids(next(resumed))]
        assert rest == full[skip:skip + 16]
        assert resumed.examples_drawn == skip + 16
    with pytest.raises(ValueError, match="skip_examples"):
        stream(2, -1)


class _RecordingOETrainer(OETrainer):
    """Records the input_ids of every outlier batch it trains on."""

    def next_outlier_batch(self):
        batch = super().next_outlier_batch()
        self.seen_outliers = getattr(self, "seen_outliers", []) + [batch["input_ids"].clone()]
        return batch


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_resuming_from_a_checkpoint_continues_the_outlier_stream(tmp_path, streaming):
    """Train 6 steps saving at step 3; a new trainer resumed from checkpoint-3 trains on the outlier batches 4-6 of
    the uninterrupted run (not on batches 1-3 again) and ends with the same weights."""
    outliers = hf_dataset(lm_rows(20, seed=2, outliers=True))
    if streaming:
        outliers = outliers.to_iterable_dataset(num_shards=2)

    def trainer(out):
        args = make_args(tmp_path, output_dir=str(tmp_path / out), per_device_train_batch_size=4, max_steps=6,
                         save_strategy="steps", save_steps=3, optim="adamw_torch", learning_rate=0.01)
        return _RecordingOETrainer(model=tiny_gpt2_lm(), args=args, train_dataset=hf_dataset(lm_rows(48, seed=1)), outlier_dataset=outliers)

    full = trainer("full")
    full.train()
    state = json.loads((tmp_path / "full" / "checkpoint-3" / OUTLIER_STREAM_STATE_NAME).read_text())
    assert state["examples_drawn_per_process"] == 3 * 4

    resumed = trainer("full")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert len(full.seen_outliers) == 6 and len(resumed.seen_outliers) == 3
    for a, b in zip(full.seen_outliers[3:], resumed.seen_outliers):
        assert torch.equal(a, b)
    assert not torch.equal(resumed.seen_outliers[0], full.seen_outliers[0])
    assert_same_weights(weights(full.model), weights(resumed.model), atol=1e-6)


def test_resuming_from_a_checkpoint_without_stream_state_warns(tmp_path, caplog):
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=2, save_strategy="steps", save_steps=1)
    Trainer(model=tiny_gpt2_lm(), args=args, train_dataset=hf_dataset(lm_rows(16, seed=1))).train()  # no stream state
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=3)
    oe = OETrainer(model=tiny_gpt2_lm(), args=args, train_dataset=hf_dataset(lm_rows(16, seed=1)),
                   outlier_dataset=hf_dataset(lm_rows(8, seed=2, outliers=True)))
    with caplog.at_level(logging.WARNING, logger="oe_common.training.trainer"):
        oe.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert OUTLIER_STREAM_STATE_NAME in caplog.text and "first batch" in caplog.text
    assert oe.outlier_stream.examples_drawn == 4  # one step after step 2, from the stream's start


def test_training_from_a_streaming_text_corpus(tmp_path):
    """Outliers streamed from local text files (datasets 'text' loader, streaming=True), tokenized on the fly."""
    rng = np.random.default_rng(0)
    files = []
    for k in range(3):
        path = tmp_path / f"outliers_{k}.txt"
        path.write_text("\n".join("".join(chr(ord("a") + int(c)) for c in rng.integers(0, 16, SEQ_LEN)) for _ in range(20)) + "\n")
        files.append(str(path))
    stream = datasets.load_dataset("text", data_files=files, split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)

    def encode(example):  # character "vocabulary": a..p -> 16..31, the outlier token range
        return {"input_ids": [16 + ord(c) - ord("a") for c in example["text"]], "attention_mask": [1] * SEQ_LEN}

    stream = stream.map(encode, remove_columns=["text"])
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=20, learning_rate=0.05, optim="adamw_torch", logging_steps=10)
    trainer = OETrainer(model=tiny_gpt2_lm(), args=args, train_dataset=hf_dataset(lm_rows(64, seed=1)), outlier_dataset=stream)
    trainer.train()
    assert trainer.outlier_stream.epoch >= 1  # 20 steps x 4 > 60 lines: the stream wrapped
    logged = [entry["loss_oe"] for entry in trainer.state.log_history if "loss_oe" in entry]
    assert len(logged) == 2 and all(value >= np.log(32) - 1e-4 for value in logged)  # H(U, p) >= log V


# ---- scores ----------------------------------------------------------------------------------------------------


def test_lm_scores_are_per_sequence_means_with_causal_shift(tmp_path):
    model = tiny_gpt2_lm()
    rows = lm_rows(5, seed=4)
    rows["attention_mask"][0] = [1] * 6 + [0] * 2  # a padded sequence
    dataset = hf_dataset(rows)
    trainer = OETrainer(model=model, args=make_args(tmp_path, per_device_eval_batch_size=2))
    ids, mask = torch.tensor(rows["input_ids"]), torch.tensor(rows["attention_mask"]).bool()
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
    shifted_mask = mask[:, :-1] & mask[:, 1:]
    targets = ids[:, 1:].masked_fill(~shifted_mask, -100)
    np.testing.assert_allclose(trainer.compute_scores(dataset, "nll"), sequence_nll_score(logits, targets, shifted_mask).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trainer.compute_scores(dataset, "uniform_xent"), sequence_uniform_xent_score(logits, shifted_mask).numpy(), rtol=1e-5, atol=1e-6)
    msp = trainer.compute_scores(dataset, "msp")
    expected_msp = (msp_score(logits) * shifted_mask).sum(-1) / shifted_mask.sum(-1)
    np.testing.assert_allclose(msp, expected_msp.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="score must be one of"):
        trainer.compute_scores(dataset, "entropy")
    # several scores from one pass give the same arrays as one score at a time
    many = trainer.compute_scores(dataset, ["nll", "uniform_xent", "msp"])
    assert set(many) == {"nll", "uniform_xent", "msp"}
    np.testing.assert_allclose(many["nll"], trainer.compute_scores(dataset, "nll"), rtol=1e-6)
    np.testing.assert_allclose(many["uniform_xent"], trainer.compute_scores(dataset, "uniform_xent"), rtol=1e-6)
    np.testing.assert_allclose(many["msp"], msp, rtol=1e-6)


def test_classifier_scores_and_evaluate_ood_table(tmp_path):
    model = tiny_bert_classifier()
    trainer = OETrainer(model=model, args=make_args(tmp_path, per_device_eval_batch_size=4))
    test_in, test_out = hf_dataset(classifier_rows(10, seed=3)), hf_dataset(classifier_rows(7, seed=4, outliers=True))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(test_in["input_ids"])).logits
    np.testing.assert_allclose(trainer.compute_scores(test_in, "msp"), msp_score(logits).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="nll"):
        trainer.compute_scores(test_in, "nll")
    table = trainer.evaluate_ood(test_in, {"random": test_out, "random2": test_out}, score="energy", recall_level=0.9, n_draws=3)
    assert isinstance(table, OODTable) and table.names == ["random", "random2", "mean"]
    assert table.meta["score"] == "energy" and table.recall_level == 0.9 and table["random"]["n_out"] == 2


# ---- the example -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_kind", ["classifier", "causal_lm"])
def test_example_script_runs(tmp_path, model_kind, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    sys.modules.pop("oe_custom_model", None)
    import oe_custom_model

    table = oe_custom_model.main(["--model", model_kind, "--max-steps", "3", "--output-dir", str(tmp_path / "ex")])
    assert table.names[-1] == "mean" and 0.0 <= table["mean"]["auroc"] <= 1.0


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _trainer_warnings(run) -> list[str]:
    """Warnings of the ``transformers.trainer`` logger (which does not propagate to pytest's caplog) during ``run()``."""
    handler, trainer_logger = _ListHandler(), logging.getLogger("transformers.trainer")
    trainer_logger.addHandler(handler)
    try:
        run()
    finally:
        trainer_logger.removeHandler(handler)
    return handler.messages


def test_loading_the_best_checkpoint_of_a_tied_lm_does_not_report_the_decoder_missing(tmp_path):
    model = tiny_gpt2_lm()
    data = hf_dataset(lm_rows(16, seed=1))
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=4, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                     save_steps=2, load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
    trainer = OETrainer(model=model, args=args, train_dataset=data, eval_dataset=data, outlier_dataset=hf_dataset(lm_rows(8, seed=2, outliers=True)))
    messages = _trainer_warnings(trainer.train)
    assert trainer.state.best_model_checkpoint is not None
    assert not [m for m in messages if "missing keys" in m], messages
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("tied", [True, False])
def test_other_missing_keys_still_warn_after_loading(tmp_path, tied):
    from torch.nn.modules.module import _IncompatibleKeys

    model = tiny_gpt2_lm()
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    trainer = OETrainer(model=model, args=make_args(tmp_path))
    result = _IncompatibleKeys(missing_keys=["lm_head.weight", "transformer.wpe.weight"], unexpected_keys=[])
    messages = _trainer_warnings(lambda: trainer._issue_warnings_after_load(result))
    assert len(messages) == 1 and "transformer.wpe.weight" in messages[0]
    assert ("lm_head.weight" in messages[0]) == (not tied)  # untied: the decoder really was not loaded
