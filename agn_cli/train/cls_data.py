"""Plane-classification datasets: a folder per class, a CSV (path,label), or the FETAL_PLANES_DB table.

FETAL_PLANES_DB (Burgos-Artizzu et al. 2020) ships `FETAL_PLANES_DB_data.csv`, semicolon-separated with columns
Image_name; Patient_num; Plane; Brain_plane; Operator; US_Machine; Train, and the images as `Images/<name>.png`.
Its `Train` flag is the official split: 1 = training, 0 = test (used here for validation).
Frames are preprocessed once with the inference function `preprocess_frame` (grey, optional crop, resize to
224x288, per-image z-score) and cached as one float16 array.
"""

from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import atomic_path

BACKGROUND_NAMES = ("background", "other")


@dataclass
class ClsDataset:
    kind: str  # "folder" | "csv" | "fetal_planes_db"
    source: Path
    paths: list[Path]
    labels: list[str]
    train_flags: list[bool] | None  # official split when the table has one

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def _frame_files(folder: Path) -> list[Path]:
    from agn_cli.us.frames import DICOM_SUFFIXES, IMAGE_SUFFIXES

    suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def load_cls_dataset(source: str | Path) -> ClsDataset:
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise AgnError(f"dataset not found: {source}")
    if source.is_dir():
        table = source / "FETAL_PLANES_DB_data.csv"
        if table.is_file():
            return _fetal_planes(table)
        paths, labels = [], []
        for sub in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in _frame_files(sub):
                paths.append(f)
                labels.append(sub.name)
        if not paths:
            raise AgnError(f"{source} has no class sub-folders with images; use one folder per class, a CSV or FETAL_PLANES_DB")
        return ClsDataset("folder", source, paths, labels, None)
    text = source.read_text(encoding="utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text.strip() else ""
    if "Image_name" in first and ";" in first:
        return _fetal_planes(source)
    return _csv(source, text)


def _csv(path: Path, text: str) -> ClsDataset:
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise AgnError(f"{path} is empty; write one 'path,label' line per image")
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header and "label" in header:
        ip, il = header.index("path"), header.index("label")
        rows = rows[1:]
    else:
        ip, il = 0, 1
    paths, labels = [], []
    for n, row in enumerate(rows, start=2 if ip or il or header else 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(ip, il):
            raise AgnError(f"{path} line {n}: expected 'path,label'")
        p = Path(row[ip].strip())
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise AgnError(f"{path} line {n}: image {p} not found; fix the path (relative paths start at the CSV's folder)")
        paths.append(p)
        labels.append(row[il].strip())
    if not paths:
        raise AgnError(f"{path} lists no images")
    return ClsDataset("csv", path, paths, labels, None)


def _fetal_planes(table: Path) -> ClsDataset:
    with open(table, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        header = [h.strip() for h in (reader.fieldnames or [])]
        needed = {"Image_name", "Plane", "Train"}
        if not needed <= set(header):
            raise AgnError(f"{table} lacks columns {sorted(needed - set(header))}; expected the FETAL_PLANES_DB table")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    images = table.parent / "Images"
    paths, labels, flags = [], [], []
    for n, row in enumerate(rows, start=2):
        name = row["Image_name"]
        candidates = [images / name, images / f"{name}.png", table.parent / name, table.parent / f"{name}.png"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise AgnError(f"{table} line {n}: image {images / (name + '.png')} not found; keep the Images/ folder beside the table")
        if row["Train"] not in ("0", "1"):
            raise AgnError(f"{table} line {n}: Train must be 0 or 1, got {row['Train']!r}")
        paths.append(path)
        labels.append(row["Plane"])
        flags.append(row["Train"] == "1")
    if not paths:
        raise AgnError(f"{table} lists no images")
    return ClsDataset("fetal_planes_db", table, paths, labels, flags)


def split_items(ds: ClsDataset, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): the table's official split when present, else a seeded per-class split."""
    if ds.train_flags is not None:
        train = [i for i, f in enumerate(ds.train_flags) if f]
        val = [i for i, f in enumerate(ds.train_flags) if not f]
        return train, val
    if not 0.0 <= val_fraction < 1.0:
        raise AgnError(f"--val-fraction {val_fraction} must lie in [0, 1)")
    rnd = random.Random(seed)
    train, val = [], []
    for cls in ds.classes:
        idx = [i for i, label in enumerate(ds.labels) if label == cls]
        rnd.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        val += idx[:n_val]
        train += idx[n_val:]
    if not train:
        raise AgnError("no training images left after the validation split; lower --val-fraction")
    return sorted(train), sorted(val)


def sampling_weights(labels: Sequence[int], num_classes: int, background: int | None, background_weight: float | None) -> np.ndarray:
    """Per-image probabilities: 1/n_c per image of class c (each class equally likely), background class
    weighted `background_weight` / n_background (paper: 13 / n_background, as likely as all planes together)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.zeros(len(labels))
    for c in range(num_classes):
        if counts[c] == 0:
            continue
        total = 1.0
        if background is not None and c == background:
            present = int((counts > 0).sum()) - 1
            total = float(background_weight) if background_weight is not None else float(max(1, present))
        w[labels == c] = total / counts[c]
    return w / w.sum()


def find_background(classes: Sequence[str], name: str | None) -> int | None:
    if name is not None:
        if name.lower() == "none":
            return None
        if name not in classes:
            raise AgnError(f"--background '{name}' is not a class ({', '.join(classes)})")
        return list(classes).index(name)
    for i, c in enumerate(classes):
        if c.lower() in BACKGROUND_NAMES:
            return i
    return None


def cache_frames(
    paths: Sequence[Path], preprocessing: dict[str, Any], cache_dir: Path, on_start: Callable[[int], None] | None = None
) -> Path:
    """Preprocess every frame once into a float16 (N, rows, cols) array; returns its path (reused when unchanged)."""
    from agn_cli.us.frames import read_frames
    from agn_cli.us.preprocess import preprocess_frame

    digest = hashlib.sha1(repr(sorted(preprocessing.items())).encode())
    for p in paths:
        st = p.stat()
        digest.update(f";{p};{st.st_size};{st.st_mtime_ns}".encode())
    target = cache_dir / f"frames-{digest.hexdigest()[:12]}.npy"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    if on_start:
        on_start(len(paths))
    rows, cols = preprocessing["size"]
    out = np.zeros((len(paths), rows, cols), np.float16)
    for i, p in enumerate(paths):
        frame = next(iter(read_frames(p)), None)
        if frame is None:
            raise AgnError(f"{p} holds no frame; remove it from the dataset")
        out[i] = preprocess_frame(frame.image, preprocessing)
    with atomic_path(target, overwrite=True) as tmp:
        np.save(tmp, out)
    return target
