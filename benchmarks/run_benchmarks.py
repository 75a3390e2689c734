#!/usr/bin/env python
"""Run the issue-6 benchmark set on this machine and record it under benchmarks/results/.

    python benchmarks/run_benchmarks.py                 # CPU or GPU set, whichever this machine has
    python benchmarks/run_benchmarks.py --device cpu --only unet3d-forward sononet8-throughput
    python benchmarks/run_benchmarks.py --list

Every item runs `agn bench ... --json` in a fresh process, so each peak-memory figure (process peak RSS on CPU,
torch.cuda.max_memory_allocated on GPU) belongs to that item alone. The JSON written holds every record, the
machine, and each target with its measured value and pass/fail. Results are wall-clock: on a shared machine they
are pessimistic; `load_average` in each record says how busy the machine was.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# name -> (devices it runs on, agn bench arguments, target description, (metric getter, comparison, threshold))
CPU_ITEMS = {
    "unet3d-forward": (
        ["--model", "attention-unet3d", "--size", "160x160x96", "--compare", "eager", "--repeat", "3", "--warmup", "1"],
        "attention-unet3d 1x1x160x160x96 forward: fast >= 2x faster than plain fp32 eager",
        ("speedup", ">=", 2.0),
    ),
    "sononet8-throughput": (
        ["--model", "ag-sononet-8", "--size", "208x272", "--batch", "256", "--compare", "eager", "--repeat", "3", "--warmup", "1"],
        "ag-sononet-8 208x272 batch 256: >= 100 frames/s",
        ("items_per_s", ">=", 100.0),
    ),
    "unet3d-window": (
        ["--model", "attention-unet3d", "--stage", "window", "--size", "160x160x96", "--scan-size", "256x256x160", "--repeat", "1"],
        "sliding window, 256x256x160 scan (27 windows of 160x160x96, overlap 0.5): recorded, no target",
        None,
    ),
    "segment-e2e": (
        ["--model", "attention-unet3d", "--stage", "e2e", "--size", "160x160x96", "--scan-size", "512x512x300",
         "--scan-spacing", "0.8x0.8x1.5", "--repeat", "1"],
        "agn segment end to end, 512x512x300 CT at 0.8x0.8x1.5 mm: <= 60 s and <= 4 GiB peak RAM",
        ("median_s_and_peak", "<=", (60.0, 4.0)),
    ),
}
GPU_ITEMS = {
    "unet3d-forward": (
        ["--model", "attention-unet3d", "--size", "160x160x96", "--compare", "eager", "--repeat", "50", "--warmup", "10"],
        "attention-unet3d 1x1x160x160x96 forward: <= 4 ms and >= 5x faster than plain fp32 eager",
        ("median_ms_and_speedup", "<=", (4.0, 5.0)),
    ),
    "unet3d-forward-compiled": (
        ["--model", "attention-unet3d", "--size", "160x160x96", "--compare", "eager", "--compile", "--repeat", "50",
         "--warmup", "10"],
        "the same with torch.compile: recorded",
        ("median_ms_and_speedup", "<=", (4.0, 5.0)),
    ),
    "unet3d-train": (
        ["--model", "attention-unet3d", "--size", "160x160x96", "--mode", "train", "--batch", "2", "--dtype", "bf16",
         "--compare", "eager", "--repeat", "20", "--warmup", "5"],
        "training step, batch 2, bf16: >= 3x faster than fp32 eager",
        ("speedup", ">=", 3.0),
    ),
    "sononet8-throughput": (
        ["--model", "ag-sononet-8", "--size", "208x272", "--batch", "256", "--compare", "eager", "--repeat", "20",
         "--warmup", "5"],
        "ag-sononet-8 208x272 batch 256: >= 20,000 frames/s",
        ("items_per_s", ">=", 20000.0),
    ),
    "segment-e2e": (
        ["--model", "attention-unet3d", "--stage", "e2e", "--size", "160x160x96", "--scan-size", "512x512x300",
         "--scan-spacing", "0.8x0.8x1.5", "--repeat", "3", "--batch", "4"],
        "agn segment end to end, 512x512x300 CT: <= 5 s",
        ("median_s", "<=", 5.0),
    ),
}


def _check(record: dict, rule) -> dict:
    if rule is None or "error" in record:
        return {"passed": None}
    metric, _, threshold = rule
    if metric == "speedup":
        value = record.get("speedup")
        return {"value": value, "threshold": threshold, "passed": value is not None and value >= threshold}
    if metric == "items_per_s":
        value = record.get("items_per_s")
        return {"value": value, "threshold": threshold, "passed": value is not None and value >= threshold}
    if metric == "median_s":
        value = record["median_ms"] / 1000.0
        return {"value": round(value, 2), "threshold": threshold, "passed": value <= threshold}
    if metric == "median_s_and_peak":
        seconds, gib = record["median_ms"] / 1000.0, record["peak_memory_bytes"] / 2**30
        return {"value": [round(seconds, 2), round(gib, 2)], "threshold": list(threshold),
                "passed": seconds <= threshold[0] and gib <= threshold[1]}
    if metric == "median_ms_and_speedup":
        ms, speedup = record["median_ms"], record.get("speedup")
        return {"value": [ms, speedup], "threshold": list(threshold),
                "passed": ms <= threshold[0] and speedup is not None and speedup >= threshold[1]}
    return {"passed": None}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def run_item(name: str, args: list[str], device: str, threads: int | None, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "agn_cli", "bench", *args, "--device", device, "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    print(f"[{name}] agn {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "command": cmd}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "returncode": proc.returncode, "command": cmd}
    record = json.loads(proc.stdout)
    record["command"] = "agn " + " ".join(cmd[3:])
    record["wall_s"] = round(time.perf_counter() - start, 1)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (GPU set on CUDA, CPU set otherwise), cpu or cuda")
    parser.add_argument("--only", nargs="*", help="run only these items")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores available)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per item")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default benchmarks/results/<device>-<date>.json)")
    parser.add_argument("--list", action="store_true", help="list the items and exit")
    ns = parser.parse_args(argv)

    import torch

    device = ns.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    items = GPU_ITEMS if device.startswith("cuda") else CPU_ITEMS
    if ns.list:
        for name, (args, target, _) in items.items():
            print(f"{name}: {target}\n    agn bench {' '.join(args)} --device {device}")
        return 0
    selected = {k: v for k, v in items.items() if not ns.only or k in ns.only}
    unknown = set(ns.only or []) - set(items)
    if unknown:
        parser.error(f"unknown item(s) {', '.join(sorted(unknown))}; see --list")

    sys.path.insert(0, str(ROOT))
    from agn_cli.apps.bench import environment

    machine = environment(torch.device(device if device != "cuda" else "cuda:0"))
    results = {}
    for name, (args, target, rule) in selected.items():
        record = run_item(name, args, device, ns.threads, ns.timeout)
        results[name] = {"target": target, "check": _check(record, rule), "record": record}
        check = results[name]["check"]
        status = "n/a" if check.get("passed") is None else ("PASS" if check["passed"] else "MISS")
        summary = record.get("error") or (
            f"median {record['median_ms']:.1f} ms, {record.get('items_per_s')} items/s"
            + (f", speed-up {record['speedup']}x" if "speedup" in record else "")
        )
        print(f"[{name}] {status}: {summary}", file=sys.stderr, flush=True)
    payload = {"machine": machine, "device": device, "results": results}
    date = _dt.date.today().isoformat()
    output = ns.output or RESULTS / f"{_slug(device + '-' + machine['device_name'])}-{date}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, output)
    print(str(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
