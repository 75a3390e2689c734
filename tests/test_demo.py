"""`agn demo`: the quick demo runs end to end and writes a readable report; output-folder rules; --json."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from pathlib import Path

import cv2
import pytest

from agn_cli.cli.app import main


def _agn(argv: list[str]) -> tuple[int, str, str]:
    """Run `agn` in-process through its real entry point (errors mapped to exit codes); (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, dict, str]:
    """One quick demo with --json (shared by the tests below): (output folder, stdout JSON, stderr)."""
    output = tmp_path_factory.mktemp("demo") / "out"
    code, stdout, stderr = _agn(["demo", "--quick", "--device", "cpu", "--seed", "3", "-o", str(output), "--json"])
    assert code == 0, stderr
    return output, json.loads(stdout), stderr


def _number(value) -> float:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), value
    return float(value)


@pytest.mark.slow
def test_quick_demo_writes_report_summary_and_figures(quick_demo):
    output, summary, _ = quick_demo
    for name in ("report.md", "report.html", "summary.json"):
        assert (output / name).is_file(), name
    assert json.loads((output / "summary.json").read_text()) == summary  # --json prints exactly summary.json
    assert not list(output.parent.glob(".out.tmp-*"))  # the temporary build folder is gone
    figures = summary["figures"]
    assert {"ct", "dice", "loss", "us", "bench"} <= set(figures)
    for rel in figures.values():
        image = cv2.imread(str(output / rel))
        assert image is not None, rel
        assert image.ndim == 3 and image.shape[2] == 3
        assert 100 <= image.shape[0] <= 4000 and 200 <= image.shape[1] <= 4000, (rel, image.shape)
        assert image.std() > 5, f"{rel} is blank"
    # the Markdown links every figure relatively; the HTML embeds them and needs no other file
    md = (output / "report.md").read_text()
    for rel in figures.values():
        assert f"]({rel})" in md
    page = (output / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures)
    assert not re.search(r'src="(?!data:)', page)
    # data and weights the demo made
    assert (output / "models" / "ct-attention-unet3d" / "latest.safetensors").is_file()
    assert (output / "models" / "us-ag-sononet" / "latest.safetensors").is_file()
    assert (output / "data" / "ct-test" / "test_0000_label.nii.gz").is_file()
    assert (output / "results" / "ct" / "test_0000_demo-model.nii.gz").is_file()
    assert not (output / "models" / "ct-attention-unet3d" / "cache").exists()
    card = (output / "models" / "ct-attention-unet3d" / "latest.json").read_text()
    assert ".tmp-" not in card  # recorded paths point at the final folder


@pytest.mark.slow
def test_quick_demo_summary_fields_are_sane(quick_demo):
    _, summary, _ = quick_demo
    assert summary["quick"] is True and summary["seed"] == 3
    assert 0 < _number(summary["total_seconds"]) < 600
    keys = [s["key"] for s in summary["steps"]]
    assert keys == ["synth_ct", "train_seg", "segment", "synth_us", "train_cls", "classify", "bench", "report"]
    assert all(_number(s["seconds"]) >= 0 for s in summary["steps"])
    assert sum(s["seconds"] for s in summary["steps"]) <= summary["total_seconds"] + 1e-3

    demo = summary["ct"]["demo_model"]
    assert set(demo["organs"]) == {"spleen", "kidney_right", "kidney_left", "liver", "pancreas"}
    for organ in demo["organs"].values():
        predicted, reference = _number(organ["volume_pred_ml"]), _number(organ["volume_ref_ml"])
        assert reference > 0  # every organ is in the held-out phantom
        # Dice 2|A n B| / (|A| + |B|) cannot exceed what the two volumes allow
        assert _number(organ["dice"]) <= 2 * min(predicted, reference) / (predicted + reference) + 1e-5
        for key in ("hd95_mm", "assd_mm"):  # null when the prediction misses the organ
            assert (organ[key] is None) == (predicted == 0) and (organ[key] is None or _number(organ[key]) >= 0)
    assert demo["mean_dice"] == pytest.approx(sum(o["dice"] for o in demo["organs"].values()) / 5, abs=1e-5)
    training = summary["ct"]["training"]
    assert len(training["loss_per_epoch"]) == summary["config"]["seg_epochs"]
    assert all(_number(v) > 0 for v in training["loss_per_epoch"])

    us = summary["ultrasound"]
    assert us["frames"] == summary["config"]["us_test_frames"]
    confusion = us["confusion"]
    assert sum(map(sum, confusion)) == us["frames"]
    assert us["accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(len(confusion))) / us["frames"], abs=1e-6)
    # the mean box IoU is the mean over the frames with a true box in results/us/predictions.json
    frames = json.loads((quick_demo[0] / "results" / "us" / "predictions.json").read_text())["frames"]
    ious = [f["iou"] for f in frames if f["gt_box"] is not None]
    assert all(f["iou"] is None for f in frames if f["gt_box"] is None)
    assert us["iou_mean"] == pytest.approx(sum(ious) / len(ious), abs=1e-5)
    with_box = sum(sum(row) for name, row in zip(us["classes"], us["confusion"]) if name != "Background")
    assert us["localisation"]["all"]["n"] == with_box > 0  # IoU over every frame that has a structure

    rows = summary["bench"]["rows"]
    assert {r["model"] for r in rows} == {"attention-unet3d", "ag-sononet-8"}
    for r in rows:
        assert _number(r["eager_ms"]) > 0 and _number(r["fast_ms"]) > 0
        assert math.isclose(r["speedup"], r["eager_ms"] / r["fast_ms"], rel_tol=0.02)


@pytest.mark.slow
def test_demo_progress_goes_to_stderr_and_results_table_to_stdout(quick_demo, tmp_path):
    output, summary, stderr = quick_demo
    assert "done" not in stderr  # --json: no progress lines
    # the same seed reproduces the data, weights and metrics (only timings differ), and without --json the
    # results table and the report path go to stdout, progress lines to stderr
    again = tmp_path / "again"
    code, stdout, stderr = _agn(["demo", "--quick", "--device", "cpu", "--seed", "3", "-o", str(again)])
    assert code == 0, stderr
    assert str(again / "report.md") in stdout and "CT mean Dice" in stdout
    assert "train attention-unet3d" in stderr and " s" in stderr
    second = json.loads((again / "summary.json").read_text())
    assert second["ct"]["demo_model"]["organs"] == summary["ct"]["demo_model"]["organs"]
    assert second["ct"]["training"]["loss_per_epoch"] == summary["ct"]["training"]["loss_per_epoch"]
    assert second["ultrasound"]["confusion"] == summary["ultrasound"]["confusion"]


def test_demo_refuses_a_non_empty_output_without_overwrite(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, stdout, stderr = _agn(["demo", "--quick", "-o", str(target)])
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--overwrite" in lines[0]
    # --overwrite never deletes a folder that is not a demo's output
    code, _, stderr = _agn(["demo", "--quick", "-o", str(target), "--overwrite"])
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "not an agn demo" in stderr
    assert (target / "notes.txt").read_text() == "mine"
    # a file where the folder should be
    code, _, stderr = _agn(["demo", "--quick", "-o", str(target / "notes.txt")])
    assert code == 2 and "not a folder" in stderr


def test_demo_bad_device_or_threads_is_one_line(tmp_path):
    code, _, stderr = _agn(["demo", "--quick", "--device", "tpu", "-o", str(tmp_path / "x")])
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "device" in stderr
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))
    code, _, stderr = _agn(["demo", "--quick", "--threads", "0", "-o", str(tmp_path / "x")])
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "--threads" in stderr


