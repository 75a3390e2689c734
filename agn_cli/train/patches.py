"""Patch sampling with foreground oversampling.

A fraction of patches (default 1/3, as nnU-Net does) is centred on a voxel of a randomly chosen foreground class
present in the case, so small organs are seen often enough; the rest are placed uniformly. Foreground voxel
locations are precomputed per class (a bounded random subset) when the case is cached, so sampling never scans
the volume.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_LOCATIONS = 10_000


def foreground_locations(label: np.ndarray, rng: np.random.Generator, max_per_class: int = MAX_LOCATIONS) -> dict[int, np.ndarray]:
    """{class id: (k, 3) int32 voxel indices}, at most `max_per_class` per class, for every class > 0 present."""
    out: dict[int, np.ndarray] = {}
    for c in np.unique(label):
        c = int(c)
        if c == 0:
            continue
        idx = np.argwhere(label == c)
        if len(idx) > max_per_class:
            idx = idx[np.sort(rng.choice(len(idx), max_per_class, replace=False))]
        out[c] = idx.astype(np.int32)
    return out


def choose_patch_origin(
    shape: Sequence[int],
    patch: Sequence[int],
    rng: np.random.Generator,
    locations: dict[int, np.ndarray] | None = None,
    p_foreground: float = 0.33,
) -> tuple[int, ...]:
    """Lower corner of a patch over `shape`; with probability `p_foreground` centred on a foreground voxel.

    On an axis where the volume is shorter than the patch the origin is negative (between shape - patch and 0):
    the volume sits at a random place inside the patch and `extract_patch` pads around it, so a few small cases
    never shrink the patch, and so the context, of every case (nnU-Net pads the same way).
    """
    shape = np.asarray(shape)
    patch = np.asarray(patch)
    lo = np.minimum(shape - patch, 0)  # origin range [lo, hi] on every axis
    hi = np.maximum(shape - patch, 0)
    force_fg = rng.random() < p_foreground
    classes = sorted(locations) if locations else []
    pick_class = int(rng.integers(0, len(classes))) if classes else 0
    pick_voxel = rng.random()
    uniform = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
    if force_fg and classes:
        locs = locations[classes[pick_class]]
        centre = locs[min(int(pick_voxel * len(locs)), len(locs) - 1)]
        origin = np.clip(centre - patch // 2, lo, hi)
    else:
        origin = uniform
    return tuple(int(v) for v in origin)


def extract_patch(array: np.ndarray, origin: Sequence[int], patch: Sequence[int], fill: float = 0) -> np.ndarray:
    """array[..., o0:o0+p0, o1:o1+p1, o2:o2+p2] (leading channel axes kept); voxels outside the array get `fill`."""
    spatial_shape = array.shape[-len(patch):]
    if all(o >= 0 and o + p <= n for o, p, n in zip(origin, patch, spatial_shape)):
        spatial = tuple(slice(o, o + p) for o, p in zip(origin, patch))
        return np.ascontiguousarray(array[(Ellipsis, *spatial)])
    out = np.full(array.shape[: -len(patch)] + tuple(int(p) for p in patch), fill, dtype=array.dtype)
    src, dst = [], []
    for o, p, n in zip(origin, patch, spatial_shape):
        a, b = max(o, 0), min(o + p, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - o, a - o + max(b - a, 0)))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out
