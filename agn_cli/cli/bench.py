"""`agn bench`: milliseconds per forward (or training step), throughput, peak memory, in stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from agn_cli.cli.console import err, out, print_json
from agn_cli.cli.options import threads_option
from agn_cli.runtime.jsonio import dumps


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def _print_table(record: dict[str, Any]) -> None:
    stage, mode = record["stage"], record["mode"]
    what = {"model": "forward" if mode == "forward" else "training step", "window": "sliding-window pass", "e2e": "agn segment"}[stage]
    out.print(
        f"[bold]{record['model']}[/bold]  {record['params']:,} parameters"
        f"{' (paper configuration)' if record['paper_config'] else ''}  stage {stage}  mode {mode}"
    )
    out.print(
        f"device {record['device_name']} ({record['device']})  torch {record['torch']}  CUDA {record['cuda'] or '-'}  "
        f"cuDNN {record['cudnn'] or '-'}  threads {record['threads']}",
        highlight=False,
    )
    if stage == "model":
        out.print(f"input {' x '.join(map(str, record['input_shape']))}  repeat {record['repeat']}  warm-up {record['warmup']}")
    elif stage == "window":
        out.print(f"scan {'x'.join(map(str, record['scan_size']))}  window {'x'.join(map(str, record['size']))}  "
                  f"{record['windows']} windows  overlap {record['overlap']}  batch {record['batch']}")
    else:
        scan = record.get("input") or f"synthetic {'x'.join(map(str, record.get('scan_size', [])))} CT"
        out.print(f"scan {scan}  model grid {record.get('model_grid')}  {record.get('windows')} windows")
    table = Table(title=f"ms per {what}")
    unit = {"model": "items/s", "window": "scans/s", "e2e": "scans/s"}[stage]
    for column in ("path", "dtype", "median ms", "min ms", unit, "peak memory"):
        table.add_column(column, justify="left" if column in ("path", "dtype") else "right")
    for name, row in record["results"].items():
        path = row.get("path", {})
        label = name
        if name == "fast":
            bits = [b for b, on in (("folded BN", path.get("folded_batchnorm")), ("bf16 weights", path.get("bf16_weights")),
                                    ("channels-last", path.get("channels_last")),
                                    ("compiled", path.get("compiled") or path.get("compile")), ("CUDA graphs", path.get("cuda_graphs"))) if on]
            label = f"fast ({', '.join(bits)})" if bits else "fast"
        elif name == "eager":
            label = "eager fp32 (plain PyTorch)"
        table.add_row(
            label,
            str(row.get("dtype", path.get("dtype", "fp32"))),
            f"{row['median_ms']:.1f}",
            f"{row['min_ms']:.1f}",
            f"{row['items_per_s']:.2f}" if row.get("items_per_s") is not None else "-",
            f"{_gib(row.get('peak_memory_bytes'))}{' (process RSS)' if row.get('peak_memory_kind') == 'process_peak_rss' else ''}",
        )
    out.print(table)
    if stage == "e2e":
        stages = Table(title="seconds per stage")
        stages.add_column("path")
        keys = sorted({k for row in record["results"].values() for k in row.get("stages_s", {})},
                      key=lambda k: ["read_s", "preprocess_s", "inference_s", "postprocess_s", "write_s"].index(k)
                      if k in ("read_s", "preprocess_s", "inference_s", "postprocess_s", "write_s") else 99)
        for k in keys:
            stages.add_column(k.removesuffix("_s"), justify="right")
        for name, row in record["results"].items():
            stages.add_row(name, *[f"{row.get('stages_s', {}).get(k, float('nan')):.2f}" for k in keys])
        out.print(stages)
    if "speedup" in record:
        out.print(f"speed-up over plain fp32 eager: [bold]{record['speedup']:.2f}x[/bold] (median), {record['speedup_best']:.2f}x (best)")
    if "agreement" in record:
        a = record["agreement"]
        out.print(f"fast vs eager: argmax agreement {100 * a['argmax_agreement']:.3f} %, max |logit diff| "
                  f"{a['max_abs_logit_diff']:.2e} (logit scale {a['logit_scale']:.2e})")
        if a["argmax_agreement"] < 0.999 and not record.get("weights"):
            err.print("note: randomly initialised weights give near-tied class scores, so argmax agreement is pessimistic "
                      "here; tests check it on models with trained-like statistics.", style="dim")
    if record["device"].startswith("cpu"):
        err.print("note: CPU peak memory is the process-wide peak RSS (a high-water mark since start).", style="dim")


def command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Registered model name (see agn info); default attention-unet3d for a 3D --size, ag-sononet-8 for a 2D one."),
    size: Optional[str] = typer.Option(None, "--size", help="Input size: 160x160x96 for 3D (x, y, z), 208x272 for 2D; the window size for --stage window/e2e."),
    batch: int = typer.Option(1, "--batch", help="Batch size (windows per batch for --stage window/e2e)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32 or bf16 (default: the fast path's choice for the device; fp32 with --no-fast)."),
    mode: str = typer.Option("forward", "--mode", help="forward, or train (the optimiser step agn train seg|cls runs: its loss, backward, optimiser, clipping)."),
    repeat: Optional[int] = typer.Option(None, "--repeat", help="Timed calls (default: 5 CPU / 20 GPU; 1 for window and e2e on CPU)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Untimed calls before timing (default: 1 CPU / 5 GPU)."),
    stage: str = typer.Option("model", "--stage", help="model (network only), window (sliding window over --scan-size), e2e (agn segment on a scan)."),
    compare: Optional[str] = typer.Option(None, "--compare", help="'eager': also time the plain fp32 eager path and print the speed-up."),
    fast: bool = typer.Option(True, "--fast/--no-fast", help="Fast inference path (folded BN, channels-last, bf16 where it pays) or plain fp32 eager."),
    compile: bool = typer.Option(False, "--compile", help="Also torch.compile the fast path (slow to start; falls back to eager on failure)."),
    threads: Optional[int] = threads_option(),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Override the paper configuration's classes."),
    base_filters: Optional[int] = typer.Option(None, "--base-filters", help="Override the paper configuration's base filters."),
    scan_size: Optional[str] = typer.Option(None, "--scan-size", help="Whole-scan size: window default 256x256x160, e2e default 512x512x300."),
    scan_spacing: Optional[str] = typer.Option(None, "--scan-spacing", help="Synthetic scan spacing in mm for e2e (default 0.8x0.8x1.5)."),
    input: Optional[Path] = typer.Option(None, "--input", help="A real scan for --stage e2e instead of the synthetic one."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A segmentation checkpoint for --stage e2e (default: the model randomly initialised)."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap for --stage window/e2e."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the JSON record to this file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --output if it exists."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Benchmark a network: median/min ms, items/s, peak memory; --compare eager prints the fast path's speed-up."""

    from agn_cli.apps.bench import BenchConfig, run_benchmark
    from agn_cli.errors import AgnError
    from agn_cli.runtime.atomic import check_outputs, write_text_atomic

    if compare is not None and compare.strip().lower() != "eager":
        raise AgnError(f"--compare takes 'eager', got '{compare}'")
    if compare is not None and not fast:
        raise AgnError("--compare eager compares the fast path with eager; drop --no-fast")
    if output is not None:
        check_outputs([output], overwrite, inputs=(input, weights))
    if model is None:
        model = "ag-sononet-8" if size is not None and size.lower().count("x") == 1 else "attention-unet3d"
    cfg = BenchConfig(
        model=model, size=size, batch=batch, device=device, dtype=dtype, mode=mode, repeat=repeat, warmup=warmup,
        stage=stage, compare_eager=compare is not None, fast=fast, compile=compile, threads=threads,
        num_classes=num_classes, base_filters=base_filters, scan_size=scan_size, scan_spacing=scan_spacing,
        input=input, weights=weights, overlap=overlap,
    )
    say = (lambda message: None) if json_output else (lambda message: err.print(f"[dim]{message}[/dim]"))
    record = run_benchmark(cfg, progress=say)
    if output is not None:
        write_text_atomic(output, dumps(record), overwrite=overwrite)
    if json_output:
        print_json(record)
    else:
        _print_table(record)
