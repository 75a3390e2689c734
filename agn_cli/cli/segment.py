"""`agn segment`: CT scans in (NIfTI, NRRD, MHA/MHD, DICOM folders, batches), uint8 label maps out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from agn_cli.cli.console import err, note, out, print_json, warn
from agn_cli.cli.options import DEVICE, FAST, input_option, merge_inputs, threads_option
from agn_cli.errors import AgnError


def command(
    inputs: Optional[List[Path]] = typer.Argument(
        None, help="CT scans: NIfTI/NRRD/MHA/MHD files, DICOM series folders, or a folder of scans (batch).", show_default=False
    ),
    more_inputs: Optional[List[Path]] = input_option(),
    output: str = typer.Option(
        ..., "-o", "--output",
        help="Label map file (.nii.gz, .nii, .nrrd, .mha, .mhd), or a folder (ends in '/', or several scans).",
    ),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Checkpoint file or run folder (default: installed default CT model)."),
    device: str = DEVICE,
    threads: Optional[int] = threads_option(),
    overlap: float = typer.Option(0.5, "--overlap", min=0.0, max=0.95, help="Sliding-window overlap (fraction of the patch)."),
    tta: bool = typer.Option(False, "--tta", help="Mirroring test-time augmentation over the axes the model was trained with flips on (2 to 8 passes per window)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Windows per forward pass."),
    probabilities: Optional[Path] = typer.Option(None, "--probabilities", help="Write class probabilities (4D NIfTI at model resolution)."),
    attention: Optional[Path] = typer.Option(
        None, "--attention", help="Write each gate's attention map on the input grid: PATH_level2.nii.gz, ... (folder for batches)."
    ),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG: three orthogonal slices with mask and attention."),
    largest_component: Optional[bool] = typer.Option(
        None, "--largest-component/--all-components",
        help="Keep only the largest connected component per label, or every component (default: the model card's choice).",
    ),
    series: Optional[str] = typer.Option(None, "--series", help="DICOM SeriesInstanceUID to read (default: the series with most slices)."),
    allow_nonuniform: bool = typer.Option(
        False, "--allow-nonuniform",
        help="Accept a DICOM series with a missing slice or uneven slice spacing (read on a uniform grid; warned and recorded).",
    ),
    fast: bool = FAST,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing outputs (batches: re-run cases already done or left incomplete)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result record(s) as JSON on stdout."),
) -> None:
    """Segment abdominal organs in CT volumes; the mask lies exactly on the input grid.

    Exit codes: 0 all cases segmented or already done; 1 a batch with failed cases; 2 bad input or usage."""
    from agn_cli.ct.outputs import case_state, plan_segmentation

    # every output is named and checked before the scan is read, the model loaded or torch imported
    plan = plan_segmentation(merge_inputs(inputs, more_inputs, "CT scans"), output, probabilities, attention, preview, overwrite, weights)
    if not plan.batch:
        from agn_cli.ct.volume import read_volume

        source, single_outputs = plan.cases[0]
        started = time.perf_counter()
        # input errors before the model loads (and torch is imported); the list hands the scan over so it is freed
        # before inference
        scan = [read_volume(source, series_uid=series, notify=note, allow_nonuniform=allow_nonuniform)]
        read_s = time.perf_counter() - started

    from agn_cli.ct.segmenter import Segmenter, SegmentOptions
    from agn_cli.runtime.checkpoint import find_default_weights, resolve_checkpoint
    from agn_cli.runtime.device import configure_cpu_threads, resolve_device

    if weights is None:
        default = find_default_weights("segmentation", dims=3)
        if default is None:
            raise AgnError(
                "no segmentation weights installed; pass --weights, train one with 'agn train seg ...', or for a pipeline "
                "test create random ones with 'agn weights init --model attention-unet3d --labels spleen,pancreas,kidney -o w.safetensors'"
            )
        note(f"using default weights {default}")
        weights = default
    weights_path = resolve_checkpoint(weights)
    torch_device = resolve_device(device)
    used_threads = configure_cpu_threads(threads) if torch_device.type == "cpu" else None
    segmenter = Segmenter.from_checkpoint(weights_path, torch_device, fast=fast)
    options = SegmentOptions(overlap=overlap, tta=tta, batch_size=batch_size, largest_component=largest_component)
    if tta:
        axes = segmenter.tta_axes()
        passes = 2 ** len(axes)
        note(f"--tta: mirroring over {','.join('xyz'[a] for a in axes)} runs {passes} passes per window ({passes - 1} extra)")
    if not json_out:
        note(f"device {torch_device}" + (f" ({used_threads} threads)" if used_threads else "") + f", model {segmenter.card.architecture}")

    if not plan.batch:
        record = _run_case(segmenter, source, single_outputs, options, series, overwrite, allow_nonuniform, image=(scan, read_s))
        if json_out:
            print_json(record)
        else:
            _print_single(record)
        return

    records: list[dict[str, Any]] = []
    for index, (source, outputs) in enumerate(plan.cases, 1):
        state = case_state(outputs)
        if state == "done" and not overwrite:
            records.append({"input": str(source), "output": str(outputs.mask), "status": "skipped", "detail": "done (sidecar matches)"})
            continue
        started = time.perf_counter()
        if state == "incomplete" and not overwrite:
            detail = "outputs of an interrupted or other run without a matching sidecar; pass --overwrite to redo the case"
            err.print(f"[red]error:[/red] {source}: {outputs.mask}: {detail}", highlight=False)
            records.append({"input": str(source), "output": str(outputs.mask), "status": "failed", "detail": detail})
            continue
        if not json_out:
            note(f"[{index}/{len(plan.cases)}] {source}")
        try:
            record = _run_case(segmenter, source, outputs, options, series, overwrite, allow_nonuniform)
            record["status"] = "ok"
        except AgnError as exc:
            record = {"input": str(source), "output": str(outputs.mask), "status": "failed", "detail": str(exc)}
            err.print(f"[red]error:[/red] {source}: {exc}", highlight=False)
        except Exception as exc:  # keep the batch going; the summary names the failure
            record = {"input": str(source), "output": str(outputs.mask), "status": "failed", "detail": f"{type(exc).__name__}: {exc}"}
            err.print(f"[red]error:[/red] {source}: {type(exc).__name__}: {exc}", highlight=False)
        record["seconds"] = round(time.perf_counter() - started, 2)
        records.append(record)
    failed = sum(r["status"] == "failed" for r in records)
    if json_out:
        print_json(records)
    else:
        _print_summary(records)
    if failed:
        raise typer.Exit(1)


def _run_case(segmenter, source: Path, outputs, options, series, overwrite, allow_nonuniform, image=(None, None)) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agn_cli.ct.segmenter import segment_case

    if not err.is_terminal:  # no live bar (and no stray blank lines) in logs and pipes
        return segment_case(
            segmenter, source, outputs, options, series, overwrite, notify=note, warn=warn, image=image[0], read_seconds=image[1],
            allow_nonuniform=allow_nonuniform,
        )
    with Progress(
        TextColumn("windows"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("windows", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return segment_case(
            segmenter, source, outputs, options, series, overwrite, notify=note, warn=warn, progress=progress, image=image[0],
            read_seconds=image[1], allow_nonuniform=allow_nonuniform,
        )


def _print_single(record: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{record['output']}")
    for column, justify in (("id", "right"), ("label", "left"), ("voxels", "right"), ("volume (mL)", "right")):
        table.add_column(column, justify=justify)
    for label_id, stats in record["labels"].items():
        if label_id == "0":
            continue
        table.add_row(label_id, stats["name"], str(stats["voxels"]), f"{stats['volume_ml']:.1f}")
    out.print(table)
    timings = ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in record["timings_s"].items())
    note(f"wrote {record['output']} and {record['sidecar']} ({record['windows']} windows, {record['passes']} passes; {timings})")


def _print_summary(records: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="agn segment")
    for column in ("case", "status", "output", "seconds", "detail"):
        table.add_column(column, overflow="fold")
    for record in records:
        status = record["status"]
        style = {"ok": "green", "failed": "red", "skipped": "yellow"}[status]
        detail = record.get("detail", "")
        if status == "ok":
            fg = [s for k, s in record["labels"].items() if k != "0"]
            detail = ", ".join(f"{s['name']} {s['volume_ml']:.0f} mL" for s in fg[:4])
        table.add_row(Path(record["input"]).name, f"[{style}]{status}[/{style}]", record["output"], str(record.get("seconds", "")), detail)
    out.print(table)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    note(f"{counts['ok']} segmented, {counts['skipped']} skipped (done; --overwrite re-runs), {counts['failed']} failed")
