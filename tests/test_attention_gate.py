"""Attention gates: normalisations, grid resampling, initialisation, heads, 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from agn_cli.models import GridAttentionGate, MultiHeadAttentionGate, normalise_attention


def test_sigmoid_normalisation_is_elementwise():
    a = torch.randn(2, 1, 5, 6)
    torch.testing.assert_close(normalise_attention(a, "sigmoid"), torch.sigmoid(a))


def test_softmax_normalisation_sums_to_one_over_space():
    a = torch.randn(2, 1, 5, 6, 7)
    alpha = normalise_attention(a, "softmax")
    torch.testing.assert_close(alpha.flatten(2).sum(-1), torch.ones(2, 1))
    assert alpha.min() > 0


def test_range_normalisation_matches_paper_formula():
    a = torch.randn(3, 1, 4, 5)
    alpha = normalise_attention(a, "range")
    flat = a.flatten(2)
    expected = (flat - flat.min(-1, keepdim=True).values) / (flat - flat.min(-1, keepdim=True).values).sum(-1, keepdim=True)
    torch.testing.assert_close(alpha.flatten(2), expected)
    torch.testing.assert_close(alpha.flatten(2).sum(-1), torch.ones(3, 1))
    # the minimum location gets exactly zero weight
    assert (alpha.flatten(2).min(-1).values == 0).all()


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="normalisation"):
        normalise_attention(torch.zeros(1, 1, 2, 2), "tanh")
    with pytest.raises(ValueError, match="normalisation"):
        GridAttentionGate(4, 8, dim=2, normalisation="tanh")


def test_3d_gate_subsamples_theta_and_resamples_alpha_to_x_grid():
    gate = GridAttentionGate(8, 16, 8, dim=3, sub_sample=2).eval()
    x, g = torch.randn(2, 8, 20, 18, 14), torch.randn(2, 16, 10, 9, 7)
    y, alpha = gate(x, g)
    assert y.shape == x.shape and alpha.shape == (2, 1, 20, 18, 14)
    assert gate.theta.stride == (2, 2, 2) and gate.theta.kernel_size == (2, 2, 2)
    assert gate.theta.bias is None and gate.phi.kernel_size == (1, 1, 1) and gate.psi.out_channels == 1


def test_gate_output_is_alpha_times_x_without_transform():
    gate = GridAttentionGate(4, 6, 5, dim=2, sub_sample=1, output_transform=False)
    x, g = torch.randn(1, 4, 12, 10), torch.randn(1, 6, 3, 3)
    y, alpha = gate(x, g)
    torch.testing.assert_close(y, alpha * x)


def test_gate_matches_equation_one_by_hand():
    torch.manual_seed(3)
    gate = GridAttentionGate(3, 5, 4, dim=2, sub_sample=1, output_transform=False, normalisation="sigmoid")
    with torch.no_grad():
        gate.psi.weight.normal_()
    x, g = torch.randn(1, 3, 6, 6), torch.randn(1, 5, 6, 6)  # same grid: no resampling involved
    _, alpha = gate(x, g)
    wx = torch.einsum("oc,nchw->nohw", gate.theta.weight[:, :, 0, 0], x)
    wg = torch.einsum("oc,nchw->nohw", gate.phi.weight[:, :, 0, 0], g) + gate.phi.bias.view(1, -1, 1, 1)
    q = torch.einsum("oc,nchw->nohw", gate.psi.weight[:, :, 0, 0], torch.relu(wx + wg)) + gate.psi.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(alpha, torch.sigmoid(q))


@pytest.mark.parametrize("dim", [2, 3])
def test_gates_pass_features_everywhere_at_initialisation(dim):
    spatial = (16, 12) if dim == 2 else (16, 12, 8)
    coarse = tuple(s // 2 for s in spatial)
    x, g = torch.randn(2, 8, *spatial), torch.randn(2, 16, *coarse)
    sig = GridAttentionGate(8, 16, 8, dim=dim, sub_sample=2, output_transform=False).eval()
    _, alpha = sig(x, g)
    assert alpha.min() > 0.9
    soft = GridAttentionGate(8, 16, 8, dim=dim, sub_sample=1, normalisation="softmax", output_transform=False)
    _, alpha = soft(x, g)
    n = torch.tensor(spatial).prod()
    assert torch.allclose(alpha * n, torch.ones_like(alpha), rtol=0.05)  # ~uniform: a global average pool


def test_multi_head_gate_fuses_heads_and_stacks_alpha():
    gate = MultiHeadAttentionGate(8, 16, 8, heads=3, dim=3, sub_sample=2)
    y, alpha = gate(torch.randn(1, 8, 12, 12, 12), torch.randn(1, 16, 6, 6, 6))
    assert y.shape == (1, 8, 12, 12, 12) and alpha.shape == (1, 3, 12, 12, 12)
    assert gate.fuse[0].in_channels == 24 and gate.fuse[0].out_channels == 8
    assert (y >= 0).all()  # fused by conv + BN + ReLU
    single = MultiHeadAttentionGate(8, 16, 8, heads=1, dim=3)
    assert isinstance(single.fuse, torch.nn.Identity)
    with pytest.raises(ValueError):
        MultiHeadAttentionGate(8, 16, heads=0)
