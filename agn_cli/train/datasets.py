"""Segmentation datasets in the layouts researchers already have: nnU-Net v2 and the Medical Segmentation Decathlon.

nnU-Net v2: `dataset.json` with `channel_names`, `labels` (name -> id) and `file_ending`; images
`imagesTr/CASE_0000<ending>` (one file per channel), labels `labelsTr/CASE<ending>`. A 2D image ending (`.png`,
`.bmp`, `.tif`, as nnU-Net's natural-image reader) makes a dataset of 2D frames: images read as `agn measure` and
`agn classify` read frames, labels as single-channel integer images on the image's pixel grid.
MSD: `dataset.json` with `modality`, `labels` (id -> name) and a `training` list of {image, label} paths; files whose
names start with `.` or `_` (macOS resource forks shipped in the MSD tarballs) are ignored.

`check_case` is the one validation of an image/label pair (readable and complete files, one grid or one frame size,
integer label ids declared in dataset.json): `agn data check` runs it on every case, `agn train seg` on every case before caching it.
Paths in an MSD `training` list must stay inside the dataset folder.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

import cv2
import numpy as np
import SimpleITK as sitk

from agn_cli.ct.labels import check_label_values, label_array, read_label_map
from agn_cli.ct.volume import read_volume
from agn_cli.errors import AgnError
from agn_cli.runtime.jsonio import read_json_object

# nnU-Net v2's 2D natural-image endings: a dataset with one of these holds 2D frames, not volumes
FRAME_ENDINGS = (".png", ".bmp", ".tif", ".tiff")


@dataclass
class Case:
    case_id: str
    images: list[Path]  # one file per channel
    label: Path


@dataclass
class SegDataset:
    root: Path
    layout: str  # "nnunet" | "msd"
    name: str
    labels: dict[int, str]  # id -> name, 0 = background
    channels: dict[int, str]
    cases: list[Case]
    file_ending: str = ".nii.gz"
    problems: list[str] = field(default_factory=list)  # layout problems found while listing (missing files, ...)

    @property
    def dims(self) -> int:
        """2 for a dataset of frames (PNG, BMP, TIFF), 3 for volumes."""
        return 2 if self.file_ending.lower() in FRAME_ENDINGS else 3

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layout": self.layout,
            "root": str(self.root),
            "cases": len(self.cases),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "channels": {str(k): v for k, v in sorted(self.channels.items())},
            "dims": self.dims,
        }


def _hidden(path: Path) -> bool:
    return path.name.startswith((".", "_"))


def _inside(root: Path, relative: str) -> Path | None:
    """`root / relative` when it stays inside `root` (no absolute paths, no '..' out of it); None otherwise."""
    if Path(relative).is_absolute():
        return None
    path = Path(os.path.normpath(root / relative))
    return path if path != root and path.is_relative_to(root) else None


def _load_json(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise AgnError(f"dataset folder not found: {root}")
    path = root / "dataset.json"
    if not path.is_file():
        raise AgnError(
            f"{path} is missing; a dataset needs dataset.json (nnU-Net v2: channel_names, labels, file_ending; "
            "MSD: modality, labels, training)"
        )
    return read_json_object(path, "dataset file")


def _parse_labels(raw: Any, path: Path, name_to_id: bool) -> dict[int, str]:
    """dataset.json 'labels': nnU-Net v2 maps names to ids, MSD ids to names."""
    if not isinstance(raw, dict) or not raw:
        how = 'names to ids, e.g. {"background": 0, "liver": 1}' if name_to_id else 'ids to names, e.g. {"0": "background", "1": "liver"}'
        raise AgnError(f"{path}: 'labels' must map {how}")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        name, ident = (key, value) if name_to_id else (value, key)
        if isinstance(ident, (list, tuple)):
            raise AgnError(f"{path}: label '{name}' is a region (list of ids); region-based training is not supported, "
                           "give each label a single id")
        try:
            labels[int(ident)] = str(name)
        except (TypeError, ValueError):
            raise AgnError(f"{path}: label '{name}' has id {ident!r}; ids must be integers") from None
    return labels


def _check_label_ids(labels: dict[int, str], path: Path) -> None:
    ids = sorted(labels)
    if 0 not in labels:
        raise AgnError(f"{path}: labels must include background with id 0")
    if ids != list(range(len(ids))):
        raise AgnError(f"{path}: label ids must be consecutive 0..{len(ids) - 1}, found {ids}; renumber the labels")


def _channels(raw: Any) -> dict[int, str]:
    if isinstance(raw, dict) and raw:
        try:
            return {int(k): str(v) for k, v in raw.items()}
        except ValueError:
            pass
    return {0: "CT"}


def load_dataset(root: str | Path) -> SegDataset:
    """Parse dataset.json and list the training cases; missing files are recorded in `problems`."""
    root = Path(root).expanduser().resolve()
    data = _load_json(root)
    json_path = root / "dataset.json"
    problems: list[str] = []
    if "channel_names" in data or "file_ending" in data:
        layout = "nnunet"
        labels = _parse_labels(data.get("labels"), json_path, name_to_id=True)
        channels = _channels(data.get("channel_names"))
        ending = str(data.get("file_ending", ".nii.gz"))
        images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
        if not labels_dir.is_dir():
            raise AgnError(f"{labels_dir} is missing; nnU-Net datasets keep label maps in labelsTr/CASE{ending}")
        cases = []
        for label in sorted(labels_dir.iterdir()):
            if _hidden(label) or not label.name.endswith(ending):
                continue
            case_id = label.name[: -len(ending)]
            images = [images_dir / f"{case_id}_{c:04d}{ending}" for c in sorted(channels)]
            missing = [p for p in images if not p.is_file()]
            if missing:
                problems.append(f"{missing[0]} is missing for label {label}; add the image or remove the label")
                continue
            cases.append(Case(case_id, images, label))
        if images_dir.is_dir():
            known = {c.case_id for c in cases}
            for image in sorted(images_dir.iterdir()):
                if _hidden(image) or not image.name.endswith(ending):
                    continue
                stem = image.name[: -len(ending)]
                case_id = stem.rsplit("_", 1)[0] if "_" in stem else stem
                if not stem[len(case_id) + 1 :].isdigit():
                    problems.append(f"{image} does not follow CASE_0000{ending}; rename it (channel suffix _0000)")
                elif case_id not in known and not (labels_dir / f"{case_id}{ending}").exists():
                    problems.append(f"{image} has no label {labels_dir / (case_id + ending)}; add it or remove the image")
    elif "training" in data:
        layout = "msd"
        labels = _parse_labels(data.get("labels"), json_path, name_to_id=False)
        channels = _channels(data.get("modality"))
        ending = ".nii.gz"
        if not isinstance(data["training"], list):
            raise AgnError(f"{json_path}: 'training' must be a list of {{\"image\": ..., \"label\": ...}}")
        cases = []
        for i, entry in enumerate(data["training"]):
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                problems.append(f"{json_path}: training entry {i} needs 'image' and 'label' paths")
                continue
            image, label = (_inside(root, str(entry[key])) for key in ("image", "label"))
            if image is None or label is None:
                problems.append(
                    f"{json_path}: training entry {i} points outside {root} ({entry['image']}, {entry['label']}); "
                    "give paths relative to the dataset folder, inside it"
                )
                continue
            if _hidden(image) or _hidden(label):
                continue
            missing = [p for p in (image, label) if not p.is_file()]
            if missing:
                problems.append(f"{missing[0]} (training entry {i} in dataset.json) is missing; add it or remove the entry")
                continue
            name = image.name
            cases.append(Case(name[: -len(ending)] if name.endswith(ending) else image.stem, [image], label))
    else:
        raise AgnError(
            f"{json_path} is neither nnU-Net v2 (channel_names, file_ending) nor MSD (training list); "
            "add the missing keys"
        )
    _check_label_ids(labels, json_path)
    if not cases:
        raise AgnError(f"no training cases found in {root}; check imagesTr/labelsTr and dataset.json")
    name = str(data.get("name") or root.name)
    return SegDataset(root, layout, name, labels, channels, cases, ending, problems)


def _geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...], int]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return (
        tuple(reader.GetSize()),
        tuple(reader.GetSpacing()),
        tuple(reader.GetOrigin()),
        tuple(reader.GetDirection()),
        reader.GetNumberOfComponents(),
    )


@dataclass
class CheckReport:
    dataset: SegDataset | None
    errors: list[str]
    warnings: list[str]
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked_cases": self.checked,
            "errors": self.errors,
            "warnings": self.warnings,
            **({"dataset": self.dataset.summary()} if self.dataset else {}),
        }


@dataclass
class CaseCheck:
    """The problems of one case and, when it was read and has none, its image (first channel) and label map:
    SimpleITK images for volumes, arrays for frames (image (rows, cols[, 3]) as `read_frames` gives it, label
    (rows, cols) integers)."""

    problems: list[str]
    image: sitk.Image | np.ndarray | None = None
    label: sitk.Image | np.ndarray | None = None


def read_label_frame(path: Path) -> np.ndarray:
    """A 2D label image (PNG, BMP, TIFF) as (rows, cols) integers, exactly as stored; AgnError naming the fix."""
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    label = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if label is None:
        raise AgnError(f"{path} is not a readable image (corrupt or unsupported); re-export the label")
    if label.ndim == 3:
        raise AgnError(f"{path} has {label.shape[2]} channels; store the label as a single-channel (grey) image of ids")
    if not np.issubdtype(label.dtype, np.integer):
        raise AgnError(f"{path} holds {label.dtype} values; a label image holds integer class ids")
    return label


def _check_frame_case(case: Case, labels: Collection[int], read: bool) -> CaseCheck:
    """`check_case` for frames: readable single-frame images, the label the image's size, declared label ids."""
    from agn_cli.us.frames import FrameReadError, read_frames

    images = []
    try:
        for path in case.images:
            frames = read_frames(path)
            images.append(next(frames).image)
            if next(frames, None) is not None:
                return CaseCheck([f"{path} holds more than one frame; store one 2D image per file"])
        label = read_label_frame(case.label)
    except FrameReadError as exc:
        return CaseCheck([f"{exc}; re-export it"])
    except AgnError as exc:  # the label's own message names the fix
        return CaseCheck([str(exc)])
    problems = [
        f"{case.label} is {label.shape[0]}x{label.shape[1]} pixels but {path} is {image.shape[0]}x{image.shape[1]}; "
        "make the label the image's size (nearest-neighbour resize)"
        for path, image in zip(case.images, images)
        if image.shape[:2] != label.shape
    ]
    if problems:
        return CaseCheck(problems)
    if read:
        try:
            check_label_values(label, labels, str(case.label))
        except AgnError as exc:
            return CaseCheck([str(exc)])
    return CaseCheck([], images[0], label)


