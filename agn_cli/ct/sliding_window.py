"""Volume inference: the whole volume in one pass when it fits in the patch, else overlapping windows blended
with a Gaussian importance map (centre voxels of a window are more reliable than its borders), optional
mirroring test-time augmentation, bf16 autocast on CUDA.

Memory is bounded by the model-resolution volume: the only volume-sized buffers are the blended class
probabilities (classes x X x Y x Z float32), one weight volume and, on request, one map per attention gate.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of `window` voxels covering `length` with at least `overlap` (0..1) overlap."""
    if window >= length:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((length - window) / step) + 1
    if count == 1:
        return [0]
    span = length - window
    return sorted({round(i * span / (count - 1)) for i in range(count)})


def gaussian_importance(window: Sequence[int], sigma_scale: float = 1.0 / 8, floor: float = 1e-3) -> torch.Tensor:
    """A separable Gaussian (sigma = window * sigma_scale per axis) with maximum 1, never below `floor`."""
    weight = torch.ones((), dtype=torch.float32)
    for n in window:
        coords = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-6)
        g = torch.exp(-0.5 * (coords / sigma) ** 2)
        weight = weight.unsqueeze(-1) * g
    weight = weight / weight.max()
    return weight.clamp_min(floor)


def mirror_axes(tta: bool, spatial_dims: int = 3, axes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Flip combinations of an (N, C, *spatial) tensor: [()] without TTA, else every subset of `axes` (spatial
    indices, all when None), 2**len(axes) passes. Pass only the axes the model was trained to be mirror-invariant
    on: a model that never saw flipped anatomy labels a mirrored scan's left kidney as the right one."""
    if not tta:
        return [()]
    spatial = range(spatial_dims) if axes is None else sorted(set(int(a) for a in axes))
    dims = tuple(2 + a for a in spatial)
    return [combo for r in range(len(dims) + 1) for combo in itertools.combinations(dims, r)]


@dataclass
class VolumePrediction:
    """Blended class probabilities (classes, X, Y, Z) and, on request, attention per gate (X, Y, Z) in [0, 1]."""

    probabilities: torch.Tensor
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
    windows: int = 1
    passes: int = 1


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    volume: np.ndarray | torch.Tensor,
    patch_size: Sequence[int] | None,
    device: torch.device | str = "cpu",
    overlap: float = 0.5,
    batch_size: int = 1,
    tta: bool = False,
    attention: bool = False,
    progress: Callable[[int, int], None] | None = None,
    tta_axes: Sequence[int] | None = None,
) -> VolumePrediction:
    """Softmax probabilities of `model` over a (X, Y, Z) or (C, X, Y, Z) volume, on the CPU, float32.

    The window is the patch clipped to the volume; a volume within the patch is one window (no blending, so
    the result equals a single forward pass). Windows are run `batch_size` at a time.
    `tta` mirrors over `tta_axes` (spatial indices; all when None).
    """
    device = torch.device(device)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    x = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume, dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    shape = tuple(x.shape[1:])
    window = tuple(min(int(p), s) for p, s in zip(patch_size or shape, shape))
    grids = [window_starts(s, w, overlap) for s, w in zip(shape, window)]
    starts = list(itertools.product(*grids))
    flips = mirror_axes(tta, len(shape), tta_axes)
    single = len(starts) == 1
    importance = None if single else gaussian_importance(window)

    probabilities: torch.Tensor | None = None
    weights = None if single else torch.zeros(shape, dtype=torch.float32)
    gates: dict[str, torch.Tensor] = {}
    done = 0
    for first in range(0, len(starts), max(1, batch_size)):
        chunk = starts[first : first + max(1, batch_size)]
        slices = [tuple(slice(s, s + w) for s, w in zip(start, window)) for start in chunk]
        batch = torch.stack([x[(slice(None),) + sl] for sl in slices]).to(device)
        probs_sum: torch.Tensor | None = None
        att_sum: dict[str, torch.Tensor] = {}
        for flip in flips:
            inp = torch.flip(batch, flip) if flip else batch
            with _autocast(device):
                result = model(inp, return_attention=True) if attention else model(inp)
            logits, alphas = (result if attention else (result, {}))
            probs = torch.softmax(logits.float(), dim=1)
            probs = torch.flip(probs, flip) if flip else probs
            probs_sum = probs if probs_sum is None else probs_sum + probs
            for name, alpha in alphas.items():
                a = alpha.float().mean(dim=1, keepdim=True)  # mean over heads
                if tuple(a.shape[2:]) != window:
                    a = F.interpolate(a, size=window, mode="trilinear", align_corners=False)
                a = torch.flip(a, flip) if flip else a
                att_sum[name] = a if name not in att_sum else att_sum[name] + a
        assert probs_sum is not None
        probs_mean = (probs_sum / len(flips)).cpu()
        att_mean = {name: (value / len(flips)).cpu()[:, 0] for name, value in att_sum.items()}
        if probabilities is None:
            probabilities = torch.zeros((probs_mean.shape[1],) + shape, dtype=torch.float32)
        for i, sl in enumerate(slices):
            if single:
                probabilities[(slice(None),) + sl] = probs_mean[i]
                for name, value in att_mean.items():
                    gates.setdefault(name, torch.zeros(shape, dtype=torch.float32))[sl] = value[i]
            else:
                assert importance is not None and weights is not None
                probabilities[(slice(None),) + sl] += probs_mean[i] * importance
                weights[sl] += importance
                for name, value in att_mean.items():
                    gates.setdefault(name, torch.zeros(shape, dtype=torch.float32))[sl] += value[i] * importance
        done += len(chunk)
        if progress is not None:
            progress(done, len(starts))
    assert probabilities is not None
    if weights is not None:
        probabilities /= weights
        for value in gates.values():
            value /= weights
    return VolumePrediction(probabilities, gates, windows=len(starts), passes=len(starts) * len(flips))
