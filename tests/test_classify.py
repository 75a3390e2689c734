"""`agn classify`: the 13 real SonoNet examples, output formats, preprocessing, and bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from agn_cli.errors import AgnError
from agn_cli.us.preprocess import SONONET_PREPROCESSING, crop_window, frame_geometry, parse_crop, preprocess_frame
from tests.conftest import require, run_agn, run_agn_here

_agn = run_agn
_agn_here = run_agn_here


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small synthetic frames (grey, RGB, 16-bit) and a 6-frame video."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    base = (rng.random((112, 144)) * 60).astype(np.uint8)
    cv2.ellipse(base, (72, 56), (40, 30), 0, 0, 360, 220, 3)
    cv2.imwrite(str(root / "a_grey.png"), base)
    cv2.imwrite(str(root / "b_rgb.jpg"), np.dstack([base] * 3))
    cv2.imwrite(str(root / "c_16bit.tiff"), base.astype(np.uint16) * 257)
    writer = cv2.VideoWriter(str(root / "d_clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (144, 112))
    for i in range(6):
        writer.write(np.dstack([np.roll(base, 3 * i, axis=1)] * 3))
    writer.release()
    return root


def test_preprocessing_follows_the_card() -> None:
    frame = np.zeros((735, 975, 3), np.uint8)
    frame[115:734, 81:874] = (30, 60, 90)  # grey mean 60 inside the crop
    frame[:115] = 255  # scanner text band: must be cropped away
    frame[300:400, 300:500] = (200, 200, 200)
    assert crop_window(frame.shape, SONONET_PREPROCESSING, "auto") == (115, 734, 81, 874)
    assert crop_window((1470, 1950), SONONET_PREPROCESSING, "auto") == (230, 1468, 162, 1748)  # same layout, 2x
    assert crop_window((540, 800), SONONET_PREPROCESSING, "auto") == (0, 540, 0, 800)  # other layout: no crop
    assert crop_window(frame.shape, SONONET_PREPROCESSING, "none") == (0, 735, 0, 975)
    x = preprocess_frame(frame, SONONET_PREPROCESSING)
    assert x.shape == (224, 288) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-2 and float(x.std()) == pytest.approx(255.0, rel=1e-3)
    assert float(x.min()) == pytest.approx(float(x[0, 0]))  # top-left is the dark background, not the white band
    g = frame_geometry((540, 800), SONONET_PREPROCESSING, "auto")
    assert g.to_input([0, 0, 288, 224]) == pytest.approx([0, 0, 800, 540])
    assert parse_crop("115:734,81:874") == (115, 734, 81, 874)
    for bad in ("1:2", "5:1,0:3", "a:b,c:d"):
        with pytest.raises(AgnError):
            parse_crop(bad)


@pytest.mark.slow
def test_13_real_examples(shared_dir: Path, tmp_path: Path) -> None:
    folder = require(shared_dir / "data" / "us" / "sononet-examples")
    truth = {row["filename"]: row["sononet_label"] for row in csv.DictReader(open(folder / "labels.csv"))}
    result = _agn("classify", str(folder), "--boxes", "--json", "-o", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    got = {Path(f["path"]).name: f["label"] for f in payload["frames"]}
    assert got == truth  # 13/13
    for f in payload["frames"]:
        assert set(f) >= {"path", "frame", "label", "confidence", "topk", "box", "box_score"}
        assert f["topk"][0] == [f["label"], f["confidence"]] and len(f["topk"]) == 3
        x0, y0, x1, y1 = f["box"]
        assert 81 <= x0 < x1 <= 874 and 115 <= y0 < y1 <= 734  # inside the auto crop, in input pixels
    summary = payload["summary"]
    assert summary["frames"] == summary["files"] == summary["boxes"] == 13
    assert summary["frames_per_second"] == pytest.approx(13 / summary["seconds"], rel=0.01)
    assert json.loads((tmp_path / "r.json").read_text())["frames"] == payload["frames"]
    coco = json.loads((tmp_path / "r.coco.json").read_text())
    assert len(coco["images"]) == len(coco["annotations"]) == 13 and len(coco["categories"]) == 14


@pytest.mark.slow
def test_csv_overlays_video_every_and_16bit(frames_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "res.csv"
    result = _agn("classify", str(frames_dir), "--every", "2", "--boxes", "-o", str(out), "--overlays",
                  str(tmp_path / "ov"), "--top-k", "2", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert "frames/s" in result.stdout
    rows = list(csv.DictReader(open(out)))
    assert [(Path(r["path"]).name, int(r["frame"])) for r in rows] == [
        ("a_grey.png", 0), ("b_rgb.jpg", 0), ("c_16bit.tiff", 0), ("d_clip.avi", 0), ("d_clip.avi", 2), ("d_clip.avi", 4)]
    assert all(len(r["topk"].split(";")) == 2 for r in rows)
    assert all(0 <= float(r["x0"]) < float(r["x1"]) <= 144 and 0 <= float(r["y0"]) < float(r["y1"]) <= 112 for r in rows)
    # the 16-bit copy of the grey frame is scaled, not wrapped: same prediction and probability
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["c_16bit.tiff"]["label"] == by_name["a_grey.png"]["label"]
    assert float(by_name["c_16bit.tiff"]["confidence"]) == pytest.approx(float(by_name["a_grey.png"]["confidence"]), abs=1e-3)
    assert (tmp_path / "res.coco.json").is_file()
    overlays = sorted(p.name for p in (tmp_path / "ov").iterdir())
    assert overlays == ["a_grey.png", "b_rgb.png", "c_16bit.png", "d_clip_f00000.png", "d_clip_f00002.png",
                        "d_clip_f00004.png"]
    assert cv2.imread(str(tmp_path / "ov" / "a_grey.png")).shape == (112, 144, 3)
    again = _agn("classify", str(frames_dir), "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_bad_inputs(frames_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    result = _agn_here(capsys, "classify", str(tmp_path / "empty"), "-o", str(tmp_path / "x.json"))
    assert result.returncode == 2 and "no frames found" in result.stderr and not (tmp_path / "x.json").exists()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    result = _agn_here(capsys, "classify", str(corrupt), str(frames_dir / "a_grey.png"), "--json")
    assert result.returncode == 0, result.stderr  # the good frame is classified, the bad one reported
    assert "corrupt.png" in result.stderr
    payload = json.loads(result.stdout)
    assert len(payload["frames"]) == 1 and payload["summary"]["failed"][0]["path"] == str(corrupt)
    result = _agn_here(capsys, "classify", str(corrupt), "-o", str(tmp_path / "y.json"))
    assert result.returncode == 2 and "no frame could be read" in result.stderr and not (tmp_path / "y.json").exists()
    result = _agn_here(capsys, "classify", str(frames_dir / "a_grey.png"), "--weights", str(tmp_path / "absent.safetensors"))
    assert result.returncode == 2 and "weights not found" in result.stderr and "Traceback" not in result.stderr
    result = _agn_here(capsys, "classify", str(frames_dir / "a_grey.png"), "--crop", "1:2")
    assert result.returncode == 2 and "--crop" in result.stderr
    result = _agn_here(capsys, "classify", str(frames_dir / "a_grey.png"), "-o", str(tmp_path / "r.txt"))
    assert result.returncode == 2


def test_gated_model_boxes_from_both_gates(tmp_path: Path, frames_dir: Path) -> None:
    """AG-Sononet checkpoints localise from their stage-3/stage-4 gates (no CAM)."""
    from agn_cli.models import create_model
    from agn_cli.runtime.checkpoint import ModelCard, save_checkpoint
    from agn_cli.us.classifier import Classifier
    from agn_cli.us.frames import iter_frames

    model = create_model("ag-sononet-8", num_classes=3)
    card = ModelCard(architecture="ag-sononet-8", model_kwargs={"base_filters": 8, "num_classes": 3},
                     task="classification", labels={0: "a", 1: "b", 2: "Background"},
                     preprocessing={"grey": "mean", "size": [96, 128], "zscore": True, "scale": 1.0})
    save_checkpoint(tmp_path / "ag.safetensors", model, card)
    clf = Classifier(tmp_path / "ag.safetensors", boxes=True, top_k=2)
    results = list(clf.run(iter_frames([frames_dir / "a_grey.png", frames_dir / "b_rgb.jpg"]), batch_size=2))
    assert len(results) == 2 and all(r.box is not None and r.box_label in ("a", "b") for r in results)
    assert all(0 <= r.box[0] < r.box[2] <= 144 and 0 <= r.box[1] < r.box[3] <= 112 for r in results)
