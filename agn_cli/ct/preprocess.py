"""CT preprocessing from a model card: canonical orientation, target spacing, intensity window, padding.

Training and inference both go through these functions so a network always sees voxels laid out the same way:

* orientation: `to_canonical` reorients to DICOM "LPS" (array +x towards the patient's Left, +y Posterior,
  +z Superior), i.e. an identity direction matrix for axial scans in SimpleITK's LPS world. It only permutes and
  flips axes (no interpolation), so it is exact and reversible; an oblique residual rotation is kept in the
  direction matrix and handled by resampling in world space.
* spacing: `resample_to_spacing` keeps the field of view (the outer voxel edges stay put), linear interpolation
  for intensities, nearest neighbour for label maps.
* intensities: `normalise_ct` clips to the card's HU window and z-scores with the card's mean and std.

`prepare_ct` returns a `PreparedVolume` that knows how to map model-resolution results back onto the input grid
(`labels_to_input`, `float_to_input`): labels are resampled with nearest neighbour directly into the input's
exact size/spacing/origin/direction, so no full-resolution per-class float volume is ever needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from agn_cli.ct.volume import Geometry, array_xyz, image_from_xyz
from agn_cli.errors import AgnError

CANONICAL_ORIENTATION = "LPS"

AIR_HU = -1024.0  # what CT scanners store outside the reconstructed field of view

# Abdominal soft-tissue window (level 40 HU, width 400 HU); mean/std measured on body voxels (> -500 HU) of the
# TotalSegmentator example CT after clipping to this window (-24.7, 84.4), rounded.
DEFAULT_CT_NORMALISATION: dict[str, Any] = {"type": "ct", "clip": [-160.0, 240.0], "mean": -25.0, "std": 85.0}


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Reorient (permute/flip axes, exact) to LPS: array axes x, y, z point to Left, Posterior, Superior."""
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def resampled_geometry(geometry: Geometry, spacing_xyz: Sequence[float]) -> Geometry:
    """The grid with `spacing_xyz` covering the same field of view (outer edges aligned, rounded up)."""
    spacing = tuple(float(s) for s in spacing_xyz)
    if len(spacing) != len(geometry.size) or min(spacing) <= 0:
        raise AgnError(f"target spacing must be {len(geometry.size)} positive numbers, got {list(spacing_xyz)}")
    size = tuple(max(1, math.ceil(n * s_old / s_new - 1e-6)) for n, s_old, s_new in zip(geometry.size, geometry.spacing, spacing))
    direction = np.asarray(geometry.direction, dtype=float).reshape(len(size), len(size))
    # first voxel centre moves by half the spacing change so the outer edge of voxel 0 stays where it was
    shift = direction @ ((np.asarray(spacing) - np.asarray(geometry.spacing)) / 2.0)
    origin = tuple(float(o) for o in np.asarray(geometry.origin) + shift)
    return Geometry(size, spacing, origin, geometry.direction)


def _minimum(image: sitk.Image) -> float:
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return float(stats.GetMinimum())


def resample_to_geometry(image: sitk.Image, geometry: Geometry, is_label: bool, pixel_type: int | None = None) -> sitk.Image:
    """Resample in world space onto `geometry` (exact copy of its size/spacing/origin/direction).

    Labels: nearest neighbour, outside = 0. Intensities: linear, outside = the image minimum (air for CT), float32.
    """
    if is_label:
        interpolator, default = sitk.sitkNearestNeighbor, 0.0
        out_type = image.GetPixelID() if pixel_type is None else pixel_type
    else:
        interpolator, default = sitk.sitkLinear, _minimum(image)
        out_type = sitk.sitkFloat32 if pixel_type is None else pixel_type
    return sitk.Resample(
        image,
        list(geometry.size),
        sitk.Transform(),
        interpolator,
        geometry.origin,
        geometry.spacing,
        geometry.direction,
        default,
        out_type,
    )


def resample_to_spacing(image: sitk.Image, spacing_xyz: Sequence[float], is_label: bool) -> sitk.Image:
    """Resample to `spacing_xyz` mm over the same field of view (linear for images, nearest for labels)."""
    target = resampled_geometry(Geometry.of(image), spacing_xyz)
    if target.size == tuple(image.GetSize()) and np.allclose(target.spacing, image.GetSpacing(), rtol=0, atol=1e-9):
        return image if is_label else sitk.Cast(image, sitk.sitkFloat32)
    return resample_to_geometry(image, target, is_label)