def check_case(case: Case, labels: Collection[int], read: bool = True, tolerance: float = 1e-3) -> CaseCheck:
    """Everything that makes a pair unusable for training, one message per problem naming the file and the fix.

    Headers: 3D scalar volumes, the label on the image's grid (size, spacing, origin, direction within
    `tolerance`). With `read` (the default) the files are read whole through `agn_cli.ct` (truncated or corrupt
    files refused) and the label map's values must be integer ids declared in dataset.json; the images read are
    returned so training does not read them twice. `agn data check`, `agn train seg` and their tests use this.
    Frames (2D endings) are always read whole (they have no separate header); `read` then decides the value check.
    """
    if case.label.name.lower().endswith(FRAME_ENDINGS):
        return _check_frame_case(case, labels, read)
    files = [*case.images, case.label]
    try:
        geoms = [_geometry(p) for p in files]
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CaseCheck([f"cannot read a file of case {case.case_id} ({first[:120]}); re-export it"])
    problems: list[str] = []
    for path, (size, _, _, _, comps) in zip(files, geoms):
        if len(size) != 3:
            problems.append(f"{path} is {len(size)}D; training needs 3D volumes (split 4D files into channels _0000, _0001, ...)")
        if comps != 1:
            problems.append(f"{path} has {comps} components per voxel; store scalar volumes")
    label_geom = geoms[-1]
    for path, geom in zip(case.images, geoms[:-1]):
        if geom[0] != label_geom[0]:
            problems.append(f"{case.label} has size {label_geom[0]} but {path} has {geom[0]}; resample the label onto the image grid")
            continue
        for what, i in (("spacing", 1), ("origin", 2), ("direction", 3)):
            diff = float(np.max(np.abs(np.subtract(geom[i], label_geom[i])))) if len(geom[i]) == len(label_geom[i]) else np.inf
            scale = max(1.0, float(np.max(np.abs(geom[i])))) if what == "origin" else 1.0
            if diff > tolerance * scale:
                problems.append(
                    f"{case.label} {what} {tuple(round(v, 4) for v in label_geom[i])} differs from {path} "
                    f"{tuple(round(v, 4) for v in geom[i])}; copy the image geometry into the label"
                )
    if problems or not read:
        return CaseCheck(problems)
    try:
        images = [read_volume(p) for p in case.images]
        label = read_label_map(case.label)
        check_label_values(label_array(label, str(case.label)), labels, str(case.label))
    except AgnError as exc:
        return CaseCheck([str(exc)])
    return CaseCheck([], images[0], label)


