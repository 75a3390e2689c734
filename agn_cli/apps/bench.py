"""Honest benchmarks in stages: the network alone, sliding-window inference over a whole scan, and `agn segment`
end to end, each optionally against the plain fp32 eager path of the same model in the same process.

Numbers are wall-clock medians and minima over `repeat` timed calls after `warmup` untimed ones (CUDA is
synchronised around every call). Peak memory is `torch.cuda.max_memory_allocated` on GPUs (reset per variant) and
the process-wide peak resident set size (`getrusage`) on CPUs - a high-water mark since the process started, so on
CPU it bounds, rather than isolates, the memory of the variant measured last.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from agn_cli import __version__
from agn_cli.errors import AgnError
from agn_cli.models.unet import PAPER_CT_LABELS
from agn_cli.runtime.parsing import parse_size

STAGES = ("model", "window", "e2e")
MODES = ("forward", "train")


# ---------------------------------------------------------------------------------------------- environment


def peak_rss_bytes() -> int:
    """Process-wide peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def environment(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from: device, versions, threads, host."""
    from agn_cli.runtime.device import device_name
    from agn_cli.runtime.fast import cpu_bf16_supported

    info: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "agn": __version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16_native": cpu_bf16_supported(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    return info


# ------------------------------------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_max_allocated"}
    return {"peak_memory_bytes": peak_rss_bytes(), "peak_memory_kind": "process_peak_rss"}


def time_calls(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int) -> tuple[list[float], Any]:
    """Milliseconds of each of `repeat` calls after `warmup` untimed ones, and the last call's result."""
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeat)):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return times, result


def summarise(times_ms: Sequence[float], items: int) -> dict[str, Any]:
    median = statistics.median(times_ms)
    return {
        "median_ms": round(median, 3),
        "min_ms": round(min(times_ms), 3),
        "mean_ms": round(statistics.fmean(times_ms), 3),
        "times_ms": [round(t, 3) for t in times_ms],
        "items_per_s": round(items / (median / 1000.0), 3) if median > 0 else None,
        "items_per_s_best": round(items / (min(times_ms) / 1000.0), 3) if min(times_ms) > 0 else None,
    }


def agreement(fast_logits: torch.Tensor, eager_logits: torch.Tensor) -> dict[str, float]:
    """How closely the fast path reproduces the eager one: argmax agreement and largest logit difference."""
    a, b = fast_logits.detach().float().cpu(), eager_logits.detach().float().cpu()
    return {
        "argmax_agreement": round(float((a.argmax(1) == b.argmax(1)).float().mean()), 6),
        "max_abs_logit_diff": float((a - b).abs().max()),
        "logit_scale": float(b.abs().max()),
    }


# -------------------------------------------------------------------------------------------- configuration


