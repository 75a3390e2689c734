"""One dataset validation (`check_case`) behind `agn data check`, `agn train seg` and `agn evaluate seg`, through the
real entry point in a subprocess: truncated files, another grid, non-integer labels, undeclared labels and MSD paths
outside the dataset are refused with exit 2 and one `error:` line, never trained on or scored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from agn_cli.train.toy import write_msd_dataset

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--model", "unet3d", "--base-filters", "2", "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16",
              "--spacing", "4", "--device", "cpu", "--no-progress", "--val-fraction", "0"]


def agn(*args, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "agn_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, notes: bool = False) -> str:
    """Exit 2, no traceback, stderr one `error:` line (after progress notes where `notes`) holding `fragments`."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:] and (notes or len(lines) == 1), proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return write_msd_dataset(tmp_path_factory.mktemp("clean") / "Task99_Toy", n_cases=2, size=(16, 16, 16), seed=5)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_label(path: Path, change) -> None:
    img = sitk.ReadImage(str(path))
    arr = change(sitk.GetArrayFromImage(img))
    out = sitk.GetImageFromArray(arr)
    out.SetSpacing(img.GetSpacing())
    out.SetOrigin(img.GetOrigin())
    sitk.WriteImage(out, str(path))


def _half_label(arr: np.ndarray) -> np.ndarray:
    out = arr.astype(np.float32)
    out[out == 1] = 0.5  # a probability, not a class id (used to be cast to 0 and trained as background)
    return out


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _uncompressed_truncated_label(root: Path) -> Path:
    """toy_001's label as an uncompressed .nii cut short (ITK reads it without a word, zeros for the missing voxels)."""
    label = root / "labelsTr" / "toy_001.nii"
    sitk.WriteImage(sitk.ReadImage(str(root / "labelsTr" / "toy_001.nii.gz")), str(label))
    _truncate(label)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][1]["label"] = "./labelsTr/toy_001.nii"
    (root / "dataset.json").write_text(json.dumps(meta))
    return label


def test_data_check_clean_dataset_exits_0(clean):
    proc = agn("data", "check", clean)
    assert proc.returncode == 0 and "ok: 2 cases checked" in proc.stdout, proc.stderr


def test_data_check_refuses_a_truncated_label_map(clean, tmp_path):
    root = _copy(clean, tmp_path / "d")
    _uncompressed_truncated_label(root)
    assert_one_line_error(agn("data", "check", root), "toy_001.nii", "truncated")


def test_data_check_refuses_non_integer_labels(clean, tmp_path):
    root = _copy(clean, tmp_path / "d")
    _rewrite_label(root / "labelsTr" / "toy_000.nii.gz", _half_label)
    assert_one_line_error(agn("data", "check", root), "toy_000.nii.gz", "non-integer")


@pytest.mark.parametrize("absolute", [False, True])
def test_data_check_refuses_paths_outside_the_dataset(clean, tmp_path, absolute):
    root = _copy(clean, tmp_path / "d")
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "toy_x.nii.gz"
    shutil.copy(root / "imagesTr" / "toy_000.nii.gz", target)  # a readable file: only where it lies is wrong
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["image"] = str(target) if absolute else "./imagesTr/../../elsewhere/toy_x.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    assert_one_line_error(agn("data", "check", root), "training entry 0 points outside")


@pytest.mark.slow
def test_data_check_lists_every_problem_and_exits_2(clean, tmp_path):
    root = _copy(clean, tmp_path / "d")
    _rewrite_label(root / "labelsTr" / "toy_000.nii.gz", lambda a: np.where(a == 2, 7, a).astype(a.dtype))
    _rewrite_label(root / "labelsTr" / "toy_001.nii.gz", _half_label)
    proc = agn("data", "check", root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error:") for line in lines), proc.stderr
    assert "values [7] not in dataset.json" in lines[0] and "non-integer" in lines[1]
    assert lines[2].startswith("error: 2 problems found")


@pytest.mark.slow
def test_train_seg_refuses_non_integer_labels(clean, tmp_path):
    root = _copy(clean, tmp_path / "d")
    _rewrite_label(root / "labelsTr" / "toy_001.nii.gz", _half_label)
    proc = agn("train", "seg", root, "-o", tmp_path / "run", *TINY_TRAIN)
    assert_one_line_error(proc, "toy_001.nii.gz", "non-integer", "agn data check", notes=True)
    assert not (tmp_path / "run" / "latest.safetensors").exists()


@pytest.mark.slow
def test_train_seg_refuses_a_label_on_another_grid(clean, tmp_path):
    root = _copy(clean, tmp_path / "d")
    _rewrite_label(root / "labelsTr" / "toy_000.nii.gz", lambda a: a[:, :, :12].copy())  # used to be resampled silently
    proc = agn("train", "seg", root, "-o", tmp_path / "run", *TINY_TRAIN)
    assert_one_line_error(proc, "toy_000.nii.gz has size (12, 16, 16)", "resample the label", notes=True)
    assert not (tmp_path / "run" / "latest.safetensors").exists()


@pytest.mark.slow
def test_train_seg_refuses_a_path_outside_the_dataset(clean, tmp_path):
    root = _copy(clean, tmp_path / "d")
    shutil.copy(root / "labelsTr" / "toy_001.nii.gz", tmp_path / "outside.nii.gz")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][1]["label"] = "../outside.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    proc = agn("train", "seg", root, "-o", tmp_path / "run", *TINY_TRAIN)
    assert_one_line_error(proc, "points outside", "agn data check", notes=True)
    assert not (tmp_path / "run" / "latest.safetensors").exists()


@pytest.mark.slow
def test_evaluate_seg_refuses_a_truncated_reference(clean, tmp_path):
    label = _uncompressed_truncated_label(_copy(clean, tmp_path / "d"))
    prediction = tmp_path / "pred.nii"
    sitk.WriteImage(sitk.ReadImage(str(clean / "labelsTr" / "toy_001.nii.gz")), str(prediction))
    proc = agn("evaluate", "seg", prediction, label)  # used to score the cut file (zeros for the missing voxels)
    assert_one_line_error(proc, "toy_001.nii", "truncated")
    assert proc.stdout == ""
