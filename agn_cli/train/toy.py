"""Tiny synthetic datasets (CT-like volumes with blob organs, ultrasound-like frames) for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def blob_case(rng: np.random.Generator, size: Sequence[int] = (32, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(image HU, label) in (x, y, z) order: a body ellipse with a bright sphere (1) and a darker ellipsoid (2)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size], indexing="ij"))
    centre = np.asarray(size, dtype=np.float32)[:, None, None, None] / 2
    body = (((grid - centre) / (np.asarray(size)[:, None, None, None] * 0.45)) ** 2).sum(0) <= 1
    image = np.where(body, 0.0, -1000.0).astype(np.float32)
    label = np.zeros(size, np.uint8)
    for cls, hu, radius in ((1, 120.0, 0.17), (2, 60.0, 0.12)):
        r = np.asarray(size, dtype=np.float32) * radius * rng.uniform(0.85, 1.15, 3)
        c = np.asarray(size) * rng.uniform(0.3, 0.7, 3)
        mask = (((grid - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) <= 1
        label[mask] = cls
        image[mask] = hu
    image += rng.normal(0, 15, size).astype(np.float32)
    return image, label


def _write(array_xyz: np.ndarray, path: Path, spacing: Sequence[float]) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    sitk.WriteImage(image, str(path))


def _write_cases(root: Path, n_cases: int, size: Sequence[int], spacing: Sequence[float], seed: int,
                 channel_suffix: str) -> list[str]:
    """Blob cases toy_000, toy_001, ... as imagesTr/<case><channel_suffix>.nii.gz and labelsTr/<case>.nii.gz."""
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"toy_{i:03d}" for i in range(n_cases)]
    for name in names:
        image, label = blob_case(rng, size)
        _write(image, root / "imagesTr" / f"{name}{channel_suffix}.nii.gz", spacing)
        _write(label, root / "labelsTr" / f"{name}.nii.gz", spacing)
    return names


def write_msd_dataset(
    root: Path, n_cases: int = 4, size: Sequence[int] = (32, 32, 32), spacing: Sequence[float] = (2.0, 2.0, 2.0), seed: int = 0
) -> Path:
    """Medical Segmentation Decathlon layout (with a macOS `._` file that must be ignored)."""
    root = Path(root)
    names = _write_cases(root, n_cases, size, spacing, seed, "")
    (root / "imagesTr" / "._toy_000.nii.gz").write_bytes(b"\x00resource fork")
    meta = {
        "name": "Toy",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "bright", "2": "dark"},
        "numTraining": n_cases,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root


def _write_nnunet(root: Path, cases, write, ending: str, channel: str, labels: dict[str, int], name: str | None = None) -> Path:
    """nnU-Net v2 layout from (case id, image, label) triples: imagesTr/CASE_0000<ending>, labelsTr/CASE<ending>."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    n = 0
    for case_id, image, label in cases:
        write(image, root / "imagesTr" / f"{case_id}_0000{ending}")
        write(label, root / "labelsTr" / f"{case_id}{ending}")
        n += 1
    meta = {**({"name": name} if name else {}), "channel_names": {"0": channel}, "labels": labels, "numTraining": n,
            "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root


def write_nnunet_dataset(
    root: Path, n_cases: int = 3, size: Sequence[int] = (32, 32, 32), spacing: Sequence[float] = (2.0, 2.0, 2.0), seed: int = 0
) -> Path:
    """nnU-Net v2 layout: imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, labels name -> id."""
    rng = np.random.default_rng(seed)
    cases = ((f"toy_{i:03d}", *blob_case(rng, size)) for i in range(n_cases))
    return _write_nnunet(root, cases, lambda a, path: _write(a, path, spacing), ".nii.gz", "CT",
                         {"background": 0, "bright": 1, "dark": 2})


def toy_frame(rng: np.random.Generator, cls: int, shape: Sequence[int] = (60, 80)) -> np.ndarray:
    """uint8 grey frame: class 0 speckle only, 1 a bright disc, 2 a bright horizontal bar, 3 a vertical bar."""
    rows, cols = shape
    frame = rng.normal(60, 20, (rows, cols))
    yy, xx = np.mgrid[:rows, :cols]
    cy, cx = rng.uniform(0.35, 0.65) * rows, rng.uniform(0.35, 0.65) * cols
    if cls == 1:
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.2 * rows) ** 2] += 120
    elif cls == 2:
        frame[(abs(yy - cy) < 0.08 * rows) & (abs(xx - cx) < 0.35 * cols)] += 120
    elif cls == 3:
        frame[(abs(xx - cx) < 0.06 * cols) & (abs(yy - cy) < 0.35 * rows)] += 120
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_frame_folders(root: Path, classes: Sequence[str] = ("Other", "disc", "hbar"), per_class: int = 6, seed: int = 0) -> Path:
    """A folder per class of PNG frames."""
    import cv2

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(Path(root) / name / f"{name}_{i}.png"), toy_frame(rng, c))
    return Path(root)


def write_fetal_planes_db(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """A miniature FETAL_PLANES_DB: semicolon table with the official Train flag and Images/<name>.png."""
    import cv2

    rng = np.random.default_rng(seed)
    (Path(root) / "Images").mkdir(parents=True, exist_ok=True)
    lines = ["Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train "]
    planes = ("Other", "Fetal brain", "Fetal femur")
    k = 0
    for c, plane in enumerate(planes):
        for i in range(per_class):
            name = f"Patient{k:05d}_Plane{c}_1_of_1"
            cv2.imwrite(str(Path(root) / "Images" / f"{name}.png"), toy_frame(rng, c))
            brain = "Trans-thalamic" if plane == "Fetal brain" else "Not A Brain"
            lines.append(f"{name};{k};{plane};{brain};Op. 1;Voluson E6;{1 if i < per_class - 1 else 0}")
            k += 1
    (Path(root) / "FETAL_PLANES_DB_data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(root)


def head_frame(rng: np.random.Generator, shape: Sequence[int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 grey frame, uint8 label 0/1): a bright-rimmed filled ellipse ('head') at a random place, size and angle
    on speckle-like noise, as a stand-in for an HC18 frame and its head mask."""
    import cv2

    rows, cols = shape
    frame = rng.normal(50, 18, (rows, cols))
    label = np.zeros((rows, cols), np.uint8)
    centre = (int(cols * rng.uniform(0.4, 0.6)), int(rows * rng.uniform(0.4, 0.6)))
    axes = (int(cols * rng.uniform(0.22, 0.3)), int(rows * rng.uniform(0.22, 0.3)))
    angle = float(rng.uniform(-30, 30))
    cv2.ellipse(label, centre, axes, angle, 0, 360, 1, thickness=-1)
    rim = np.zeros_like(label)
    cv2.ellipse(rim, centre, axes, angle, 0, 360, 1, thickness=max(2, rows // 24))
    frame[label > 0] += 25
    frame[rim > 0] += 110
    return np.clip(frame, 0, 255).astype(np.uint8), label


def write_frame_seg_dataset(root: Path, n_cases: int = 3, shape: Sequence[int] = (96, 128), seed: int = 0) -> Path:
    """nnU-Net v2 2D layout: imagesTr/CASE_0000.png, labelsTr/CASE.png (ids 0/1), `file_ending` .png."""
    import cv2

    rng = np.random.default_rng(seed)
    cases = ((f"head_{i:03d}", *head_frame(rng, shape)) for i in range(n_cases))
    return _write_nnunet(root, cases, lambda a, path: cv2.imwrite(str(path), a), ".png", "US",
                         {"background": 0, "head": 1}, name="ToyHeads")
