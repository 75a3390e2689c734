#!/usr/bin/env python
"""Time the fast-path variants of attention-unet3d and print where the GPU time goes (a diagnostic, not a target).

    python benchmarks/gpu_fast_path_sweep.py                  # CUDA, 1x1x160x160x96, paper configuration
    python benchmarks/gpu_fast_path_sweep.py cpu 32x32x32     # smoke test of the script itself

Prints the median ms (CUDA events, 50 calls after 10 warm-ups) of each `prepare_model` variant and of plain fp32
eager, a `torch.profiler` kernel table for two of them, and the time of a training step (batch 2) three ways. The
choice of the CUDA default for 3D networks (bf16 weights, NCDHW; see agn_cli/fast.py) came from this script's output
on an H100: benchmarks/results/cuda-nvidia-h100-fast-path-sweep-2026-11-27.txt.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from agn_cli.apps.bench import _loss, _train_step_fn  # noqa: E402
from agn_cli.models import create_model  # noqa: E402
from agn_cli.runtime.fast import prepare_model  # noqa: E402

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"
SIZE = tuple(int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "160x160x96").split("x"))
CUDA = DEVICE.startswith("cuda")

VARIANTS = {  # name -> prepare_model keyword arguments (fast=True)
    "bf16 weights, NCDHW, graphs (CUDA 3D default)": dict(dtype="bf16", bf16_weights=True, channels_last=False),
    "bf16 weights, channels-last, graphs": dict(dtype="bf16", bf16_weights=True, channels_last=True),
    "autocast, channels-last, graphs": dict(dtype="bf16", bf16_weights=False, channels_last=True),
    "autocast, NCDHW, graphs": dict(dtype="bf16", bf16_weights=False, channels_last=False),
    "fp32 (TF32), channels-last, graphs": dict(dtype="fp32", channels_last=True),
    "bf16 weights, NCDHW, no graphs": dict(dtype="bf16", bf16_weights=True, channels_last=False, cuda_graphs=False),
}
PROFILED = ("bf16 weights, NCDHW, graphs (CUDA 3D default)", "autocast, channels-last, graphs")


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def median_ms(fn, repeat: int = 50, warmup: int = 10) -> float:
    """Median of `repeat` calls; CUDA events on the GPU, wall clock on the CPU."""
    times = []
    for _ in range(warmup):
        fn()
    sync()
    for _ in range(repeat):
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            sync()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def kernel_table(fn, calls: int = 5) -> str:
    """The top kernels (or CPU ops) by total time over `calls` calls, after warm-up."""
    for _ in range(3):
        fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if CUDA else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        sync()
    sort = "device_time_total" if CUDA else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=22, max_name_column_width=90)


def bf16_ncdhw_train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    """Adam step under bf16 autocast without channels-last (the bench's fast step uses channels-last)."""
    model = model.to(DEVICE).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(DEVICE).type, dtype=torch.bfloat16):
            out = model.forward_train(x)
        _loss(out, target).backward()
        optimiser.step()

    return step


def main() -> None:
    torch.manual_seed(0)
    model = create_model("attention-unet3d").eval()
    x = torch.randn(1, 1, *SIZE, device=DEVICE)
    variants = {name: kw for name, kw in VARIANTS.items() if CUDA or ", graphs" not in name}  # graphs: CUDA only
    with torch.inference_mode():
        for name, kwargs in variants.items():
            prepared = prepare_model(model, DEVICE, **kwargs)
            print(f"{name}: {median_ms(lambda p=prepared: p(x)):.2f} ms", flush=True)
        plain = prepare_model(copy.deepcopy(model), DEVICE, fast=False)
        print(f"plain fp32 eager: {median_ms(lambda: plain(x)):.2f} ms", flush=True)
        for name in PROFILED:
            kwargs = dict(VARIANTS[name], cuda_graphs=False)  # graphs hide the kernels from the profiler
            prepared = prepare_model(model, DEVICE, **kwargs)
            print(f"\n#### kernels: {name}, graphs off, 5 calls\n{kernel_table(lambda p=prepared: p(x))}", flush=True)

    xb = torch.randn(2, 1, *SIZE, device=DEVICE)
    target = torch.randint(0, 4, (2, *SIZE), device=DEVICE)
    device = torch.device(DEVICE)
    steps = {
        "train step, bf16 autocast + channels-last (agn bench fast)": lambda m: _train_step_fn(m, xb, target, device, "bf16", True, False),
        "train step, bf16 autocast, NCDHW": lambda m: bf16_ncdhw_train_step(m, xb, target),
        "train step, fp32 eager": lambda m: _train_step_fn(m, xb, target, device, "fp32", False, False),
    }
    for name, make in steps.items():
        step = make(copy.deepcopy(model))
        print(f"{name}: {median_ms(step, repeat=15, warmup=5):.1f} ms", flush=True)


if __name__ == "__main__":
    main()
