"""agn train seg on a tiny synthetic MSD dataset: loss falls, overfitting reaches Dice > 0.9, resume, DDP (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agn_cli.metrics.segmentation import dice_per_class
from agn_cli.runtime.checkpoint import load_checkpoint
from agn_cli.train.augment import AugmentConfig
from agn_cli.train.run_state import read_metrics_csv
from agn_cli.train.seg_trainer import SegTrainConfig, case_probabilities, train_seg
from agn_cli.train.toy import write_msd_dataset
from tests.conftest import assert_same_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    # 32^3 at 2 mm resampled to 4 mm: 16^3 training volumes
    return write_msd_dataset(tmp_path_factory.mktemp("msd") / "Task99_Toy", n_cases=4, seed=1)


def _cfg(msd: Path, out: Path, **kw) -> SegTrainConfig:
    base = dict(
        dataset=str(msd),
        output=str(out),
        model="unet3d",
        base_filters=4,
        epochs=3,
        steps_per_epoch=3,
        batch_size=2,
        patch=(16, 16, 16),
        spacing=(4.0, 4.0, 4.0),
        lr=3e-3,
        val_fraction=0.25,
        device="cpu",
        augment=AugmentConfig(rotation=10, scale=0.1, translation=0.05).to_dict(),
    )
    base.update(kw)
    return SegTrainConfig(**base)


def test_train_seg_loss_falls_and_checkpoint_loads(msd, tmp_path):
    run = tmp_path / "run"
    summary = train_seg(_cfg(msd, run, epochs=3, steps_per_epoch=2), progress=False)
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert "val_dice_bright" in rows[0] and "val_dice_dark" in rows[0]
    for name in ("best.safetensors", "best.json", "latest.safetensors", "latest.json", "latest_state.pt", "config.json"):
        assert (run / name).is_file(), name
    model, card = load_checkpoint(run)  # picks best
    assert card.architecture == "unet3d" and card.task == "segmentation"
    assert card.labels == {0: "background", 1: "bright", 2: "dark"}
    assert card.spacing == [4.0, 4.0, 4.0] and card.patch_size == [16, 16, 16]
    norm = card.normalisation
    assert norm["type"] == "ct" and norm["clip"][0] < norm["mean"] < norm["clip"][1] and norm["std"] > 0
    # foreground of the toy volumes is 60 and 120 HU plus noise: the percentile window brackets them
    assert -1000 < norm["clip"][0] < 60 and 120 < norm["clip"][1] < 200
    assert "Toy" in card.training_data and "3 training / 1 validation" in card.training_data
    assert card.metrics["epoch"] >= 1
    assert card.mirror_axes == []  # trained without flips: agn segment --tta refuses it
    state = torch.load(run / "latest_state.pt", weights_only=True)
    assert state["epoch"] == 3 and set(state) >= {"optimizer", "scheduler", "scaler", "rng", "model"}
    assert summary["patch"] == [16, 16, 16]
    # a run folder is never silently reused
    from agn_cli.errors import AgnError

    with pytest.raises(AgnError, match="--resume"):
        train_seg(_cfg(msd, run), progress=False)


@pytest.mark.slow
def test_overfit_one_case_reaches_dice_09(tmp_path):
    data = write_msd_dataset(tmp_path / "one", n_cases=1, seed=3)
    run = tmp_path / "run"
    cfg = _cfg(
        data, run, epochs=1, steps_per_epoch=50, batch_size=2, val_fraction=0.0, lr=1e-2,
        augment=AugmentConfig.off().to_dict(), deep_supervision="aux", schedule="constant",
    )
    train_seg(cfg, progress=False)
    model, card = load_checkpoint(run)
    from agn_cli.train.cache import load_cached
    from agn_cli.train.datasets import load_dataset

    case = load_dataset(data).cases[0]
    cached = load_cached(case, run / "cache", card.spacing)
    probs = case_probabilities(model, cached.image(), card.normalisation, card.patch_size, torch.device("cpu"))
    dice = dice_per_class(probs.argmax(0).numpy(), np.asarray(cached.label()), [1, 2])
    assert min(dice) > 0.9, dice


def test_instance_norm_run_writes_a_card_that_rebuilds_the_same_network(msd, tmp_path):
    run = tmp_path / "run"
    from agn_cli.errors import AgnError

    with pytest.raises(AgnError, match="pools to 1x1x1"):  # a single voxel has no instance statistics
        train_seg(_cfg(msd, run, model="attention-unet3d", norm="instance"), progress=False)
    assert not run.exists()
    cfg = _cfg(msd, run, model="attention-unet3d", norm="instance", epochs=1, steps_per_epoch=2, patch=(32, 16, 16),
               spacing=(2.0, 2.0, 2.0))  # 32^3 volumes: validation windows of 32x16x16 pool to 2x1x1
    train_seg(cfg, progress=False)
    model, card = load_checkpoint(run / "latest.safetensors")
    assert card.model_kwargs["norm"] == "instance"
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    weights = torch.load(run / "latest_state.pt", weights_only=True)["model"]
    loaded = model.state_dict()
    assert set(weights) == set(loaded)
    for k in weights:
        torch.testing.assert_close(loaded[k], weights[k])


def test_validation_pads_volumes_smaller_than_the_patch_like_training():
    from agn_cli.ct.preprocess import normalise_ct, normalised_background
    from agn_cli.models import create_model

    torch.manual_seed(0)
    net = create_model("attention-unet3d", base_filters=2, num_classes=3, norm="instance").eval()
    # unpadded, this volume pools to one voxel, which InstanceNorm cannot normalise (it used to raise here)
    volume = np.random.default_rng(0).normal(0, 300, size=(10, 12, 8)).astype(np.float32)
    norm = {"type": "ct", "clip": [-500.0, 500.0], "mean": 20.0, "std": 250.0}
    probs = case_probabilities(net, volume, norm, (32, 32, 16), torch.device("cpu"))
    assert probs.shape == (3, 10, 12, 8)
    air = normalised_background(norm)  # -2.08: what training patches and agn segment pad with
    padded = np.pad(normalise_ct(volume, norm), [(0, 22), (0, 20), (0, 8)], constant_values=air)
    with torch.no_grad():
        whole = torch.softmax(net(torch.from_numpy(padded)[None, None]), dim=1)[0]
    torch.testing.assert_close(probs, whole[:, :10, :12, :8])


@pytest.mark.slow
def test_resume_continues_same_epoch_and_stream(msd, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    flips = AugmentConfig(rotation=10, scale=0.1, translation=0.05, flip_axes=(1,)).to_dict()  # y flips: in the stream too
    kw = dict(val_every=10, steps_per_epoch=2, augment=flips)
    train_seg(_cfg(msd, full, **kw), progress=False)
    first = train_seg(_cfg(msd, parts, **kw), progress=False, stop_after=2)  # "interrupted" after epoch 2
    assert first["finished_epoch"] == 2
    state = torch.load(parts / "latest_state.pt", weights_only=True)
    assert state["epoch"] == 2
    second = train_seg(_cfg(msd, parts, **kw), resume=True, progress=False)
    assert second["started_at_epoch"] == 2
    assert load_checkpoint(parts)[1].mirror_axes == [1]  # the card tells --tta which axes it may mirror
    assert_same_run(full, parts, epochs=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(msd, tmp_path):
    """Global batch 2: 2 ranks x 1 sample each == 1 process with 2 micro-batches of 1 (same BN statistics)."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    cfg = _cfg(msd, single, epochs=2, steps_per_epoch=2, accumulate=2, val_every=10, cache_dir=str(tmp_path / "c"),
               patch=(20, 20, 20), spacing=(3.2, 3.2, 3.2))  # 20^3: a 2^3 bottleneck, trainable with 1 sample
    train_seg(cfg, progress=False)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "agn_cli", "train", "seg", str(msd), "-o", str(multi),
        "--model", "unet3d", "--base-filters", "4", "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2",
        "--patch", "20x20x20", "--spacing", "3.2", "--lr", "3e-3", "--val-fraction", "0.25", "--val-every", "10",
        "--device", "cpu", "--rotation", "10", "--scale", "0.1", "--translation", "0.05", "--no-progress",
        "--cache", str(tmp_path / "c"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = [r["train_loss"] for r in read_metrics_csv(single / "metrics.csv")]
    b = [r["train_loss"] for r in read_metrics_csv(multi / "metrics.csv")]
    assert len(a) == len(b) == 2
    np.testing.assert_allclose(b, a, rtol=2e-4)
    config = json.loads((multi / "config.json").read_text())
    assert config["batch_size"] == 2


def test_gpus_relaunch_command_line_and_sharding():
    from agn_cli.train.distributed import shard, strip_gpus_option

    assert strip_gpus_option(["train", "seg", "D", "--gpus", "4", "-o", "R", "--gpus=2"]) == ["train", "seg", "D", "-o", "R"]
    parts = [shard(list(range(10)), r, 3) for r in range(3)]
    assert sum(parts, []) == list(range(10)) and [len(p) for p in parts] == [3, 3, 4]
