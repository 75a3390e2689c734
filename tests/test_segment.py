"""`agn segment` end to end with tiny randomly initialised checkpoints: geometry identity on real CT (NIfTI, crop,
DICOM), sliding-window blending, optional outputs, bad inputs and batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from agn_cli.ct.sliding_window import gaussian_importance, mirror_axes, predict_volume, window_starts
from agn_cli.ct.volume import Geometry, image_from_xyz, read_volume, write_volume
from tests.conftest import require, run_agn

CT = "data/ct/totalseg-example"


def synthetic_ct(size=(40, 36, 12), spacing=(3.0, 3.0, 5.0), seed=0, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    rng = np.random.default_rng(seed)
    arr = rng.normal(40, 30, size=size).astype(np.int16)
    arr[:3] = -1000  # some air so it looks like HU
    return image_from_xyz(arr, Geometry(size, spacing, (-50.0, 20.0, 7.5), tuple(float(v) for v in direction)))


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert Geometry.of(a) == Geometry.of(b), (Geometry.of(a), Geometry.of(b))


# ------------------------------------------------------------------------------------------------ inference


def test_window_starts_cover_with_overlap():
    assert window_starts(50, 64, 0.5) == [0]
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:]))  # at least 50 % overlap
    assert len(mirror_axes(False)) == 1 and len(mirror_axes(True)) == 8
    assert mirror_axes(True, 3, [1]) == [(), (3,)] and len(mirror_axes(True, 3, [2, 0])) == 4
    g = gaussian_importance((9, 7, 5))
    assert g.shape == (9, 7, 5) and float(g.max()) == 1.0 and float(g[4, 3, 2]) == 1.0 and float(g.min()) > 0
    assert torch.allclose(g, g.flip(0).flip(1).flip(2))


class PointwiseNet(nn.Module):
    """1x1x1 convolution: translation-equivariant without borders, so windowing must not change its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 3, 1)

    def forward(self, x, return_attention=False):
        logits = self.conv(x)
        return (logits, {"gate": torch.sigmoid(x).repeat(1, 2, 1, 1, 1)}) if return_attention else logits


def test_sliding_window_blending_equals_whole_volume():
    model = PointwiseNet().eval()
    volume = torch.randn(30, 26, 20)
    whole = predict_volume(model, volume, None, attention=True)
    assert whole.windows == 1
    with torch.no_grad():
        expected = torch.softmax(model(volume[None, None]), dim=1)[0]
    assert torch.allclose(whole.probabilities, expected, atol=1e-6)
    windowed = predict_volume(model, volume, (12, 10, 8), overlap=0.5, batch_size=3, attention=True, tta=True)
    assert windowed.windows > 8 and windowed.passes == windowed.windows * 8
    assert torch.allclose(windowed.probabilities, expected, atol=1e-5)
    assert torch.allclose(windowed.attention["gate"], torch.sigmoid(volume), atol=1e-5)


