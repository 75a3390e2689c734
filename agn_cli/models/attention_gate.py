"""Additive grid attention gates (Schlemper, Oktay et al., MedIA 2019, §3.2, Eq. 1-2).

alpha = sigma2(psi^T ReLU(W_x^T x + W_g^T g + b) + b_psi): the gating signal g comes from a coarser scale, the
coefficients are computed on x's (optionally sub-sampled) grid and resampled back to it, so every voxel of x gets its
own weight. One implementation serves 2D (AG-Sononet) and 3D (Attention U-Net).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Normalisation = Literal["sigmoid", "softmax", "range"]
NORMALISATIONS: tuple[str, ...] = ("sigmoid", "softmax", "range")

# sigmoid(3) = 0.953: gates start open (paper §3.2: initialised to pass features at all locations) while the
# sigmoid is not yet saturated, so theta and phi receive useful gradients from the first step.
_SIGMOID_OPEN_BIAS = 3.0
# psi starts with weights this much smaller than PyTorch's default, so the map starts (nearly) spatially constant.
_PSI_WEIGHT_SCALE = 1e-2


def conv_class(dim: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dim]


Norm = Literal["batch", "instance"]
NORMS: tuple[str, ...] = ("batch", "instance")


def norm_layer(kind: str, dim: int, channels: int) -> nn.Module:
    """BatchNorm (the paper's) or InstanceNorm with affine parameters (nnU-Net's choice for small 3D batches).

    InstanceNorm normalises every patch with its own statistics, so inference does not depend on running averages
    collected from a batch of two patches, and a global intensity offset of a scan is partly removed in layer one.
    """
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](channels)
    if kind == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim](channels, affine=True)
    raise ValueError(f"unknown normalisation layer '{kind}'; choose one of {', '.join(NORMS)}")


def interp_mode(dim: int) -> str:
    return {2: "bilinear", 3: "trilinear"}[dim]


def normalise_attention(scores: torch.Tensor, normalisation: str, eps: float = 1e-12) -> torch.Tensor:
    """sigma2 of the paper: sigmoid, spatial softmax, or range normalisation (a - min) / sum(a - min).

    `scores` is (N, 1, *spatial); softmax and range normalisation sum to one over the spatial positions.
    """
    if normalisation == "sigmoid":
        return torch.sigmoid(scores)
    flat = scores.flatten(2)
    if normalisation == "softmax":
        return torch.softmax(flat, dim=-1).view_as(scores)
    if normalisation == "range":
        shifted = flat - flat.amin(dim=-1, keepdim=True)
        return (shifted / shifted.sum(dim=-1, keepdim=True).clamp_min(eps)).view_as(scores)
    raise ValueError(f"unknown attention normalisation '{normalisation}'; choose one of {', '.join(NORMALISATIONS)}")


class GridAttentionGate(nn.Module):
    """One attention head: gated features alpha * x (optionally transformed by W) and the coefficients alpha.

    Args:
        in_channels: channels of the gated features x.
        gating_channels: channels of the gating signal g.
        inter_channels: channels of the intermediate space (F_int).
        dim: 2 or 3.
        sub_sample: stride (and kernel) of theta; 2 in the 3D U-Net, 1 in AG-Sononet.
        normalisation: sigma2 - 'sigmoid', 'softmax' or 'range'.
        output_transform: apply W (1x1 conv + BN) to the gated features, as the U-Net gates do.
        phi_bias: the bias b of Eq. 1 on phi (the U-Net gates have it, the Sononet gates do not).
        norm: 'batch' or 'instance', the normalisation layer of W.
    """

    def __init__(
        self,
        in_channels: int,
        gating_channels: int,
        inter_channels: int | None = None,
        *,
        dim: int = 3,
        sub_sample: int = 2,
        normalisation: Normalisation = "sigmoid",
        output_transform: bool = True,
        phi_bias: bool = True,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown attention normalisation '{normalisation}'; choose one of {', '.join(NORMALISATIONS)}")
        inter_channels = inter_channels or max(in_channels // 2, 1)
        conv = conv_class(dim)
        self.dim = dim
        self.normalisation = normalisation
        self.theta = conv(in_channels, inter_channels, kernel_size=sub_sample, stride=sub_sample, bias=False)
        self.phi = conv(gating_channels, inter_channels, kernel_size=1, bias=phi_bias)
        self.psi = conv(inter_channels, 1, kernel_size=1, bias=True)
        self.output_transform = (
            nn.Sequential(conv(in_channels, in_channels, kernel_size=1), norm_layer(norm, dim, in_channels))
            if output_transform
            else nn.Identity()
        )
        self.reset_gate()

    @torch.no_grad()
    def reset_gate(self) -> None:
        """Open the gate: alpha ~ 0.95 everywhere (sigmoid) or ~uniform (softmax) at initialisation."""
        self.psi.weight.mul_(_PSI_WEIGHT_SCALE)
        nn.init.constant_(self.psi.bias, _SIGMOID_OPEN_BIAS if self.normalisation == "sigmoid" else 0.0)

    def attention(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """alpha on x's grid, shape (N, 1, *x.spatial)."""
        theta_x = self.theta(x)
        phi_g = F.interpolate(self.phi(g), size=theta_x.shape[2:], mode=interp_mode(self.dim), align_corners=False)
        scores = self.psi(F.relu(theta_x + phi_g))
        alpha = normalise_attention(scores, self.normalisation)
        if alpha.shape[2:] != x.shape[2:]:
            alpha = F.interpolate(alpha, size=x.shape[2:], mode=interp_mode(self.dim), align_corners=False)
        return alpha

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.attention(x, g)
        return self.output_transform(alpha * x), alpha


class MultiHeadAttentionGate(nn.Module):
    """Several gate heads on the same skip connection, fused by 1x1 conv + BN + ReLU (paper §3.2).

    Returns the fused gated features and alpha of every head stacked on the channel axis (N, heads, *spatial).
    """

    def __init__(
        self,
        in_channels: int,
        gating_channels: int,
        inter_channels: int | None = None,
        *,
        heads: int = 2,
        dim: int = 3,
        sub_sample: int = 2,
        normalisation: Normalisation = "sigmoid",
        output_transform: bool = True,
        phi_bias: bool = True,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError("an attention gate needs at least one head")
        self.heads = nn.ModuleList(
            GridAttentionGate(
                in_channels,
                gating_channels,
                inter_channels,
                dim=dim,
                sub_sample=sub_sample,
                normalisation=normalisation,
                output_transform=output_transform,
                phi_bias=phi_bias,
                norm=norm,
            )
            for _ in range(heads)
        )
        conv = conv_class(dim)
        self.fuse = (
            nn.Sequential(
                conv(in_channels * heads, in_channels, kernel_size=1), norm_layer(norm, dim, in_channels), nn.ReLU(inplace=True)
            )
            if heads > 1
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gated, alphas = zip(*(head(x, g) for head in self.heads))
        return self.fuse(torch.cat(gated, dim=1)), torch.cat(alphas, dim=1)
