"""The shipped fetal head model on real HC18 dev frames: found, Dice and HC against the official values.

Floors sit below the model card's dev numbers (80 frames: Dice 0.975, HC mean absolute difference 1.99 mm) so the
test catches a broken pipeline (preprocessing, resize back, ellipse, calibration), not the model's spread.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agn_cli.metrics.segmentation import dice_per_class
from agn_cli.runtime.checkpoint import find_default_weights, read_card
from agn_cli.us.biometry import read_hc18_table
from agn_cli.us.frames import read_frames
from agn_cli.us.measure import HeadMeasurer

BATCH = 8


def test_the_default_2d_model_is_the_hc18_head_model_and_the_3d_default_is_ct():
    head, ct = find_default_weights("segmentation", dims=2), find_default_weights("segmentation", dims=3)
    assert head is not None and head.name == "us-attention-unet2d-hc18.safetensors"
    assert ct is not None and ct.name == "ct-attention-unet3d-synth.safetensors"
    card = read_card(head.with_suffix(".json"))
    assert card.labels == {0: "background", 1: "head"} and card.postprocessing["hc_offset_mm"] < 0
    assert "CC BY 4.0" in card.training_data and "clinical" in card.notes


@pytest.mark.slow
def test_real_dev_frames(shared_dir):
    root = shared_dir / "data/us/hc18-dev"
    table = read_hc18_table(root / "pixel_size_and_HC.csv")
    names = sorted(table)
    measurer = HeadMeasurer(device="cpu")
    results = []
    for i in range(0, len(names), BATCH):
        chunk = names[i : i + BATCH]
        frames = [next(read_frames(root / "images" / name)) for name in chunk]
        results += measurer.measure_batch(frames, [table[n].pixel_size_mm for n in chunk])
    assert all(r.hc_mm is not None for r in results), [r.reason for r in results]
    differences = np.array([r.hc_mm - table[n].hc_mm for r, n in zip(results, names)])
    dice = [
        dice_per_class(r.mask.astype(np.uint8),
                       (cv2.imread(str(root / "masks" / n.replace(".png", "_Mask.png")), 0) > 127).astype(np.uint8), [1])[0]
        for r, n in zip(results, names)
    ]
    assert len(results) == 80
    assert np.mean(dice) > 0.965, np.mean(dice)
    assert np.mean(np.abs(differences)) < 2.3, np.mean(np.abs(differences))
    assert abs(np.mean(differences)) < 0.5, np.mean(differences)  # calibrated on training frames: no systematic offset
