"""oe_common.maths.losses against direct implementations of their formulas, values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from oe_common.maths.losses import confidence_branch_oe_loss, density_margin_loss, energy_oe_loss, oe_uniform_loss, uniform_cross_entropy


def kl_uniform_plus_log_k(logits):
    """Direct formula: KL(U || softmax(z)) + log K, per position."""
    k = logits.shape[-1]
    log_p = F.log_softmax(logits, -1)
    return (1.0 / k * (math.log(1.0 / k) - log_p)).sum(-1) + math.log(k)


def grads(fn, x):
    x = x.clone().requires_grad_(True)
    fn(x).backward()
    return x.grad


def test_oe_uniform_loss_classifier_value_and_gradient():
    z = torch.randn(8, 10, dtype=torch.float64) * 4
    assert oe_uniform_loss(z).item() == pytest.approx(kl_uniform_plus_log_k(z).mean().item(), abs=1e-10)
    assert torch.allclose(grads(oe_uniform_loss, z), grads(lambda x: kl_uniform_plus_log_k(x).mean(), z))
    # minimised by a uniform prediction, where it equals log K
    assert oe_uniform_loss(torch.zeros(2, 10)).item() == pytest.approx(math.log(10), abs=1e-6)
    assert oe_uniform_loss(z).item() > math.log(10)


def test_uniform_cross_entropy_fused_gradient_passes_gradcheck():
    z = (torch.randn(4, 5, 7, dtype=torch.float64) * 3).requires_grad_(True)
    assert torch.autograd.gradcheck(uniform_cross_entropy, (z,))
    assert torch.allclose(uniform_cross_entropy(z), kl_uniform_plus_log_k(z))
    big = torch.tensor([[1000.0, 0.0, -1000.0]], requires_grad=True)  # stable for extreme logits
    uniform_cross_entropy(big).sum().backward()
    assert torch.isfinite(big.grad).all() and torch.allclose(big.grad, torch.tensor([[1 - 1 / 3, -1 / 3, -1 / 3]]))


def test_oe_uniform_loss_lm_with_mask_averages_over_real_tokens():
    z = torch.randn(3, 6, 11, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    expected = kl_uniform_plus_log_k(z)[mask].mean()
    assert oe_uniform_loss(z, mask).item() == pytest.approx(expected.item(), abs=1e-10)
    g = grads(lambda x: oe_uniform_loss(x, mask), z)
    assert torch.all(g[~mask] == 0) and torch.any(g[mask] != 0)
    assert torch.allclose(g, grads(lambda x: kl_uniform_plus_log_k(x)[mask].mean(), z))
    with pytest.raises(ValueError, match="1 row"):
        oe_uniform_loss(z, torch.tensor([[1] * 6, [0] * 6, [1] * 6]).bool())


def test_energy_oe_loss_squared_hinges():
    torch.manual_seed(1)
    zin, zout = torch.randn(5, 4, dtype=torch.float64) * 10, torch.randn(7, 4, dtype=torch.float64) * 10
    m_in, m_out = -5.0, -2.0
    e_in, e_out = -torch.logsumexp(zin, -1), -torch.logsumexp(zout, -1)
    expected = (torch.clamp(e_in - m_in, min=0) ** 2).mean() + (torch.clamp(m_out - e_out, min=0) ** 2).mean()
    assert energy_oe_loss(zin, zout, m_in, m_out).item() == pytest.approx(expected.item(), abs=1e-9)
    # gradient pushes in-distribution energy down (logits up) and outlier energy up
    g_in = grads(lambda x: energy_oe_loss(x, zout, -100.0, -1e9), zin)
    assert (g_in.sum(-1) <= 0).all() and (g_in.sum(-1) < 0).any()
    g_out = grads(lambda x: energy_oe_loss(zin, x, 1e9, 100.0), zout)
    assert (g_out.sum(-1) >= 0).all() and (g_out.sum(-1) > 0).any()


def test_confidence_branch_oe_loss_is_mean_log_sigmoid():
    c = torch.tensor([-3.0, 0.0, 2.0, 20.0], dtype=torch.float64)  # inside the clamp (|c| < logit(1 - 1e-12) = 27.6)
    expected = torch.log(torch.sigmoid(c)).mean()
    assert confidence_branch_oe_loss(c).item() == pytest.approx(expected.item(), abs=1e-12)
    # minimising lowers the confidence logit on outliers
    assert (grads(confidence_branch_oe_loss, c) > 0).all()
    assert torch.isfinite(confidence_branch_oe_loss(torch.tensor([-1000.0])))


def test_density_margin_loss():
    nll_in = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    nll_out = torch.tensor([25.0, 15.0, 29.0], dtype=torch.float64)
    margin = 3.0
    expected = (max(0, 3 + 10 - 25) + max(0, 3 + 20 - 15) + max(0, 3 + 30 - 29)) / 3
    assert density_margin_loss(nll_in, nll_out, margin).item() == pytest.approx(expected)
    g_out = grads(lambda x: density_margin_loss(nll_in, x, margin), nll_out)
    assert g_out.tolist() == pytest.approx([0.0, -1 / 3, -1 / 3])
    with pytest.raises(ValueError, match="same length"):
        density_margin_loss(nll_in, nll_out[:2], margin)
