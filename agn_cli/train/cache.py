"""Preprocessed training arrays, computed once and cached as .npy per case.

Each case goes through the same functions inference uses (`to_canonical`, `resample_to_spacing`, `array_xyz`), then
its resampled HU array, label array, foreground locations and a random sample of foreground intensities are stored.
A 2D frame goes through `preprocess_frame` with the model card's `preprocessing` (grey, resize to the network input,
z-score), as `agn measure` prepares frames, and its label is resized by nearest neighbour (pixel centres aligned).
The CT normalisation (clip to the 0.5/99.5 percentiles of foreground voxels, z-score with the clipped foreground
mean/std) is computed over the training cases only and applied per patch with `normalise_ct`, exactly as
`agn segment` applies it to whole volumes. Entries are keyed by file size, mtime and spacing (or preprocessing), so an
edited case is redone; writes are atomic, so a killed run never leaves a half-written array behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence, Union

import numpy as np

from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import atomic_path
from agn_cli.train.datasets import Case, check_case
from agn_cli.train.patches import foreground_locations

CACHE_VERSION = 2  # 2: entries are made only from pairs that pass check_case
FG_SAMPLES_PER_CASE = 100_000


@dataclass
class CachedCase:
    case_id: str
    image_path: Path  # float32 (x, y, z) HU after resampling; frames: float32 (rows, cols), normalised
    label_path: Path  # uint8 (x, y, z); frames (rows, cols)
    locations_path: Path  # npz: class id -> (k, dims) foreground voxels
    fg_values_path: Path  # float32 sample of foreground intensities
    shape: tuple[int, ...]

    def image(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.image_path, mmap_mode="r" if mmap else None)

    def label(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.label_path, mmap_mode="r" if mmap else None)

    def locations(self) -> dict[int, np.ndarray]:
        with np.load(self.locations_path) as data:
            return {int(k): data[k] for k in data.files}


Settings = Union[Sequence[float], dict]  # target spacing (volumes) or the card's preprocessing (frames)


def _key(case: Case, settings: Settings) -> str:
    digest = hashlib.sha1()
    if isinstance(settings, dict):
        digest.update(f"v{CACHE_VERSION};{json.dumps(settings, sort_keys=True)}".encode())
    else:
        digest.update(f"v{CACHE_VERSION};{[round(float(s), 6) for s in settings]}".encode())
    for path in [*case.images, case.label]:
        st = path.stat()
        digest.update(f";{path.resolve()};{st.st_size};{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def _paths(cache_dir: Path, case: Case, key: str) -> dict[str, Path]:
    stem = cache_dir / f"{case.case_id}-{key}"
    return {
        "image": stem.with_name(stem.name + "_img.npy"),
        "label": stem.with_name(stem.name + "_lab.npy"),
        "locations": stem.with_name(stem.name + "_loc.npz"),
        "fg": stem.with_name(stem.name + "_fg.npy"),
        "meta": stem.with_name(stem.name + ".json"),
    }


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        np.save(tmp, array)


def preprocess_case(case: Case, spacing: Sequence[float], labels: Collection[int], seed: int = 0) -> dict[str, np.ndarray]:
    """`check_case` (a pair `agn data check` rejects is refused, never resampled or cast into shape), then canonical
    orientation and target spacing through the inference functions; arrays in (x, y, z)."""
    from agn_cli.ct.preprocess import resample_to_geometry, resample_to_spacing, to_canonical
    from agn_cli.ct.volume import Geometry, array_xyz

    if len(case.images) != 1:
        raise AgnError(f"case {case.case_id} has {len(case.images)} channels; agn train seg supports single-channel CT")
    checked = check_case(case, labels)
    if checked.problems:
        raise AgnError(f"{checked.problems[0]} (run 'agn data check' on the dataset for all problems)")
    image = resample_to_spacing(to_canonical(checked.image), spacing, is_label=False)
    # the label goes onto the image's resampled grid (the grids agree within check_case's tolerance)
    label = resample_to_geometry(to_canonical(checked.label), Geometry.of(image), is_label=True)
    img = np.ascontiguousarray(array_xyz(image), dtype=np.float32)
    lab = np.ascontiguousarray(array_xyz(label), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    fg = img[lab > 0]
    if fg.size > FG_SAMPLES_PER_CASE:
        fg = rng.choice(fg, FG_SAMPLES_PER_CASE, replace=False)
    return {"image": img, "label": lab, "fg": fg.astype(np.float32), "locations": foreground_locations(lab, rng)}


def preprocess_frame_case(case: Case, preprocessing: dict, labels: Collection[int], seed: int = 0) -> dict[str, np.ndarray]:
    """`check_case`, then the frame through `preprocess_frame` (what inference does) and the label resized to the same
    (rows, cols) by nearest neighbour with pixel centres aligned (cv2.INTER_NEAREST_EXACT; plain INTER_NEAREST is
    shifted by up to one source pixel)."""
    import cv2

    from agn_cli.us.preprocess import preprocess_frame

    if len(case.images) != 1:
        raise AgnError(f"case {case.case_id} has {len(case.images)} channels; agn train seg supports single-channel images")
    checked = check_case(case, labels)
    if checked.problems:
        raise AgnError(f"{checked.problems[0]} (run 'agn data check' on the dataset for all problems)")
    img = preprocess_frame(checked.image, preprocessing, crop="none")
    label = np.asarray(checked.label)
    if label.max(initial=0) > 255:
        raise AgnError(f"{case.label} has label ids above 255; agn train seg stores at most 256 classes")
    rows, cols = img.shape
    lab = cv2.resize(label.astype(np.uint8), (cols, rows), interpolation=cv2.INTER_NEAREST_EXACT)
    rng = np.random.default_rng(seed)
    return {"image": img, "label": lab, "fg": np.zeros(0, np.float32), "locations": foreground_locations(lab, rng)}


def cache_cases(
    cases: Sequence[Case],
    cache_dir: Path,
    spacing: Settings,
    labels: Collection[int],
    rank: int = 0,
    world_size: int = 1,
    on_case: Callable[[str], None] | None = None,
) -> list[CachedCase]:
    """Preprocess what is not cached yet (cases shared out across ranks) and return every case's entry.

    `spacing`: the target spacing of volumes, or for frames the card's `preprocessing` dict.
    Callers under DDP must barrier between this call on all ranks and using the entries; `load_cached` re-reads.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        if i % world_size != rank:
            continue
        key = _key(case, spacing)
        paths = _paths(cache_dir, case, key)
        if paths["meta"].is_file():
            continue
        if on_case:
            on_case(case.case_id)
        if isinstance(spacing, dict):
            arrays = preprocess_frame_case(case, spacing, labels, seed=i)
        else:
            arrays = preprocess_case(case, spacing, labels, seed=i)
        _save_npy(paths["image"], arrays["image"])
        _save_npy(paths["label"], arrays["label"])
        _save_npy(paths["fg"], arrays["fg"])
        with atomic_path(paths["locations"], overwrite=True) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{str(k): v for k, v in arrays["locations"].items()})
        settings = spacing if isinstance(spacing, dict) else list(spacing)
        meta = {"case_id": case.case_id, "shape": list(arrays["image"].shape), "spacing": settings, "version": CACHE_VERSION}
        with atomic_path(paths["meta"], overwrite=True) as tmp:  # written last: marks the entry complete
            tmp.write_text(json.dumps(meta), encoding="utf-8")
    return [load_cached(case, cache_dir, spacing) for case in cases] if world_size == 1 else []


def load_cached(case: Case, cache_dir: Path, spacing: Settings) -> CachedCase:
    key = _key(case, spacing)
    paths = _paths(cache_dir, case, key)
    try:
        meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AgnError(f"cache entry for {case.case_id} in {cache_dir} is missing or corrupt; delete the folder and rerun") from exc
    return CachedCase(case.case_id, paths["image"], paths["label"], paths["locations"], paths["fg"], tuple(meta["shape"]))


def foreground_normalisation(cases: Sequence[CachedCase], low: float = 0.5, high: float = 99.5) -> dict:
    """The model card's CT normalisation from the training set's foreground voxels."""
    samples = [np.load(c.fg_values_path) for c in cases]
    values = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    if values.size == 0:
        raise AgnError("no foreground voxels in the training labels; check that labelsTr holds the organ masks")
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not hi > lo:
        hi = lo + 1.0
    clipped = np.clip(values, lo, hi)
    std = float(clipped.std())
    return {
        "type": "ct",
        "clip": [lo, hi],
        "mean": float(clipped.mean()),
        "std": std if std > 1e-6 else 1.0,
        "percentiles": [low, high],
        "source": f"foreground voxels of {len(cases)} training cases",
    }
