"""Label maps: read through the volume reader (so a truncated or corrupt file is refused, never scored or trained
on) and checked for what makes a label map: integer, non-negative class ids, optionally only the declared ones.

`agn evaluate seg`, `agn data check` and `agn train seg` all read label maps here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import numpy as np
import SimpleITK as sitk

from agn_cli.ct.volume import read_volume
from agn_cli.errors import AgnError


def read_label_map(path: Path | str) -> sitk.Image:
    """A 3D scalar label map (truncation, dimension and NaN checks of `read_volume`), or a one-line AgnError."""
    path = Path(path)
    if not path.exists():
        raise AgnError(f"{path} does not exist")
    if path.is_dir():
        raise AgnError(f"{path} is a folder; give a label map file (.nii.gz, .nrrd, .mha)")
    return read_volume(path)


def label_array(image: sitk.Image, what: str) -> np.ndarray:
    """The (z, y, x) voxel array as integers; AgnError naming `what` for non-integer or negative values."""
    arr = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise AgnError(
                f"{what} has non-integer voxel values; a label map holds integer class ids, not an image or probabilities"
            )
        arr = rounded
    if arr.size and arr.min() < 0:
        raise AgnError(f"{what} has negative labels; label ids must be 0 (background) or positive")
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return np.asarray(arr)


def present_labels(arr: np.ndarray) -> set[int]:
    """Label ids present; bincount is much faster than unique (no sort) for the usual small ids."""
    top = int(arr.max(initial=0))
    if top < 1_000_000:
        return {int(v) for v in np.flatnonzero(np.bincount(arr.ravel(), minlength=1))}
    return {int(v) for v in np.unique(arr)}


def check_label_values(arr: np.ndarray, declared: Collection[int], what: str) -> None:
    """AgnError when `arr` holds ids outside `declared` (a dataset.json's labels)."""
    unknown = sorted(present_labels(arr) - set(declared))
    if unknown:
        raise AgnError(
            f"{what} has values {unknown} not in dataset.json labels {sorted(declared)}; "
            "add them to 'labels' or fix the label map"
        )