@dataclass
class BenchConfig:
    model: str
    size: str | None = None
    batch: int = 1
    device: str = "auto"
    dtype: str | None = None  # None: the fast path's per-device choice (fp32 without --fast)
    mode: str = "forward"
    repeat: int | None = None
    warmup: int | None = None
    stage: str = "model"
    compare_eager: bool = False
    fast: bool = True
    compile: bool = False
    threads: int | None = None
    num_classes: int | None = None
    base_filters: int | None = None
    scan_size: str | None = None
    scan_spacing: str | None = None
    input: Path | None = None
    weights: Path | None = None
    overlap: float = 0.5
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _model_kwargs(cfg: BenchConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if cfg.num_classes is not None:
        if cfg.num_classes < 1:
            raise AgnError("--num-classes must be at least 1")
        kwargs["num_classes"] = cfg.num_classes
    if cfg.base_filters is not None:
        if cfg.base_filters < 1:
            raise AgnError("--base-filters must be at least 1")
        kwargs["base_filters"] = cfg.base_filters
    return kwargs


def build_model(cfg: BenchConfig) -> tuple[nn.Module, Any]:
    """The registered network in its paper configuration (or with the overrides given), seeded."""
    from agn_cli.models import create_model, get_entry

    try:
        entry = get_entry(cfg.model)
    except KeyError as exc:
        raise AgnError(str(exc.args[0])) from None
    torch.manual_seed(cfg.seed)
    try:
        model = create_model(cfg.model, **_model_kwargs(cfg))
    except TypeError as exc:
        raise AgnError(f"{cfg.model} does not take these options: {exc}") from None
    return model, entry


def _validate(cfg: BenchConfig) -> None:
    if cfg.stage not in STAGES:
        raise AgnError(f"unknown --stage '{cfg.stage}'; choose one of {', '.join(STAGES)}")
    if cfg.mode not in MODES:
        raise AgnError(f"unknown --mode '{cfg.mode}'; choose one of {', '.join(MODES)}")
    if cfg.dtype is not None and cfg.dtype not in ("fp32", "bf16"):
        raise AgnError(f"unknown --dtype '{cfg.dtype}'; choose fp32 or bf16")
    if not cfg.fast and cfg.dtype == "bf16":
        raise AgnError("--dtype bf16 runs on the fast path; drop --no-fast (or use --dtype fp32)")
    if cfg.batch < 1:
        raise AgnError("--batch must be at least 1")
    if cfg.repeat is not None and cfg.repeat < 1:
        raise AgnError("--repeat must be at least 1")
    if cfg.warmup is not None and cfg.warmup < 0:
        raise AgnError("--warmup must be 0 or more")
    if cfg.stage != "model" and cfg.mode != "forward":
        raise AgnError(f"--stage {cfg.stage} measures inference; --mode train needs --stage model")
    if not 0.0 <= cfg.overlap < 1.0:
        raise AgnError(f"--overlap must be in [0, 1), got {cfg.overlap}")


def _setup_device(cfg: BenchConfig) -> torch.device:
    from agn_cli.runtime.device import configure_cpu_threads, resolve_device

    device = resolve_device(cfg.device)
    configure_cpu_threads(cfg.threads)
    return device


def _prepare(model: nn.Module, device: torch.device, cfg: BenchConfig, fast: bool) -> nn.Module:
    from agn_cli.runtime.fast import prepare_model

    if not fast:
        import copy

        return prepare_model(copy.deepcopy(model), device, fast=False)
    return prepare_model(model, device, fast=True, dtype=cfg.dtype, compile=cfg.compile or None)


def _fast_description(prepared: nn.Module) -> dict[str, Any]:
    describe = getattr(prepared, "describe", None)
    return describe() if callable(describe) else {"dtype": "fp32", "eager": True}


def run_benchmark(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the stage `cfg` asks for and return the record (what `--json` prints)."""
    _validate(cfg)
    model, entry = build_model(cfg)
    if cfg.stage in ("window", "e2e") and (entry.dims != 3 or entry.task != "segmentation"):
        raise AgnError(f"--stage {cfg.stage} runs a 3D segmentation model; {cfg.model} is a {entry.dims}D {entry.task} model")
    default_size = {3: "160x160x96", 2: "208x272"}[entry.dims]
    try:
        size = parse_size(cfg.size or default_size, entry.dims, example=default_size)
    except AgnError as exc:
        raise AgnError(f"{cfg.model} is a {entry.dims}D model: {exc}") from None
    device = _setup_device(cfg)
    from agn_cli.models import count_parameters
    from agn_cli.runtime.device import check_input_fits

    # before any tensor is allocated: too small for the network's poolings, or more memory than the device has
    check_input_fits(model, (cfg.batch, int(getattr(model, "in_channels", 1)), *size), device, train=cfg.mode == "train",
                     name=cfg.model)

    record: dict[str, Any] = {
        "benchmark": "agn bench",
        "stage": cfg.stage,
        "mode": cfg.mode,
        "model": cfg.model,
        "model_config": dict(getattr(model, "agn_config", {})),
        "paper_config": not _model_kwargs(cfg),
        "params": count_parameters(model),
        "batch": cfg.batch,
        "size": list(size),
        "fast": cfg.fast,
        "weights": str(cfg.weights) if cfg.weights else None,  # None: randomly initialised (timing only)
        **environment(device),
    }
    say = progress or (lambda message: None)
    if cfg.stage == "model":
        record.update(_bench_model(model, entry, size, device, cfg, say))
    elif cfg.stage == "window":
        record.update(_bench_window(model, size, device, cfg, say))
    else:
        record.update(_bench_e2e(model, size, device, cfg, say))
    primary = record["results"]["fast" if cfg.fast else "eager"]
    for key in ("median_ms", "min_ms", "items_per_s", "peak_memory_bytes", "peak_memory_kind"):
        if key in primary:
            record[key] = primary[key]
    if cfg.compare_eager and cfg.fast and "eager" in record["results"]:
        record["speedup"] = round(record["results"]["eager"]["median_ms"] / primary["median_ms"], 3)
        record["speedup_best"] = round(record["results"]["eager"]["min_ms"] / primary["min_ms"], 3)
    return record


# ------------------------------------------------------------------------------------------- stage: model


def _train_step_fn(model: nn.Module, task: str, x: torch.Tensor, target: torch.Tensor, device: torch.device, dtype: str,
                   fast: bool, compile: bool):
    """The optimiser step `agn train seg|cls` runs (its loss, optimiser, clipping; `TrainStep`) with the task's
    default recipe, on one batch, as a closure: Dice + CE with deep supervision for U-Nets, the SonoNet loss else."""
    from agn_cli.train.engine import TrainStep

    model = model.to(device)
    if fast:
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[x.dim()]
        model = model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    if task == "segmentation":
        from agn_cli.train.seg_trainer import SegTask, SegTrainConfig

        runner, cfg = SegTask(), SegTrainConfig(dataset="", output="")
    else:
        from agn_cli.train.cls_trainer import ClsTask, ClsTrainConfig

        aggregation = getattr(model, "aggregation", "deep-sup")  # the loss follows the network's aggregation
        runner, cfg = ClsTask(), ClsTrainConfig(dataset="", output="", aggregation=aggregation)
    if fast and compile:
        from agn_cli.runtime.fast import compile_available

        compile = compile_available()
    step = TrainStep.build(runner, cfg, model, device, "bf16" if fast and dtype == "bf16" else "fp32",
                           compile=fast and compile)
    model.train()
    loss = "Dice+CE, deep supervision " + cfg.deep_supervision if task == "segmentation" else "CE, aggregation " + cfg.aggregation
    described = {"loss": loss, "optimizer": cfg.optimizer, "lr": step.optimizer.param_groups[0]["lr"], "grad_clip": cfg.grad_clip}
    return (lambda: step([(x, target)])), described


def _bench_model(model: nn.Module, entry: Any, size: tuple, device: torch.device, cfg: BenchConfig, say) -> dict[str, Any]:
    import copy

    from agn_cli.runtime.fast import resolve_options

    in_channels = int(getattr(model, "in_channels", 1))
    generator = torch.Generator().manual_seed(cfg.seed)
    x_cpu = torch.randn((cfg.batch, in_channels, *size), generator=generator)
    repeat = cfg.repeat if cfg.repeat is not None else (20 if device.type == "cuda" else 5)
    warmup = cfg.warmup if cfg.warmup is not None else (5 if device.type == "cuda" else 1)
    variants = [("fast", True)] if cfg.fast else [("eager", False)]
    if cfg.compare_eager and cfg.fast:
        variants.append(("eager", False))
    results: dict[str, Any] = {}
    outputs: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {"repeat": repeat, "warmup": warmup}
    if cfg.mode == "forward":
        for name, fast in variants:
            say(f"{name}: preparing")
            prepared = _prepare(model, device, cfg, fast)
            x = x_cpu.to(device)
            _reset_peak(device)

            def call(prepared=prepared, x=x):
                with torch.inference_mode():
                    return prepared(x)

            if fast and cfg.compile:  # compiling happens on the first call: time it separately
                start = time.perf_counter()
                call()
                _sync(device)
                extra["compile_s"] = round(time.perf_counter() - start, 2)
            say(f"{name}: timing {repeat} calls after {warmup} warm-up")
            times, out = time_calls(call, device, repeat, warmup)
            results[name] = {**summarise(times, cfg.batch), **_peak(device), "path": _fast_description(prepared)}
            results[name]["dtype"] = results[name]["path"].get("dtype", "fp32")
            outputs[name] = out.detach().float().cpu()
            del prepared, out
        if "eager" in outputs and "fast" in outputs:
            extra["agreement"] = agreement(outputs["fast"], outputs["eager"])
    else:
        num_classes = int(getattr(model, "num_classes", 2))
        shape = (cfg.batch, *size) if entry.task == "segmentation" else (cfg.batch,)
        target = torch.randint(0, num_classes, shape, generator=generator).to(device)
        for name, fast in variants:
            dtype = (cfg.dtype or resolve_options(device).dtype) if fast else "fp32"
            say(f"{name}: timing {repeat} training steps ({dtype})")
            _reset_peak(device)
            step, extra["train_step"] = _train_step_fn(
                copy.deepcopy(model), entry.task, x_cpu.to(device), target, device, dtype, fast, cfg.compile
            )
            times, _ = time_calls(step, device, repeat, warmup)
            results[name] = {**summarise(times, cfg.batch), **_peak(device), "dtype": dtype}
            results[name]["path"] = {"dtype": dtype, "channels_last": fast, "compile": bool(fast and cfg.compile)}
            del step
    return {"input_shape": list(x_cpu.shape), "results": results, **extra}


# ------------------------------------------------------------------------------------------ stage: window


def _bench_window(model: nn.Module, size: tuple, device: torch.device, cfg: BenchConfig, say) -> dict[str, Any]:
    from agn_cli.ct.sliding_window import predict_volume, window_starts

    scan = parse_size(cfg.scan_size or "256x256x160", 3, what="--scan-size")
    generator = torch.Generator().manual_seed(cfg.seed)
    volume = torch.randn((int(getattr(model, "in_channels", 1)), *scan), generator=generator)
    windows = int(np.prod([len(window_starts(s, min(p, s), cfg.overlap)) for s, p in zip(scan, size)]))
    repeat = cfg.repeat if cfg.repeat is not None else (5 if device.type == "cuda" else 1)
    warmup = cfg.warmup if cfg.warmup is not None else 1
    variants = [("fast", True)] if cfg.fast else [("eager", False)]
    if cfg.compare_eager and cfg.fast:
        variants.append(("eager", False))
    results: dict[str, Any] = {}
    outputs: dict[str, torch.Tensor] = {}
    for name, fast in variants:
        prepared = _prepare(model, device, cfg, fast)
        window = tuple(min(p, s) for p, s in zip(size, scan))
        with torch.inference_mode():  # warm-up: one batch of windows, not a whole pass
            for _ in range(warmup):
                prepared(torch.zeros((cfg.batch, volume.shape[0], *window), device=device))
        _sync(device)
        _reset_peak(device)
        say(f"{name}: {repeat} sliding-window pass(es), {windows} windows each")

        def call(prepared=prepared):
            return predict_volume(prepared, volume, size, device=device, overlap=cfg.overlap, batch_size=cfg.batch)

        times, prediction = time_calls(call, device, repeat, 0)
        results[name] = {**summarise(times, 1), **_peak(device), "path": _fast_description(prepared)}
        results[name]["dtype"] = results[name]["path"].get("dtype", "fp32")
        results[name]["windows_per_s"] = round(windows / (results[name]["median_ms"] / 1000.0), 3)
        outputs[name] = prediction.probabilities.unsqueeze(0)
        del prepared, prediction
    record: dict[str, Any] = {
        "scan_size": list(scan),
        "windows": windows,
        "overlap": cfg.overlap,
        "repeat": repeat,
        "results": results,
    }
    if "eager" in outputs and "fast" in outputs:
        record["agreement"] = agreement(outputs["fast"], outputs["eager"])
    return record


# ---------------------------------------------------------------------------------------------- stage: e2e


def _e2e_card(model: nn.Module, size: tuple) -> Any:
    from agn_cli.ct.preprocess import DEFAULT_CT_NORMALISATION
    from agn_cli.runtime.checkpoint import ModelCard

    config = dict(getattr(model, "agn_config", {}))
    num_classes = int(getattr(model, "num_classes", 4))
    labels = dict(PAPER_CT_LABELS) if num_classes == 4 else {0: "background", **{i: f"class{i}" for i in range(1, num_classes)}}
    return ModelCard(
        architecture=getattr(model, "agn_name", "attention-unet3d"),
        model_kwargs=config,
        task="segmentation",
        labels=labels,
        spacing=[2.0, 2.0, 2.0],
        normalisation=dict(DEFAULT_CT_NORMALISATION),
        patch_size=list(size),
        notes="random initialisation; agn bench e2e timing only",
    )


def _bench_e2e(model: nn.Module, size: tuple, device: torch.device, cfg: BenchConfig, say) -> dict[str, Any]:
    from agn_cli.ct.segmenter import CaseOutputs, Segmenter, SegmentOptions, segment_case

    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agn-bench-") as tmp:
        tmpdir = Path(tmp)
        if cfg.input is not None:
            source = Path(cfg.input)
            if not source.exists():
                raise AgnError(f"input scan not found: {source}")
            record["input"] = str(source)
        else:
            import SimpleITK as sitk

            from agn_cli.synth.ct_phantom import phantom_scan

            scan = parse_size(cfg.scan_size or "512x512x300", 3, what="--scan-size")
            spacing = parse_size(cfg.scan_spacing or "0.8x0.8x1.5", 3, what="--scan-spacing", cast=float, example="0.8x0.8x1.5")
            say(f"writing a synthetic {'x'.join(map(str, scan))} CT phantom ({'x'.join(f'{s:g}' for s in spacing)} mm)")
            source = tmpdir / "synthetic_ct.nii.gz"
            image = phantom_scan(scan, spacing, seed=cfg.seed)
            sitk.WriteImage(image, str(source), useCompression=True)
            del image
            record["scan_size"], record["scan_spacing"] = list(scan), list(spacing)
        record["input_bytes"] = source.stat().st_size if source.is_file() else None
        repeat = cfg.repeat if cfg.repeat is not None else 1
        variants = [("fast", True)] if cfg.fast else [("eager", False)]
        if cfg.compare_eager and cfg.fast:
            variants.append(("eager", False))
        results: dict[str, Any] = {}
        options = SegmentOptions(overlap=cfg.overlap, batch_size=cfg.batch)
        for name, fast in variants:
            t0 = time.perf_counter()
            if cfg.weights is not None:
                segmenter = Segmenter.from_checkpoint(cfg.weights, device, fast=fast)
            else:
                import copy

                segmenter = Segmenter(copy.deepcopy(model), _e2e_card(model, size), device, fast=fast)
            load_s = time.perf_counter() - t0
            _reset_peak(device)
            totals, stages = [], []
            for i in range(repeat):
                say(f"{name}: agn segment pass {i + 1}/{repeat}")
                outputs = CaseOutputs(mask=tmpdir / f"mask_{name}_{i}.nii.gz")
                _sync(device)
                start = time.perf_counter()
                case = segment_case(segmenter, source, outputs, options, overwrite=True)
                _sync(device)
                totals.append((time.perf_counter() - start) * 1000.0)
                stages.append(case.get("timings_s", {}))
                record["windows"] = case.get("windows")
                record["model_grid"] = case.get("model_grid", {}).get("size")
            best = int(np.argmin(totals))
            results[name] = {
                **summarise(totals, 1),
                **_peak(device),
                "stages_s": stages[best],
                "load_s": round(load_s, 3),
                "path": _fast_description(segmenter.model),
            }
            results[name]["dtype"] = results[name]["path"].get("dtype", "fp32")
            if device.type == "cuda":
                results[name]["process_peak_rss_bytes"] = peak_rss_bytes()
            del segmenter
        record["results"] = results
        record["repeat"] = repeat
    return record
