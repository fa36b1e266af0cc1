"""oe_common.maths.scores against direct formulas; orientation: higher = more anomalous."""

import math

import pytest
import torch
import torch.nn.functional as F

from oe_common.maths.scores import (
    energy_score,
    max_logit_score,
    msp_score,
    sequence_nll_score,
    sequence_uniform_xent_score,
    token_nll,
    uniform_xent_score,
)

torch.manual_seed(0)
LOGITS = torch.randn(6, 5, dtype=torch.float64) * 3
UNIFORM = torch.zeros(1, 5, dtype=torch.float64)
CONFIDENT = torch.tensor([[20.0, 0, 0, 0, 0]], dtype=torch.float64)


def test_msp_formula_and_orientation():
    expected = -torch.tensor([max(F.softmax(row, -1)).item() for row in LOGITS], dtype=torch.float32)
    assert torch.allclose(msp_score(LOGITS), expected)
    assert msp_score(UNIFORM).item() == pytest.approx(-1 / 5)
    assert msp_score(UNIFORM) > msp_score(CONFIDENT)


def test_uniform_xent_is_minus_cross_entropy_to_uniform():
    log_p = F.log_softmax(LOGITS, -1)
    expected = log_p.mean(-1)  # -H(U, p) = (1/K) sum log p_k
    assert torch.allclose(uniform_xent_score(LOGITS).double(), expected, atol=1e-5)
    kl = (1 / 5 * (math.log(1 / 5) - log_p)).sum(-1)  # KL(U || p)
    assert torch.allclose(uniform_xent_score(LOGITS).double(), -(kl + math.log(5)), atol=1e-5)
    assert uniform_xent_score(UNIFORM).item() == pytest.approx(-math.log(5))
    assert uniform_xent_score(UNIFORM) > uniform_xent_score(CONFIDENT)


def test_max_logit_and_energy():
    assert torch.allclose(max_logit_score(LOGITS), -LOGITS.max(-1).values.float())
    t = 2.5
    assert torch.allclose(energy_score(LOGITS, t).double(), -t * torch.log(torch.exp(LOGITS / t).sum(-1)), atol=1e-5)
    assert energy_score(UNIFORM) > energy_score(CONFIDENT)
    with pytest.raises(ValueError, match="temperature"):
        energy_score(LOGITS, 0)


def test_token_and_sequence_nll():
    logits = torch.randn(3, 4, 7)
    targets = torch.randint(0, 7, (3, 4))
    nll = token_nll(logits, targets)
    assert torch.allclose(nll[1, 2], -F.log_softmax(logits[1, 2], -1)[targets[1, 2]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
    per_seq = sequence_nll_score(logits, targets, mask)
    assert torch.allclose(per_seq[1], nll[1, :2].mean())
    assert torch.allclose(per_seq[2], nll[2, [1, 3]].mean())
    # -100 targets are excluded by default
    targets_ignored = targets.clone()
    targets_ignored[~mask] = -100
    assert torch.allclose(sequence_nll_score(logits, targets_ignored), per_seq)


def test_sequence_uniform_xent_masks_padding():
    logits = torch.randn(2, 5, 9)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = sequence_uniform_xent_score(logits, mask)
    assert torch.allclose(got[0], uniform_xent_score(logits[0, :3]).mean())
    assert torch.allclose(got[1], uniform_xent_score(logits[1]).mean())


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: msp_score(torch.tensor([[0.0, float("nan")]])), "1 NaN/inf"),
        (lambda: msp_score(torch.tensor([[1, 2]])), "floating point"),
        (lambda: sequence_nll_score(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), "does not match"),
        (lambda: sequence_uniform_xent_score(torch.randn(2, 3, 4), torch.tensor([[1, 1, 1], [0, 0, 0]])), "only padding"),
        (lambda: sequence_uniform_xent_score(torch.randn(2, 3, 4), torch.ones(2, 4)), "shape"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_sequence_scores_share_one_pass_and_match_the_single_scores():
    from oe_common.maths.scores import sequence_scores

    logits = torch.randn(3, 6, 11)
    targets = torch.randint(0, 11, (3, 6))
    targets[0, 4:] = -100
    both = sequence_scores(logits, targets, None, ("nll", "uniform_xent"))
    assert torch.allclose(both["nll"], sequence_nll_score(logits, targets))
    mask = targets != -100
    assert torch.allclose(both["uniform_xent"], sequence_uniform_xent_score(logits, mask))
    direct = torch.stack([F.cross_entropy(logits[b][mask[b]], targets[b][mask[b]]) for b in range(3)])
    assert torch.allclose(both["nll"], direct, atol=1e-6)
    with pytest.raises(ValueError, match="needs targets"):
        sequence_scores(logits, None, None, ("nll",))


def test_target_ids_outside_the_vocabulary_are_rejected():
    logits = torch.randn(1, 3, 5)
    with pytest.raises(ValueError, match="outside"):
        token_nll(logits, torch.tensor([[0, 5, 1]]))
    with pytest.raises(ValueError, match="outside"):
        token_nll(logits, torch.tensor([[0, -3, 1]]))


def test_nan_among_large_finite_logits_is_counted_exactly():
    logits = torch.full((2, 4), 3e38)  # the fast finiteness check overflows here; the exact count must decide
    assert torch.isfinite(msp_score(logits)).all()
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/inf"):
        msp_score(logits)
