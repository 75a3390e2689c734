"""2D `agn train seg` on frames in the nnU-Net v2 PNG layout: overfitting, resume, the card HeadMeasurer reads, and
`agn data check` on 2D datasets through the real entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from agn_cli.errors import AgnError
from agn_cli.metrics.segmentation import dice_per_class
from agn_cli.runtime.checkpoint import load_checkpoint
from agn_cli.train.augment import AugmentConfig
from agn_cli.train.run_state import read_metrics_csv
from agn_cli.train.seg_trainer import SegTrainConfig, frame_labels, train_seg
from agn_cli.train.toy import write_frame_seg_dataset, write_msd_dataset
from tests.conftest import assert_same_run
from tests.test_train_seg import _free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> Path:
    return write_frame_seg_dataset(tmp_path_factory.mktemp("heads") / "Heads", n_cases=4, shape=(72, 96), seed=1)


def _cfg(data: Path, out: Path, **kw) -> SegTrainConfig:
    base = dict(
        dataset=str(data), output=str(out), model="attention-unet2d", base_filters=4, epochs=3, steps_per_epoch=2,
        batch_size=2, size=(48, 64), patch=(48, 64), lr=3e-3, val_fraction=0.25, device="cpu",
        augment=AugmentConfig(rotation=15, scale=0.1, translation=0.05, flip_axes=(1,), p_gamma=0.3).to_dict(),
    )
    base.update(kw)
    return SegTrainConfig(**base)


def _frame(data: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(str(data / "imagesTr" / f"{case}_0000.png"), cv2.IMREAD_UNCHANGED)
    return image, cv2.imread(str(data / "labelsTr" / f"{case}.png"), cv2.IMREAD_UNCHANGED)


@pytest.mark.slow
def test_overfit_one_frame_reaches_dice_095(tmp_path):
    data = write_frame_seg_dataset(tmp_path / "one", n_cases=1, shape=(72, 96), seed=3)
    run = tmp_path / "run"
    cfg = _cfg(data, run, epochs=1, steps_per_epoch=60, val_fraction=0.0, lr=3e-3, schedule="constant",
               augment=AugmentConfig.off().to_dict())  # 72x96 frames trained at 48x64, scored back at 72x96
    train_seg(cfg, progress=False)
    model, card = load_checkpoint(run)
    image, label = _frame(data, "head_000")
    pred = frame_labels(model, image, card.preprocessing, torch.device("cpu"))  # at the frame's own 72x96
    assert pred.shape == label.shape == (72, 96)
    assert dice_per_class(pred, label, [1])[0] > 0.95


@pytest.mark.slow
def test_2d_card_and_head_measurer(heads, tmp_path):
    run = tmp_path / "run"
    summary = train_seg(_cfg(heads, run, epochs=1), progress=False)
    rows = read_metrics_csv(run / "metrics.csv")
    assert 0.0 <= rows[0]["val_dice_head"] <= 1.0  # validation ran on the held-out frame
    model, card = load_checkpoint(run / "latest.safetensors")
    assert card.architecture == "attention-unet2d" and card.task == "segmentation"
    assert card.labels == {0: "background", 1: "head"} and card.spacing is None
    assert card.preprocessing == {"grey": "mean", "interpolation": "area", "zscore": True, "size": [48, 64]}
    assert card.patch_size == [48, 64] and card.mirror_axes == [1]
    assert "3 training / 1 validation frames" in card.training_data
    assert summary["preprocessing"]["size"] == [48, 64]
    # the cache holds the frames exactly as preprocess_frame gives them to the network
    from agn_cli.train.cache import load_cached
    from agn_cli.train.datasets import load_dataset
    from agn_cli.us.preprocess import preprocess_frame

    case = next(c for c in load_dataset(heads).cases if any((run / "cache").glob(f"{c.case_id}-*_img.npy")))
    cached = load_cached(case, run / "cache", card.preprocessing)
    image, label = _frame(heads, case.case_id)
    np.testing.assert_array_equal(cached.image(), preprocess_frame(image, card.preprocessing, crop="none"))
    assert cached.label().shape == (48, 64) and set(np.unique(cached.label())) == {0, 1}
    # agn measure's HeadMeasurer takes the run's card and answers at the frame's size
    from agn_cli.us.frames import Frame
    from agn_cli.us.measure import HeadMeasurer

    measurer = HeadMeasurer(run / "latest.safetensors", fast=False)
    result = measurer.measure_batch([Frame(Path("f.png"), 0, image)], [0.1])[0]
    assert result.mask.shape == (72, 96)
    assert np.array_equal(result.mask.any(), frame_labels(model, image, card.preprocessing, torch.device("cpu")).any())


@pytest.mark.slow
def test_resume_2d_continues_same_epoch_and_stream(heads, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    kw = dict(val_every=10, patch=(32, 48))  # random 32x48 patches of the 48x64 frames: patch sampling in the stream
    train_seg(_cfg(heads, full, **kw), progress=False)
    first = train_seg(_cfg(heads, parts, **kw), progress=False, stop_after=2)
    assert first["finished_epoch"] == 2
    second = train_seg(_cfg(heads, parts, **kw), resume=True, progress=False)
    assert second["started_at_epoch"] == 2
    assert_same_run(full, parts, epochs=3)
    assert load_checkpoint(parts)[1].patch_size == [48, 64]  # inference runs on the whole resized frame


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_2d(heads, tmp_path):
    """torchrun with 2 CPU ranks x 1 frame == 1 process with 2 micro-batches of 1; --val-dataset under DDP."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    val = write_frame_seg_dataset(tmp_path / "val", n_cases=3, shape=(72, 96), seed=9)
    augment = AugmentConfig(rotation=15, scale=0.1, translation=0.05, flip_axes=(1,), intensity_scale=0.1,
                            intensity_shift=0.1, noise_std=0.05).to_dict()
    train_seg(_cfg(heads, single, epochs=2, accumulate=2, val_dataset=str(val), cache_dir=str(tmp_path / "c"),
                   augment=augment), progress=False)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "agn_cli", "train", "seg", str(heads), "-o", str(multi),
        "--model", "attention-unet2d", "--base-filters", "4", "--size", "48x64", "--epochs", "2",
        "--steps-per-epoch", "2", "--batch-size", "2", "--lr", "3e-3", "--val-dataset", str(val), "--device", "cpu",
        "--rotation", "15", "--scale", "0.1", "--translation", "0.05", "--flip", "x", "--no-progress",
        "--cache", str(tmp_path / "c"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_metrics_csv(single / "metrics.csv"), read_metrics_csv(multi / "metrics.csv")
    assert len(a) == len(b) == 2
    np.testing.assert_allclose([r["train_loss"] for r in b], [r["train_loss"] for r in a], rtol=2e-4)
    assert 0.0 <= b[-1]["val_dice_head"] <= 1.0  # the 3 validation frames were shared out over the ranks
    assert "3 validation frames, validation on --val-dataset ToyHeads" in load_checkpoint(multi)[1].training_data


def test_2d_settings_are_checked_before_training(heads, tmp_path):
    with pytest.raises(AgnError, match="larger than --size"):
        train_seg(_cfg(heads, tmp_path / "a", patch=(64, 64)), progress=False)
    with pytest.raises(AgnError, match="needs --size"):
        train_seg(_cfg(heads, tmp_path / "b", size=None), progress=False)
    with pytest.raises(AgnError, match="ROWSxCOLS"):
        train_seg(_cfg(heads, tmp_path / "c", patch=(16, 16, 16)), progress=False)
    with pytest.raises(AgnError, match="axis a 2D patch does not have"):
        train_seg(_cfg(heads, tmp_path / "d", augment=AugmentConfig(flip_axes=(2,)).to_dict()), progress=False)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_model_and_dataset_dimensions_must_agree(heads, tmp_path):
    volumes = write_msd_dataset(tmp_path / "msd", n_cases=2, size=(12, 12, 12))
    with pytest.raises(AgnError, match=r"holds 3D volumes \(\.nii\.gz\) but attention-unet2d is a 2D network; use --model"):
        train_seg(_cfg(volumes, tmp_path / "a"), progress=False)
    with pytest.raises(AgnError, match=r"holds 2D frames \(\.png\) but unet3d is a 3D network; use --model unet2d or"):
        train_seg(_cfg(heads, tmp_path / "b", model="unet3d", patch=(16, 16, 16)), progress=False)


def test_cli_flip_names_frame_axes():
    from agn_cli.runtime.parsing import parse_axes

    assert parse_axes("x", frames=True) == (1,) and parse_axes("x,y", frames=True) == (0, 1) and parse_axes("x") == (0,)
    with pytest.raises(AgnError, match="x \\(left-right\\) and y"):
        parse_axes("z", frames=True)


# ---- agn data check on 2D datasets, through the real entry point


def _data_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agn_cli", "data", "check", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.slow
def test_data_check_2d(heads, tmp_path):
    ok = _data_check(heads)
    assert ok.returncode == 0, ok.stderr
    assert "nnunet layout, 4 cases, labels 0=background, 1=head" in ok.stdout and "ok: 4 cases checked" in ok.stdout

    hc18_style = shutil.copytree(heads, tmp_path / "mask255")  # an HC18 mask written as 0/255, not converted
    _, label = _frame(hc18_style, "head_002")
    cv2.imwrite(str(hc18_style / "labelsTr" / "head_002.png"), label * 255)
    line = _one_error(_data_check(hc18_style))
    assert "head_002.png has values [255] not in dataset.json labels [0, 1]" in line

    missing = shutil.copytree(heads, tmp_path / "missing")
    (missing / "imagesTr" / "head_001_0000.png").unlink()
    line = _one_error(_data_check(missing))
    assert "head_001_0000.png is missing for label" in line

    sizes = shutil.copytree(heads, tmp_path / "sizes")
    cv2.imwrite(str(sizes / "labelsTr" / "head_003.png"), np.zeros((72, 95), np.uint8))
    line = _one_error(_data_check(sizes))
    assert "head_003.png is 72x95 pixels but" in line and "head_003_0000.png is 72x96" in line