def check_dataset(root: str | Path, read_labels: bool = True, tolerance: float = 1e-3) -> CheckReport:
    """Validate the layout, then every case with `check_case` (header checks only when `read_labels` is False)."""
    try:
        ds = load_dataset(root)
    except AgnError as exc:
        return CheckReport(None, [str(exc)], [])
    errors, warnings = list(ds.problems), []
    if len(ds.channels) > 1:
        warnings.append(f"{len(ds.channels)} channels in dataset.json; agn train seg uses single-channel images only")
    data = json.loads((ds.root / "dataset.json").read_text(encoding="utf-8"))
    declared = data.get("numTraining")
    if isinstance(declared, int) and declared != len(ds.cases) + len(ds.problems):
        warnings.append(f"dataset.json says numTraining={declared} but {len(ds.cases)} cases were found; update numTraining")
    for case in ds.cases:
        errors.extend(check_case(case, ds.labels, read_labels, tolerance).problems)
    return CheckReport(ds, errors, warnings, len(ds.cases))


def split_cases(
    case_ids: list[str], val_fraction: float = 0.2, fold: int | None = None, folds: int = 5, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, val) ids: a seeded shuffle, then either fold k of `folds` or the last `val_fraction` as validation.

    Deterministic for the same ids and seed, independent of file-system order.
    """
    ids = sorted(case_ids)
    random.Random(seed).shuffle(ids)
    if fold is not None:
        if folds < 2 or not 0 <= fold < folds:
            raise AgnError(f"--fold {fold} must lie in 0..{folds - 1} (with --folds >= 2)")
        if len(ids) < folds:
            raise AgnError(f"{len(ids)} cases cannot make {folds} folds; lower --folds")
        val = [c for i, c in enumerate(ids) if i % folds == fold]
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise AgnError(f"--val-fraction {val_fraction} must lie in [0, 1)")
        n_val = int(round(len(ids) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(ids) > 1:
            n_val = 1
        val = ids[len(ids) - n_val :] if n_val else []
    val_set = set(val)
    train = [c for c in ids if c not in val_set]
    if not train:
        raise AgnError("no training cases left after the validation split; lower --val-fraction")
    return sorted(train), sorted(val)
