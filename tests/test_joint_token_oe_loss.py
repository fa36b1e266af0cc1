"""oe_common.maths.losses.joint_token_oe_loss (the fused language-model OE step) against its formula: F.cross_entropy on
the in-distribution rows + oe_weight * oe_uniform_loss on the outlier rows, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from oe_common.maths.losses import joint_token_oe_loss, oe_uniform_loss


def reference(logits, labels, out_mask, oe_weight):
    n_in = labels.shape[0]
    loss_in = F.cross_entropy(logits[:n_in].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    loss_oe = oe_uniform_loss(logits[n_in:], out_mask)
    return loss_in + oe_weight * loss_oe, loss_in, loss_oe


def case(dtype, with_mask, seed=0, n_in=3, n_out=2, length=5, vocab=13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_in + n_out, length, vocab, generator=g, dtype=dtype) * 3
    labels = torch.randint(0, vocab, (n_in, length), generator=g)
    labels[0, -1] = labels[2, 1] = -100  # ignored positions (the causal shift's last one, padding)
    mask = None
    if with_mask:
        mask = torch.ones(n_out, length, dtype=torch.bool)
        mask[1, 3:] = False
    return logits, labels, mask


@pytest.mark.parametrize("with_mask", [False, True])
def test_values_and_gradients_equal_the_formula(with_mask):
    logits, labels, mask = case(torch.float64, with_mask)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss, loss_in, loss_oe = joint_token_oe_loss(a, labels, mask, oe_weight=0.7)
    ref, ref_in, ref_oe = reference(b, labels, mask, 0.7)
    for got, want in ((loss, ref), (loss_in, ref_in), (loss_oe, ref_oe)):
        assert got.item() == pytest.approx(want.item(), abs=1e-12)
    assert not loss_in.requires_grad and not loss_oe.requires_grad
    (2.5 * loss).backward()
    (2.5 * ref).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-14, rtol=0)
    if with_mask:
        assert torch.all(a.grad[3 + 1, 3:] == 0)  # padded outlier positions get no gradient
    assert torch.all(a.grad[0, -1] == 0) and torch.all(a.grad[2, 1] == 0)  # ignored labels neither


def test_gradcheck_and_float32():
    logits, labels, mask = case(torch.float64, True, seed=1, vocab=6)
    z = logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: joint_token_oe_loss(x, labels, mask, 0.5)[0], (z,))
    logits32, labels, mask = case(torch.float32, True, seed=2, vocab=1000)
    a, b = logits32.clone().requires_grad_(True), logits32.clone().requires_grad_(True)
    joint_token_oe_loss(a, labels, mask, 0.5)[0].backward()
    ref = reference(b, labels, mask, 0.5)[0]
    ref.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-8, rtol=1e-5)


def test_bad_input_raises():
    logits, labels, mask = case(torch.float32, True)
    with pytest.raises(ValueError, match="labels must be"):
        joint_token_oe_loss(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="labels must be"):
        joint_token_oe_loss(logits[:3], labels)  # no outlier rows
    with pytest.raises(ValueError, match="1 row"):
        joint_token_oe_loss(logits, labels, torch.tensor([[1] * 5, [0] * 5]).bool())
    logits[4, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/inf"):
        joint_token_oe_loss(logits, labels, mask)


def test_gradient_accumulates_without_touching_the_saved_one():
    logits, labels, mask = case(torch.float64, True, seed=3)
    z = logits.requires_grad_(True)
    loss = joint_token_oe_loss(z, labels, mask, 0.5)[0]
    loss.backward(retain_graph=True)  # d/dloss = 1: the saved gradient is handed over as it is
    once = z.grad.clone()
    loss.backward()
    assert torch.equal(z.grad, 2 * once)


def test_trainer_uses_it_for_language_models_with_the_same_loss_and_gradient(tmp_path, monkeypatch):
    """OETrainer.compute_loss on a causal LM goes through joint_token_oe_loss, and gives the loss and gradient of the
    split path (which a subclass overriding oe_term still takes)."""
    from _oe_tiny import hf_dataset, lm_rows, tiny_gpt2_lm

    import oe_common.training.trainer as trainer_module
    from oe_common.training.trainer import OETrainer, OETrainingArguments

    calls = []
    fused = trainer_module.joint_token_oe_loss
    monkeypatch.setattr(trainer_module, "joint_token_oe_loss", lambda *a, **k: calls.append(1) or fused(*a, **k))

    class Split(OETrainer):
        def oe_term(self, out_logits, out_mask, in_logits, in_mask):
            return super().oe_term(out_logits, out_mask, in_logits, in_mask)

    results = []
    for cls in (OETrainer, Split):
        model = tiny_gpt2_lm()
        args = OETrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, oe_lambda=0.7, report_to="none", use_cpu=True)
        in_rows, out_rows = lm_rows(4, seed=1), lm_rows(4, seed=2, outliers=True)
        trainer = cls(model=model, args=args, train_dataset=hf_dataset(in_rows), outlier_dataset=hf_dataset(out_rows))
        model.train()
        torch.manual_seed(0)
        loss = trainer.compute_loss(model, {k: torch.tensor(v) for k, v in in_rows.items()})
        loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone(), trainer._oe_log_sums.clone()))
    assert len(calls) == 1  # the plain trainer only
    (loss_a, grad_a, logged_a), (loss_b, grad_b, logged_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_a, grad_b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logged_a, logged_b, atol=1e-6, rtol=1e-6)


def test_extreme_logits_stay_finite_and_exact():
    logits, labels, _ = case(torch.float64, False, seed=4, vocab=3)
    logits[0, 0] = torch.tensor([1000.0, 0.0, -1000.0])  # in-distribution row, label may be the tiny class
    logits[3, 0] = torch.tensor([-1000.0, 0.0, 1000.0])  # outlier row
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss = joint_token_oe_loss(a, labels, None, 0.5)[0]
    ref = reference(b, labels, None, 0.5)[0]
    assert torch.isfinite(loss) and loss.item() == pytest.approx(ref.item(), rel=1e-12)
    loss.backward()
    ref.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-14, rtol=0)


# ------------------------------------------------------------------------------------------------ issue 24, item 14
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_no_valid_label_gives_a_finite_loss_and_no_gradient_from_the_in_term(dtype):
    logits, _, mask = case(dtype, True, seed=5)
    labels = torch.full((3, 5), -100)
    z = logits.clone().requires_grad_(True)
    loss, loss_in, loss_oe = joint_token_oe_loss(z, labels, mask, oe_weight=0.5)
    assert loss_in.item() == 0.0 and torch.isfinite(loss) and loss.item() == pytest.approx(0.5 * loss_oe.item(), rel=1e-2)
    loss.backward()
    assert torch.isfinite(z.grad).all() and not z.grad[:3].any()  # the in-distribution rows add nothing
    ref = logits.double().clone().requires_grad_(True)
    (0.5 * oe_uniform_loss(ref[3:], mask)).backward()
    torch.testing.assert_close(z.grad[3:].double(), ref.grad[3:], atol=1e-3, rtol=1e-2)


def test_bfloat16_counts_are_not_rounded():
    """257 valid tokens per term: bfloat16 holds 256 or 258, never 257. With all-zero logits over 8 classes every row's
    loss is log 8 and its softmax exactly 1/8, so the mean and the gradient 1/257 * (1/8 - onehot) are known exactly."""
    n, vocab = 257, 8
    logits = torch.zeros(2, n + 3, vocab, dtype=torch.bfloat16)
    labels = torch.arange(n + 3).remainder(vocab)[None].clone()
    labels[0, n:] = -100
    mask = torch.zeros(1, n + 3, dtype=torch.bool)
    mask[0, :n] = True
    z = logits.requires_grad_(True)
    loss, loss_in, loss_oe = joint_token_oe_loss(z, labels, mask, oe_weight=1.0)
    log8 = torch.tensor(8.0).log().item()
    for value in (loss_in, loss_oe):  # a rounded count: 536 / 256 = 2.094 instead of 2.078 (bf16 of log 8 = 2.0794)
        assert value.item() == pytest.approx(log8, rel=2**-8)
    loss.backward()
    onehot = torch.nn.functional.one_hot(labels[0, :n], vocab).double()
    exact = ((1 / vocab - onehot) / n).to(torch.bfloat16)  # correctly rounded once
    assert torch.equal(z.grad[0, :n], exact)
    assert not z.grad[0, n:].any() and not z.grad[1].any()  # ignored labels; the outlier softmax is exactly uniform
