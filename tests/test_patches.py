"""Patch sampling: volumes smaller than the patch are padded, never shrink the patch, and keep every voxel."""

from __future__ import annotations

import numpy as np

from agn_cli.runtime.checkpoint import load_checkpoint
from agn_cli.train.patches import choose_patch_origin, extract_patch
from agn_cli.train.seg_trainer import SegTrainConfig, train_seg
from agn_cli.train.toy import write_msd_dataset


def test_extract_patch_inside_is_the_plain_slice():
    a = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    np.testing.assert_array_equal(extract_patch(a, (1, 2, 3), (4, 5, 5)), a[1:5, 2:7, 3:8])


def test_extract_patch_pads_outside_with_fill_and_keeps_channel_axes():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (C, x, y, z)
    p = extract_patch(a, (-2, 1, 0), (6, 2, 8), fill=-1024)
    assert p.shape == (2, 6, 2, 8)
    np.testing.assert_array_equal(p[:, 2:5, :, :5], a[:, :, 1:3, :])
    assert (p[:, :2] == -1024).all() and (p[:, 5:] == -1024).all() and (p[..., 5:] == -1024).all()


def test_small_axis_origins_keep_the_whole_axis_and_large_axes_stay_inside():
    shape, patch = (40, 30, 12), (32, 32, 20)
    rng = np.random.default_rng(0)
    locs = {1: np.array([[35, 2, 11], [1, 29, 0]], dtype=np.int32)}
    seen_z = set()
    for _ in range(300):
        o = choose_patch_origin(shape, patch, rng, locs, p_foreground=0.5)
        assert 0 <= o[0] <= shape[0] - patch[0]  # longer than the patch: inside
        assert shape[1] - patch[1] <= o[1] <= 0 and shape[2] - patch[2] <= o[2] <= 0  # shorter: fully contained
        seen_z.add(o[2])
    assert seen_z == set(range(shape[2] - patch[2], 1))  # every placement of the short axis occurs
    label = np.ones(shape, np.uint8)
    o = choose_patch_origin(shape, patch, np.random.default_rng(1))
    assert extract_patch(label, o, patch).sum() == 32 * 30 * 12  # all of y and z, 32 of x


def test_trainer_keeps_the_requested_patch_for_small_volumes(tmp_path):
    data = write_msd_dataset(tmp_path / "Task99_Toy", n_cases=2, seed=3)  # 16^3 voxels at 4 mm
    logs: list[str] = []
    cfg = SegTrainConfig(dataset=str(data), output=str(tmp_path / "run"), model="unet3d", base_filters=4, epochs=1,
                         steps_per_epoch=1, batch_size=2, patch=(16, 16, 32), spacing=(4.0, 4.0, 4.0),
                         val_fraction=0.5, device="cpu")
    summary = train_seg(cfg, progress=False, log=logs.append)
    assert summary["patch"] == [16, 16, 32]
    assert load_checkpoint(tmp_path / "run")[1].patch_size == [16, 16, 32]
    assert any("1 of 1 training volumes are smaller than the patch 16x16x32" in line for line in logs)
