"""The shipped default CT model (weights/ct-attention-unet3d-synth.*): card, integrity, `agn segment` without
--weights on a synthetic phantom, and sim-to-real Dice floors on the real TotalSegmentator example CT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from agn_cli.ct.volume import Geometry
from tests.conftest import REPO_ROOT, require, run_agn

WEIGHTS = REPO_ROOT / "weights" / "ct-attention-unet3d-synth.safetensors"
CARD = WEIGHTS.with_suffix(".json")
LABELS = {0: "background", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 7: "pancreas"}
# Measured on the real example CT (model card metrics: liver 0.876, spleen 0.850, kidney_right 0.798, kidney_left
# 0.821, pancreas 0.096); floors sit about 0.05 below so a regression fails. The pancreas is a miss.
REAL_DICE_FLOORS = {"liver": 0.82, "spleen": 0.80, "kidney_right": 0.75, "kidney_left": 0.77, "pancreas": 0.0}


@pytest.fixture(autouse=True)
def _only_project_weights(monkeypatch):
    monkeypatch.delenv("AGN_WEIGHTS", raising=False)  # the project's weights/ decides the default


def test_card_fields_sha256_and_load():
    from agn_cli.runtime.checkpoint import load_checkpoint, sha256_file

    assert WEIGHTS.is_file() and CARD.is_file()
    assert WEIGHTS.stat().st_size < 10 * 2**20  # small enough to ship in the repository
    card = json.loads(CARD.read_text())
    assert card["default"] is True and card["task"] == "segmentation"
    assert card["architecture"] == "attention-unet3d" and card["model_kwargs"]["num_classes"] == len(LABELS)
    assert {int(k): v for k, v in card["labels"].items()} == LABELS
    assert card["weights_file"] == WEIGHTS.name and card["weights_sha256"] == sha256_file(WEIGHTS)
    assert card["spacing"] == [4.0, 4.0, 4.0] and card["normalisation"]["type"] == "ct"
    assert card["model_kwargs"]["norm"] == "instance" and card["postprocessing"] == {"largest_component": True}
    text = card["training_data"] + " " + card["notes"]
    for phrase in ("Synthetic only", "--seed", "phantoms", "no GPU", "No real scan was used for training",
                   "NOT for clinical use", "ONE real CT", "contrast"):
        assert phrase in text, phrase
    assert card["metrics"]["training_steps"] > 0 and card["metrics"]["training_wall_time_s"] > 0
    model, loaded = load_checkpoint(WEIGHTS)
    assert loaded.labels == LABELS and not model.training


def test_default_lookup_keeps_the_classifier():
    from agn_cli.runtime.checkpoint import find_default_weights, read_card

    assert find_default_weights("segmentation") == WEIGHTS
    classifier = find_default_weights("classification")
    assert classifier is not None and classifier.name == "sononet16.safetensors"
    assert read_card(classifier.with_suffix(".json")).task == "classification"


@pytest.mark.slow
def test_segment_phantom_without_weights(tmp_path):
    """No --weights: one-line notice, a mask on the input's exact grid with the card's ids, liver found."""
    from agn_cli.synth.ct_phantom import LABELS as PHANTOM
    from agn_cli.synth.ct_phantom import generate_ct_case

    image, label = generate_ct_case(np.random.default_rng([2024, 1]), resolution=64, direction="ras", contrast="none")
    scan = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(image, str(scan))
    out = tmp_path / "mask.nii.gz"
    code, _, stderr = run_agn("segment", scan, "-o", out)
    assert code == 0, stderr
    notices = [line for line in stderr.splitlines() if "using default weights" in line]
    assert len(notices) == 1 and WEIGHTS.name in notices[0]
    mask = sitk.ReadImage(str(out))
    assert Geometry.of(mask) == Geometry.of(sitk.ReadImage(str(scan))) and mask.GetPixelID() == sitk.sitkUInt8
    pred = sitk.GetArrayFromImage(mask)
    assert set(np.unique(pred)) <= set(LABELS)
    ref = sitk.GetArrayFromImage(label) == PHANTOM["liver"]
    liver = pred == 5
    assert 2 * (liver & ref).sum() / (liver.sum() + ref.sum()) > 0.7


@pytest.mark.slow
def test_sim_to_real_dice_floors(shared_dir, tmp_path):
    """Default model on the one real CT (TotalSegmentator silver labels): Dice per organ above the floors."""
    from agn_cli.metrics.segmentation import evaluate_files

    folder = shared_dir / "data" / "ct" / "totalseg-example"
    scan = require(folder / "example_ct.nii.gz")
    reference = require(folder / "example_seg_fast_force_split.nii.gz")
    out = tmp_path / "mask.nii.gz"
    code, _, stderr = run_agn("segment", scan, "-o", out)
    assert code == 0, stderr
    names = {k: v for k, v in LABELS.items() if k}
    result = evaluate_files(out, reference, sorted(names), names)  # card ids are TotalSegmentator ids
    dice = {row["name"]: row["dice"] for row in result["classes"]}
    for organ, floor in REAL_DICE_FLOORS.items():
        assert dice[organ] >= floor, (organ, dice)
