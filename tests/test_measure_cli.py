"""`agn measure hc` and `agn evaluate hc` through the real entry point: outputs, pixel sizes, bad inputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tests.conftest import one_error_line, run_agn

pytestmark = pytest.mark.slow  # every test starts agn processes


@pytest.fixture(scope="module")
def head_weights(tmp_path_factory):
    """A random F1 = 4 attention-unet2d at 64x96: the whole measure pipeline in about a second per call."""
    from agn_cli.apps.weights_init import init_checkpoint

    path = tmp_path_factory.mktemp("w2d") / "head.safetensors"
    init_checkpoint("attention-unet2d", "head", path, base_filters=4, patch="64x96")
    return path


@pytest.fixture()
def frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        image = rng.integers(0, 255, (108, 160), dtype=np.uint8)
        cv2.ellipse(image, (80, 54), (40, 30), 10, 0, 360, 255, 3)
        cv2.imwrite(str(folder / f"{name}.png"), image)
    return folder


def test_outputs_have_the_documented_layout(tmp_path, frames, head_weights):
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("filename,pixel size(mm),head circumference (mm)\na.png,0.2,100\nb.png,0.3,120\n")
    run = run_agn("measure", "hc", frames, "-w", head_weights, "--pixel-sizes", sizes, "-o", tmp_path / "r.json",
                  "--masks", tmp_path / "m", "--overlays", tmp_path / "o", "--challenge-csv", tmp_path / "c.csv",
                  "--threads", "1")
    assert run.returncode == 0, run.stderr
    payload = json.loads((tmp_path / "r.json").read_text())
    assert [f["pixel_size_mm"] for f in payload["frames"]] == [0.2, 0.3]
    first = payload["frames"][0]
    assert set(first) >= {"path", "frame", "hc_mm", "pixel_size_mm", "ellipse", "mask", "quality"}
    for frame in payload["frames"]:
        mask = cv2.imread(frame["mask"], cv2.IMREAD_UNCHANGED)
        assert mask.shape == (108, 160) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "b.png"]
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == (
        "filename,center_x_mm,center_y_mm,semi_axes_a_mm,semi_axes_b_mm,angle_rad"
    )
    assert payload["summary"]["frames"] == 2


def test_without_a_pixel_size_hc_is_null_with_a_warning(tmp_path, frames, head_weights):
    run = run_agn("measure", "hc", frames / "a.png", "-w", head_weights, "--json")
    assert run.returncode == 0, run.stderr
    frame = json.loads(run.stdout)["frames"][0]
    assert frame["hc_mm"] is None and frame["pixel_size_mm"] is None
    if frame["ellipse"] is not None:  # a random network may find no head at all; then the reason says so
        assert "no pixel size" in run.stderr


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-o", "r.csv"], "use a .json file"),
        (["--challenge-csv", "c.json"], "use a .csv file"),
        (["--pixel-size", "0"], "must be positive"),
        (["--pixel-sizes", "missing.csv"], "cannot read"),
    ],
)
def test_bad_options_fail_before_any_compute(tmp_path, frames, head_weights, extra, message):
    run = run_agn("measure", "hc", frames, "-w", head_weights, *extra, cwd=tmp_path)
    assert run.returncode == 2
    assert message in one_error_line(run.stderr)
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "c.json").exists()


def test_output_onto_an_input_or_a_non_empty_folder_is_refused(tmp_path, frames, head_weights):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.png").write_bytes(b"x")
    run = run_agn("measure", "hc", frames, "-w", head_weights, "--masks", tmp_path / "m")
    assert run.returncode == 2 and "not empty" in one_error_line(run.stderr)
    assert (tmp_path / "m" / "keep.png").read_bytes() == b"x"
    card = head_weights.with_suffix(".json")
    before = card.read_bytes()
    run = run_agn("measure", "hc", frames, "-w", head_weights, "-o", card, "--overwrite")
    assert run.returncode == 2 and "model card" in one_error_line(run.stderr)
    assert card.read_bytes() == before


def test_non_images_and_3d_weights_are_one_line_errors(tmp_path, head_weights, tiny_weights):
    junk = tmp_path / "x.png"
    junk.write_bytes(b"not a png")
    run = run_agn("measure", "hc", junk, "-w", head_weights)
    assert run.returncode == 2 and "could be read" in one_error_line(run.stderr.splitlines()[-1] + "\n")
    image = tmp_path / "ok.png"
    cv2.imwrite(str(image), np.zeros((50, 60), np.uint8))
    run = run_agn("measure", "hc", image, "-w", tiny_weights)
    assert run.returncode == 2 and "2D head-segmentation" in one_error_line(run.stderr)


def test_segment_refuses_a_2d_model(tmp_path, head_weights):
    import SimpleITK as sitk

    scan = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 16, 16), -1000, np.int16)), str(scan))
    run = run_agn("segment", scan, "-o", tmp_path / "mask.nii.gz", "-w", head_weights)
    assert run.returncode == 2 and "2D network" in one_error_line(run.stderr)


def test_evaluate_hc_through_the_cli(tmp_path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"frames": [{"path": "a.png", "frame": 0, "hc_mm": 101.0, "mask": None}]}))
    ref = tmp_path / "ref.csv"
    ref.write_text("filename,pixel size(mm),head circumference (mm)\na.png,0.1,100.0\nb.png,0.1,90.0\n")
    run = run_agn("evaluate", "hc", results, ref, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)["summary"]
    assert summary["mean_abs_difference_mm"] == pytest.approx(1.0)
    assert summary["within_2mm"] == pytest.approx(0.5) and summary["measured"] == 1
    run = run_agn("evaluate", "hc", ref, ref)
    assert run.returncode == 2 and "not JSON" in one_error_line(run.stderr)