def normalise_ct(array: np.ndarray, normalisation: dict[str, Any]) -> np.ndarray:
    """float32 copy: clip to the HU window, then (x - mean) / std. Types: "ct", "zscore" (per volume), "none"."""
    kind = (normalisation or {}).get("type", "ct" if normalisation else "none")
    out = np.array(array, dtype=np.float32, copy=True)
    if kind == "none":
        return out
    if kind == "zscore":
        mean, std = float(out.mean()), float(out.std())
    elif kind == "ct":
        clip = normalisation.get("clip")
        if clip is not None:
            lo, hi = float(clip[0]), float(clip[1])
            if not lo < hi:
                raise AgnError(f"normalisation clip window must be [low, high] with low < high, got {clip}")
            np.clip(out, lo, hi, out=out)
        mean, std = float(normalisation.get("mean", 0.0)), float(normalisation.get("std", 1.0))
    else:
        raise AgnError(f"unknown normalisation type '{kind}' in model card; use ct, zscore or none")
    if not std > 0:
        raise AgnError(f"normalisation std must be positive, got {std}")
    out -= mean
    out /= std
    return out


def normalised_background(normalisation: dict[str, Any]) -> float:
    """The normalised value of air (the lower clip bound), used to pad."""
    if (normalisation or {}).get("type", "ct") == "ct" and normalisation and normalisation.get("clip") is not None:
        return (float(normalisation["clip"][0]) - float(normalisation.get("mean", 0.0))) / float(normalisation.get("std", 1.0))
    return 0.0


def pad_to_patch(
    array: np.ndarray, patch: Sequence[int], normalisation: dict[str, Any]
) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Pad the end of every axis shorter than the patch with normalised air (as training patches are padded), so the
    network always sees whole patches; returns the array and the (before, after) padding per axis."""
    pad = tuple((0, max(0, int(p) - n)) for p, n in zip(patch, array.shape))
    if any(after for _, after in pad):
        array = np.pad(array, pad, mode="constant", constant_values=normalised_background(normalisation))
    return array, pad


@dataclass
class PreparedVolume:
    """A CT volume as the network sees it, plus what is needed to map results back onto the input grid."""

    array: np.ndarray  # float32 (x, y, z), normalised, padded to at least the patch size
    input_geometry: Geometry  # the scan as read
    model_geometry: Geometry  # canonical orientation at the card's spacing, before padding
    pad: tuple[tuple[int, int], ...]  # (before, after) voxels added per axis

    def crop(self, array: np.ndarray) -> np.ndarray:
        """Remove the padding from the last three axes of a model-resolution array."""
        index = tuple(slice(before, array.shape[-3 + i] - after) for i, (before, after) in enumerate(self.pad))
        return array[(Ellipsis,) + index]

    def labels_to_input(self, labels_xyz: np.ndarray) -> sitk.Image:
        """uint8 label map on the input's exact grid from an (unpadded) model-resolution label array."""
        model = image_from_xyz(labels_xyz.astype(np.uint8, copy=False), self.model_geometry)
        return resample_to_geometry(model, self.input_geometry, is_label=True, pixel_type=sitk.sitkUInt8)

    def float_to_input(self, values_xyz: np.ndarray) -> sitk.Image:
        """float32 map (e.g. attention) on the input's exact grid, linear interpolation, 0 outside."""
        model = image_from_xyz(values_xyz.astype(np.float32, copy=False), self.model_geometry)
        return sitk.Resample(
            model,
            list(self.input_geometry.size),
            sitk.Transform(),
            sitk.sitkLinear,
            self.input_geometry.origin,
            self.input_geometry.spacing,
            self.input_geometry.direction,
            0.0,
            sitk.sitkFloat32,
        )


def prepare_ct(image: sitk.Image, card: Any) -> PreparedVolume:
    """Canonical orientation, the card's spacing, HU window + z-score, pad to the card's patch size with air."""
    input_geometry = Geometry.of(image)
    canonical = to_canonical(image)
    spacing = getattr(card, "spacing", None)
    if spacing:
        spacing = [float(spacing)] * 3 if isinstance(spacing, (int, float)) else [float(s) for s in spacing]
        resampled = resample_to_spacing(canonical, spacing, is_label=False)
    else:
        resampled = sitk.Cast(canonical, sitk.sitkFloat32)
    del canonical
    model_geometry = Geometry.of(resampled)
    normalisation = getattr(card, "normalisation", None) or {}
    array = normalise_ct(array_xyz(resampled), normalisation)
    del resampled
    array, pad = pad_to_patch(array, getattr(card, "patch_size", None) or [0, 0, 0], normalisation)
    return PreparedVolume(np.ascontiguousarray(array, dtype=np.float32), input_geometry, model_geometry, pad)
