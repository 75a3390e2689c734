"""Sizes that cannot work are refused in one line before any allocation (issue 15, item 10): `agn bench --size`
too small for the network or needing more memory than the machine has, and `agn localise --gt` masks whose size
differs from their frames (boxes are compared in frame pixels: such a mask used to score IoU 0 in silence)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import one_error_line, run_agn


@pytest.mark.parametrize("size, message", [
    ("1x1x1", "does not fit attention-unet3d"),
    pytest.param("4000x4000x4000", "GiB are free", marks=pytest.mark.slow),
])
@pytest.mark.slow
def test_bench_refuses_impossible_sizes(size, message):
    code, _, stderr = run_agn("bench", "--size", size, "--device", "cpu", "--repeat", "1", "--warmup", "0")
    assert code == 2 and message in one_error_line(stderr)


def test_check_input_fits_gives_a_memory_lower_bound():
    import torch

    from agn_cli.models import create_model
    from agn_cli.runtime.device import check_input_fits

    model = create_model("attention-unet3d", num_classes=4, base_filters=4)
    inference = check_input_fits(model, (1, 1, 32, 32, 32), torch.device("cpu"))
    training = check_input_fits(model, (1, 1, 32, 32, 32), torch.device("cpu"), train=True)
    assert inference == 2 * 4 * 32**3 * 4  # two of the largest activation: F1 = 4 channels at full resolution, fp32
    assert training > 10 * inference  # every activation is kept for the backward pass
    assert check_input_fits(model, (2, 1, 32, 32, 32), torch.device("cpu")) == 2 * inference


@pytest.mark.slow
def test_localise_refuses_a_mask_of_another_size(tmp_path):
    import cv2

    frames, masks = tmp_path / "frames", tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(frames / "001_HC.png"), rng.integers(0, 255, (120, 160), dtype=np.uint8))
    mask = np.zeros((60, 80), np.uint8)  # half the frame's size: e.g. a mask exported at another resolution
    mask[20:40, 30:50] = 255
    cv2.imwrite(str(masks / "001_HC_Mask.png"), mask)
    code, _, stderr = run_agn("localise", frames, "--gt", masks, "--device", "cpu")
    line = one_error_line(stderr)
    assert code == 2 and "80x60" in line and "160x120" in line