@pytest.mark.slow
def test_an_installed_default_ct_model_is_run_beside_the_demo_model(quick_demo, tmp_path, monkeypatch):
    import shutil

    import torch

    from agn_cli.apps.demo import DemoConfig, segment_step

    output, _, _ = quick_demo
    work = tmp_path / "work"
    shutil.copytree(output / "data" / "ct-test", work / "data" / "ct-test")
    shutil.copytree(output / "models" / "ct-attention-unet3d", work / "models" / "ct-attention-unet3d")
    weights = tmp_path / "weights"
    weights.mkdir()
    run = work / "models" / "ct-attention-unet3d"
    shutil.copy(run / "latest.safetensors", weights / "latest.safetensors")
    card = json.loads((run / "latest.json").read_text())
    card["default"] = True  # the card's sha256 covers the weights only
    (weights / "latest.json").write_text(json.dumps(card))
    monkeypatch.setenv("AGN_WEIGHTS", str(weights))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo runs (and fast on a CPU shared with other test processes)
    try:
        _check_default_model(work, DemoConfig, segment_step)
    finally:
        torch.set_num_threads(threads)


def _check_default_model(work, DemoConfig, segment_step):
    import torch

    from agn_cli.synth.ct_phantom import ORGAN_NAMES
    from agn_cli.viz.slices import ct_sheet

    cfg = DemoConfig.quick_config()
    cfg.default_model_budget_s = 600.0
    seg = segment_step(work, cfg, torch.device("cpu"))
    default, demo = seg["default_model"], seg["demo_model"]
    assert default is not None and "installed default" in seg["default_model_note"]
    # the same weights on the same scan: the same label map, so the same Dice per organ
    assert {k: v["dice"] for k, v in default["organs"].items()} == {k: v["dice"] for k, v in demo["organs"].items()}
    assert (work / "results" / "ct" / "test_0000_default-model.nii.gz").is_file()
    arrays = demo["_arrays"]
    sheet = ct_sheet(arrays["ct"], arrays["ref"], {"prediction": arrays["pred"], "default model": default["_arrays"]["pred"]},
                     arrays["attention"], arrays["spacing"], ORGAN_NAMES, panel=100)
    assert sheet.shape[1] == 5 * 100  # CT, reference, two predictions, attention

    cfg.default_model_budget_s = 1e-9  # too slow for the budget: skipped, with the reason
    seg = segment_step(work, cfg, torch.device("cpu"))
    assert seg["default_model"] is None and "skipped" in seg["default_model_note"]

    # a model that numbers the organs differently is matched to the phantom by organ name
    card_path = Path(os.environ["AGN_WEIGHTS"]) / "latest.json"
    card = json.loads(card_path.read_text())
    card["labels"] = {("0" if k == "0" else str(int(k) + 10)): v for k, v in card["labels"].items()}
    card_path.write_text(json.dumps(card))
    cfg.default_model_budget_s = 600.0
    shifted = segment_step(work, cfg, torch.device("cpu"))["default_model"]
    assert {k: v["dice"] for k, v in shifted["organs"].items()} == {k: v["dice"] for k, v in demo["organs"].items()}