def test_window_covering_the_volume_equals_a_single_forward():
    from agn_cli.models import create_model

    model = create_model("attention-unet3d", num_classes=3, base_filters=4).eval()
    volume = torch.randn(24, 20, 16)
    with torch.no_grad():
        expected = torch.softmax(model(volume[None, None]), dim=1)[0]
    result = predict_volume(model, volume, (24, 20, 16))
    bigger = predict_volume(model, volume, (64, 64, 64))
    assert result.windows == bigger.windows == 1
    assert torch.allclose(result.probabilities, expected, atol=1e-6)
    assert torch.allclose(bigger.probabilities, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------ real CT


@pytest.mark.parametrize("name", ["example_ct.nii.gz", "example_ct_sm.nii.gz", "example_ct_dicom"])
@pytest.mark.slow
def test_segment_real_ct_output_lies_exactly_on_the_input(shared_dir, tiny_weights, tmp_path, name):
    source = require(shared_dir / CT / name)
    output = tmp_path / "mask.nii.gz"
    code, stdout, stderr = run_agn("segment", source, "-o", output, "--weights", tiny_weights, "--json")
    assert code == 0, stderr
    record = json.loads(stdout)
    mask = sitk.ReadImage(str(output))
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(mask, read_volume(source))
    sidecar = json.loads((tmp_path / "mask.json").read_text())
    assert sidecar["labels"]["1"]["name"] == "spleen"
    total = sum(v["voxels"] for v in sidecar["labels"].values())
    assert total == int(np.prod(mask.GetSize()))
    voxel_ml = np.prod(mask.GetSpacing()) / 1000
    assert sidecar["labels"]["2"]["volume_ml"] == pytest.approx(sidecar["labels"]["2"]["voxels"] * voxel_ml, abs=1e-3)
    assert record["labels"] == sidecar["labels"] and sidecar["timings_s"]["inference_s"] > 0


# ------------------------------------------------------------------------------------------------ options


def with_mirror_axes(weights: Path, axes: list[int], folder: Path) -> Path:
    """A copy of `weights` whose card says it was trained with flips on `axes`."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / weights.name
    copy.write_bytes(weights.read_bytes())
    card = json.loads(weights.with_suffix(".json").read_text())
    copy.with_suffix(".json").write_text(json.dumps({**card, "mirror_axes": axes}))
    return copy


@pytest.mark.slow
def test_optional_outputs_on_oblique_scan(tiny_weights, tmp_path):
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    image = synthetic_ct(direction=(-1, 0, 0, 0, -c, s, 0, s, c))  # flipped x, tilted y/z
    scan = write_volume(image, tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    weights = with_mirror_axes(tiny_weights, [0, 1, 2], tmp_path / "mirrored")
    code, stdout, stderr = run_agn("segment", scan, "-o", out / "mask.nrrd", "--weights", weights, "--attention", out / "att.nii.gz",
        "--preview", out / "preview.png", "--probabilities", out / "prob.nii.gz", "--largest-component", "--tta", "--no-fast",
    )
    assert code == 0, stderr
    assert "8 passes" in stderr
    reference = read_volume(scan)
    # NRRD stores direction x spacing in doubles: equal up to the last bit of the product
    assert Geometry.of(sitk.ReadImage(str(out / "mask.nrrd"))).max_difference(Geometry.of(reference)) < 1e-12
    for gate in ("level2", "level3", "level4"):
        att = sitk.ReadImage(str(out / f"att_{gate}.nii.gz"))
        assert Geometry.of(att).max_difference(Geometry.of(reference)) < 1e-5  # NIfTI header precision
        values = sitk.GetArrayViewFromImage(att)
        assert values.min() >= 0 and values.max() <= 1
    prob = sitk.ReadImage(str(out / "prob.nii.gz"))
    assert prob.GetDimension() == 4 and prob.GetSize()[3] == 4
    assert np.allclose(sitk.GetArrayViewFromImage(prob).sum(axis=0), 1, atol=1e-4)
    import cv2

    preview = cv2.imread(str(out / "preview.png"))
    assert preview is not None and preview.shape[0] > 256 and preview.shape[1] >= 3 * 256
    sidecar = json.loads((out / "mask.json").read_text())
    assert sidecar["tta"] and sidecar["largest_component"] and set(sidecar["attention"]) == {"level2", "level3", "level4"}


@pytest.mark.slow
def test_tta_mirrors_only_the_axes_the_model_was_trained_to_flip(tiny_weights, tmp_path):
    scan = write_volume(synthetic_ct(), tmp_path / "scan.nii.gz")
    # the card records no flips (like every lateralised CT model): mirroring would swap left and right organs
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "a.nii.gz", "--weights", tiny_weights, "--tta")
    assert code == 2 and "trained without flips" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "a.nii.gz").exists()
    weights = with_mirror_axes(tiny_weights, [1], tmp_path / "y")  # front/back flips only
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "b.nii.gz", "--weights", weights, "--tta", "--json")
    assert code == 0, stderr
    assert "mirroring over y runs 2 passes" in stderr
    sidecar = json.loads((tmp_path / "b.json").read_text())
    assert sidecar["tta"] and sidecar["passes"] == 2 * sidecar["windows"]


def test_largest_component_keeps_one_blob_per_label():
    from agn_cli.ct.segmenter import largest_component_per_class

    labels = np.zeros((20, 20, 20), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[10:18, 10:18, 10:18] = 1
    labels[5:7, 15:17, 2:4] = 2
    out = largest_component_per_class(labels.copy(), [0, 1, 2])
    assert out[2, 2, 2] == 0 and out[12, 12, 12] == 1 and out[5, 15, 2] == 2


@pytest.mark.slow
def test_warnings_for_non_hu_and_anisotropy(tiny_weights, tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, size=(30, 30, 8)).astype(np.uint8)
    scan = write_volume(image_from_xyz(arr, Geometry((30, 30, 8), (0.7, 0.7, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))), tmp_path / "mr.nii.gz")
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "m.nii.gz", "--weights", tiny_weights)
    assert code == 0, stderr
    assert "Hounsfield" in stderr and "anisotropic" in stderr


@pytest.mark.slow
def test_existing_output_needs_overwrite(tiny_weights, tmp_path):
    scan = write_volume(synthetic_ct(), tmp_path / "scan.nii.gz")
    (tmp_path / "m.nii.gz").write_bytes(b"old")
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "m.nii.gz", "--weights", tiny_weights)
    assert code == 2 and "--overwrite" in stderr
    assert (tmp_path / "m.nii.gz").read_bytes() == b"old"
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "m.nii.gz", "--weights", tiny_weights, "--overwrite")
    assert code == 0, stderr


@pytest.mark.slow
def test_default_weights_notice_and_missing_weights_message(tiny_weights, tmp_path):
    scan = write_volume(synthetic_ct(), tmp_path / "scan.nii.gz")
    no_default = "import agn_cli.runtime.checkpoint as c; c.find_default_weights = lambda task, dims=None: None"
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "m.nii.gz", setup=no_default)
    assert code == 2 and "agn weights init" in stderr and "agn train seg" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "m.nii.gz").exists()
    tiny_default = f"import agn_cli.runtime.checkpoint as c; c.find_default_weights = lambda task, dims=None: {str(tiny_weights)!r}"
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "m.nii.gz", setup=tiny_default)
    assert code == 0 and f"using default weights {tiny_weights}" in stderr


@pytest.mark.slow
def test_labels_that_do_not_fit_uint8(tmp_path):
    from agn_cli.models import create_model
    from agn_cli.runtime.checkpoint import ModelCard, save_checkpoint

    scan = write_volume(synthetic_ct(), tmp_path / "scan.nii.gz")
    card = ModelCard("unet3d", {"num_classes": 2, "base_filters": 4}, "segmentation", {0: "background", 300: "x"}, spacing=[6.0] * 3)
    weights = save_checkpoint(tmp_path / "w.safetensors", create_model("unet3d", num_classes=2, base_filters=4), card)
    code, _, stderr = run_agn("segment", scan, "-o", tmp_path / "m.nii.gz", "--weights", weights)
    assert code == 2 and "uint8" in stderr and not (tmp_path / "m.nii.gz").exists()


# ------------------------------------------------------------------------------------------------ bad inputs


def _bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = write_volume(synthetic_ct(size=(40, 40, 20)), folder / "good.nii.gz")
    data = good.read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    sitk.WriteImage(sitk.Image(32, 24, sitk.sitkUInt8), str(folder / "frame.png"))
    sitk.WriteImage(sitk.Image([6, 5, 4, 3], sitk.sitkInt16), str(folder / "fourd.nii.gz"))
    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(folder / "nan.nii.gz"))
    (folder / "empty").mkdir(exist_ok=True)
    return {
        "truncated": folder / "truncated.nii.gz",
        "2d": folder / "frame.png",
        "4d": folder / "fourd.nii.gz",
        "nan": folder / "nan.nii.gz",
        "empty": folder / "empty",
    }


@pytest.mark.parametrize("kind", ["truncated", "2d", "4d", "nan", "empty"])
def test_bad_inputs_exit_2_one_line_no_output(tiny_weights, tmp_path, kind):
    source = _bad_inputs(tmp_path / "in")[kind]
    out = tmp_path / "out"
    code, stdout, stderr = run_agn("segment", source, "-o", out / "m.nii.gz", "--weights", tiny_weights, "--preview", out / "p.png"
    )
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------------------ batches


@pytest.mark.slow
def test_batch_with_a_broken_case(tiny_weights, tmp_path):
    scans = tmp_path / "scans"
    write_volume(synthetic_ct(seed=1), scans / "a.nii.gz")
    write_volume(synthetic_ct(seed=2, size=(30, 30, 10)), scans / "c.mha")
    good = write_volume(synthetic_ct(seed=3), tmp_path / "b.nii.gz")
    (scans / "b.nii.gz").write_bytes(good.read_bytes()[:300])  # broken
    out = tmp_path / "masks"
    code, stdout, stderr = run_agn("segment", scans, "-o", out, "--weights", tiny_weights)
    assert code != 0
    assert (out / "a.nii.gz").exists() and (out / "c.nii.gz").exists() and not (out / "b.nii.gz").exists()
    assert (out / "a.json").exists() and not (out / "b.json").exists()
    assert "failed" in stdout and "b.nii.gz" in stdout  # summary table
    assert_same_geometry(sitk.ReadImage(str(out / "c.nii.gz")), read_volume(scans / "c.mha"))

    # again: done cases are skipped, the broken one fails again; JSON lists all three
    code, stdout, _ = run_agn("segment", scans, "-o", out, "--weights", tiny_weights, "--json")
    records = {Path(r["input"]).name: r["status"] for r in json.loads(stdout)}
    assert code != 0 and records == {"a.nii.gz": "skipped", "b.nii.gz": "failed", "c.mha": "skipped"}

    (scans / "b.nii.gz").unlink()
    code, stdout, stderr = run_agn("segment", scans / "a.nii.gz", scans / "c.mha", "-o", out, "--weights", tiny_weights, "--overwrite", "--json")
    assert code == 0, stderr
    assert [r["status"] for r in json.loads(stdout)] == ["ok", "ok"]


class ThresholdNet(nn.Module):
    """Class 1 wherever the normalised intensity is above 0: every bright block becomes its own island."""

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        logits = torch.cat([-x, x], dim=1)
        return (logits, {}) if return_attention else logits


@pytest.mark.slow
def test_card_postprocessing_sets_the_largest_component_default(tiny_weights, tmp_path):
    import shutil

    from agn_cli.ct.segmenter import Segmenter, SegmentOptions
    from agn_cli.runtime.checkpoint import ModelCard

    arr = np.full((60, 60, 30), -100, np.int16)  # a big and a small bright block, far apart
    arr[4:30, 4:30, 4:20] = 300
    arr[44:52, 44:52, 22:28] = 300
    scan = image_from_xyz(arr, Geometry(arr.shape, (3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    card = ModelCard("threshold", {"num_classes": 2}, "segmentation", {0: "background", 1: "organ"}, spacing=[3.0, 3.0, 3.0],
                     normalisation={"type": "ct", "clip": [-1000.0, 1000.0], "mean": 100.0, "std": 100.0}, patch_size=[64, 64, 32])
    results = {}
    for said in (True, False):
        card.postprocessing = {"largest_component": True} if said else {}
        segmenter = Segmenter(ThresholdNet(), card, torch.device("cpu"), fast=False)
        for choice in (None, True, False):
            mask = sitk.GetArrayFromImage(segmenter.segment(scan, SegmentOptions(largest_component=choice)).labels)
            results[said, choice] = int(mask.sum())
    big, both = 26 * 26 * 16, 26 * 26 * 16 + 8 * 8 * 6
    assert results == {(True, None): big, (True, True): big, (True, False): both,
                       (False, None): both, (False, True): big, (False, False): both}
    # the CLI: no flag = the card's choice, --all-components / --largest-component override it; the sidecar says which
    card_says = tmp_path / "lcc.safetensors"
    shutil.copy(tiny_weights, card_says)
    data = json.loads(tiny_weights.with_suffix(".json").read_text())
    data["postprocessing"] = {"largest_component": True}
    card_says.with_suffix(".json").write_text(json.dumps(data))
    path = write_volume(scan, tmp_path / "scan.nii.gz")
    for name, weights, flags, expected in (("plain", tiny_weights, [], False), ("card", card_says, [], True),
                                           ("forced", tiny_weights, ["--largest-component"], True),
                                           ("off", card_says, ["--all-components"], False)):
        out = tmp_path / f"{name}.nii.gz"
        code, _, stderr = run_agn("segment", path, "-o", out, "--weights", weights, "--no-fast", *flags)
        assert code == 0, stderr
        assert json.loads((tmp_path / f"{name}.json").read_text())["largest_component"] is expected
