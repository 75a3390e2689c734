"""`agn bench`: JSON records with timings, parameters and peak memory in every stage; one-line errors, exit 2."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from agn_cli.apps.bench import BenchConfig, agreement, run_benchmark
from agn_cli.cli.app import app

runner = CliRunner()


def bench_json(*args: str) -> dict:
    result = runner.invoke(app, ["bench", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_bench_unet3d_json_has_ms_params_and_peak_memory():
    record = bench_json("--model", "attention-unet3d", "--size", "32x32x16", "--device", "cpu", "--repeat", "2")
    assert record["params"] == 6473322 and record["paper_config"]
    times = record["results"]["fast"]["times_ms"]
    assert record["median_ms"] == pytest.approx(statistics.median(times), abs=1e-3)
    assert record["min_ms"] == min(times) and record["min_ms"] <= record["median_ms"]
    assert record["items_per_s"] == pytest.approx(1000.0 / record["median_ms"], rel=1e-3)  # batch 1
    assert record["peak_memory_bytes"] > 0 and record["peak_memory_kind"] == "process_peak_rss"
    assert record["input_shape"] == [1, 1, 32, 32, 16]
    assert len(record["results"]["fast"]["times_ms"]) == 2
    for key in ("device_name", "torch", "threads", "cuda", "cudnn"):
        assert key in record
    assert record["device"] == "cpu" and record["threads"] >= 1


def test_bench_2d_compare_eager_reports_speedup_and_agreement():
    record = bench_json(
        "--model", "ag-sononet-8", "--size", "64x80", "--batch", "2", "--device", "cpu", "--repeat", "2",
        "--compare", "eager", "--threads", "1",
    )
    assert record["params"] == 177068 and record["threads"] == 1
    assert set(record["results"]) == {"fast", "eager"}
    assert record["results"]["eager"]["dtype"] == "fp32"
    assert record["speedup"] > 0
    # random weights give near-tied class logits, so bf16 may flip argmax here; test_fast checks agreement on
    # models with non-trivial statistics. The record must still say how close the two paths are: 0, 1 or 2 of the
    # two frames agree.
    assert record["agreement"]["argmax_agreement"] in (0.0, 0.5, 1.0)
    assert record["agreement"]["max_abs_logit_diff"] < 0.05 * max(record["agreement"]["logit_scale"], 1e-3)
    assert record["input_shape"] == [2, 1, 64, 80]


def test_bench_no_fast_and_overrides():
    record = bench_json(
        "--model", "unet3d", "--size", "24x20x16", "--device", "cpu", "--repeat", "1", "--warmup", "0",
        "--no-fast", "--base-filters", "4", "--num-classes", "3",
    )
    assert not record["paper_config"] and record["model_config"]["base_filters"] == 4
    assert set(record["results"]) == {"eager"}
    assert record["results"]["eager"]["path"]["dtype"] == "fp32"


@pytest.mark.slow
def test_bench_train_mode():
    record = run_benchmark(BenchConfig(
        model="attention-unet3d", size="24x24x16", base_filters=4, mode="train", batch=2, device="cpu",
        repeat=1, warmup=1, compare_eager=True,
    ))
    fast = record["results"]["fast"]
    assert record["mode"] == "train" and len(fast["times_ms"]) == 1 and fast["median_ms"] == fast["times_ms"][0]
    assert record["results"]["eager"]["dtype"] == "fp32" and "speedup" in record


@pytest.mark.slow
def test_bench_window_stage():
    record = run_benchmark(BenchConfig(
        model="attention-unet3d", size="16x16x16", base_filters=4, stage="window", scan_size="24x24x20",
        device="cpu", repeat=1, warmup=0, compare_eager=True,
    ))
    assert record["windows"] == 2 * 2 * 2
    assert record["results"]["fast"]["windows_per_s"] > 0
    assert record["agreement"]["argmax_agreement"] >= 0.999


@pytest.mark.slow
def test_bench_e2e_stage_reports_every_stage(tmp_path):
    record = run_benchmark(BenchConfig(
        model="attention-unet3d", size="32x32x16", base_filters=4, stage="e2e", scan_size="48x40x20",
        scan_spacing="2.5x2.5x3", device="cpu", repeat=1,
    ))
    stages = record["results"]["fast"]["stages_s"]
    assert {"read_s", "preprocess_s", "inference_s", "postprocess_s", "write_s"} <= set(stages)
    # the timed pass is the whole `agn segment` call: its stages fit inside it and make up most of it
    stage_ms = 1000.0 * sum(stages[k] for k in ("read_s", "preprocess_s", "inference_s", "postprocess_s", "write_s"))
    assert 0.5 * record["median_ms"] <= stage_ms <= record["median_ms"] + 5.0
    assert record["peak_memory_kind"] == "process_peak_rss" and record["peak_memory_bytes"] > record["input_bytes"]
    assert record["scan_size"] == [48, 40, 20] and record["input_bytes"] > 1000  # a real compressed phantom


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-net"], "unknown model"),
        (["--model", "unet3d", "--size", "160xx"], "160x160x96"),
        (["--model", "ag-sononet-8", "--size", "160x160x96"], "2D model"),
        (["--model", "ag-sononet-8", "--size", "64x64", "--stage", "window"], "3D segmentation"),
        (["--model", "unet3d", "--dtype", "bf16", "--no-fast"], "--no-fast"),
        (["--model", "unet3d", "--compare", "nothing"], "eager"),
        (["--model", "unet3d", "--stage", "bogus"], "--stage"),
    ],
)
def test_bench_errors_exit_2_with_one_line(args, message):
    from agn_cli.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", *args, "--device", "cpu", "--json"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_bench_error_via_subprocess_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "agn_cli", "bench", "--model", "ag-sononet-8", "--size", "32x32x16", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "208x272" in lines[0]


@pytest.mark.parametrize(("size", "expected"), [("32x32x16", "attention-unet3d"), ("64x80", "ag-sononet-8")])
def test_bench_model_defaults_follow_the_size(size, expected):
    record = bench_json("--size", size, "--device", "cpu", "--repeat", "1", "--warmup", "0")
    assert record["model"] == expected


def test_agreement_counts_matching_argmax_and_the_largest_logit_difference():
    import torch

    eager = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, -4.0]])
    fast = torch.tensor([[1.9, 1.0, 0.0], [0.0, 1.0, 1.5], [1.0, 0.5, -4.0]])
    assert agreement(fast, eager) == {"argmax_agreement": 0.666667, "max_abs_logit_diff": 2.0, "logit_scale": 4.0}
