"""Segmentation losses: multi-class soft Dice (+ optional cross-entropy) and deep supervision.

Soft Dice per class c: (2 sum(p*g) + s) / (sum(p) + sum(g) + s). With probabilities in [0, 1], 2 sum(p*g) <= sum(p) +
sum(g), so every class term is at most 1 and the loss 1 - mean(Dice) is never negative; the smoothing s sits in both
numerator and denominator so a perfect prediction (and a class absent from both) gives exactly 1, i.e. loss 0.
Background is excluded by default: it dominates CT volumes and would swamp the organ terms.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

DeepSupervision = Literal["aux", "fused", "none"]
DEEP_SUPERVISION_MODES: tuple[str, ...] = ("aux", "fused", "none")


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, *spatial) integer labels -> (N, C, *spatial) float one-hot."""
    oh = F.one_hot(target.long(), num_classes)  # (N, *spatial, C)
    return oh.movedim(-1, 1).to(torch.float32)


def soft_dice_from_probs(
    probs: torch.Tensor, target: torch.Tensor, include_background: bool = False, smooth: float = 1e-5
) -> torch.Tensor:
    """Per-sample, per-class soft Dice (N, C') of probabilities (N, C, *spatial) against integer labels."""
    num_classes = probs.shape[1]
    gt = one_hot(target, num_classes)
    probs = probs.float()
    if not include_background:
        probs, gt = probs[:, 1:], gt[:, 1:]
    dims = tuple(range(2, probs.ndim))
    intersection = (probs * gt).sum(dims)
    denominator = probs.sum(dims) + gt.sum(dims)
    return (2.0 * intersection + smooth) / (denominator + smooth)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, include_background: bool = False, smooth: float = 1e-5
) -> torch.Tensor:
    """1 - mean soft Dice over samples and classes; in [0, 1], 0 for a perfect prediction."""
    if logits.shape[1] < 2 and not include_background:
        raise ValueError("soft Dice without background needs at least 2 classes")
    probs = torch.softmax(logits.float(), dim=1)
    dice = soft_dice_from_probs(probs, target, include_background, smooth)
    return (1.0 - dice.mean()).clamp_min(0.0)


class DiceCELoss(torch.nn.Module):
    """Soft Dice plus (optionally) cross-entropy, each weighted."""

    def __init__(
        self, dice_weight: float = 1.0, ce_weight: float = 1.0, include_background: bool = False, smooth: float = 1e-5
    ) -> None:
        super().__init__()
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.include_background, self.smooth = include_background, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.include_background, self.smooth)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits.float(), target.long())
        return loss


def side_weights(n: int) -> list[float]:
    """Auxiliary weights 1/2^i for side outputs i = 1..n (finest first)."""
    return [0.5 ** (i + 1) for i in range(n)]


def deep_supervision_loss(
    criterion: torch.nn.Module,
    fused: torch.Tensor,
    sides: Sequence[torch.Tensor],
    target: torch.Tensor,
    mode: DeepSupervision = "aux",
) -> torch.Tensor:
    """`aux`: loss(fused) + sum_i loss(side_i) / 2^i (real auxiliary losses); `fused`/`none`: loss(fused) only.

    `fused` is the paper's scheme: the side heads are trained through the 1x1x1 fusion of their logits.
    """
    loss = criterion(fused, target)
    if mode == "aux":
        for weight, side in zip(side_weights(len(sides)), sides):
            loss = loss + weight * criterion(side, target)
    elif mode not in ("fused", "none"):
        raise ValueError(f"unknown deep supervision mode '{mode}'")
    return loss
