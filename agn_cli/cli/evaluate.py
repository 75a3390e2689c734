"""`agn evaluate seg` and `agn evaluate cls`: parse, call agn_cli.metrics, print."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from agn_cli.cli.console import err, note, out, print_json, warn
from agn_cli.cli.options import limit_threads, threads_option
from agn_cli.errors import AgnError
from agn_cli.runtime.parsing import parse_label_ids

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Evaluate segmentations (Dice, surface distances in mm) or plane classifications (precision, recall, F1)."""


# ---------------------------------------------------------------------------------------------------------- helpers
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _cm_cell(count: int, diagonal: bool) -> str:
    if count == 0:
        return "[dim]0[/dim]"
    return f"[bold]{count}[/bold]" if diagonal else str(count)


def _mean_std(entry: dict[str, Any], metric: str, digits: int = 3) -> str:
    mean, std = entry[f"{metric}_mean"], entry[f"{metric}_std"]
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# ------------------------------------------------------------------------------------------------------------- seg
@app.command("seg")
def seg(
    pred: Path = typer.Argument(..., help="Predicted label map, or a folder of them (matched by file name)."),
    gt: Path = typer.Argument(..., help="Reference label map, or a folder of them."),
    labels: Optional[str] = typer.Option(
        None, "--labels", help="Comma-separated label ids to evaluate, e.g. 1,2,5 (default: every id present)."
    ),
    names: Optional[Path] = typer.Option(
        None, "--names", help="JSON with label names ({\"labels\": {\"1\": \"spleen\"}} or {\"1\": \"spleen\"})."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write per-case, per-class rows to this CSV."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --csv file."),
    threads: Optional[int] = threads_option(),
) -> None:
    """Dice, precision, recall, volumes (mL), mean surface distance S2S and HD95 (mm) per class.

    Give two label map files (NIfTI, NRRD, MHA) or two folders. A prediction on another grid is resampled onto the
    reference (nearest neighbour) with a warning. Classes absent in both maps get '-' (NaN) and a note.
    """
    from agn_cli.metrics import segmentation as S
    from agn_cli.runtime.atomic import check_outputs, write_text_atomic

    limit_threads(threads)
    label_ids = parse_label_ids(labels) if labels is not None else None
    label_names = S.load_label_names(names) if names is not None else None
    for path in (pred, gt):
        if not path.exists():
            raise AgnError(f"{path} does not exist")
    if pred.is_dir() != gt.is_dir():
        raise AgnError("give two label map files or two folders, not one of each")
    if csv_path is not None:
        check_outputs([csv_path], overwrite, inputs=(pred, gt, names))  # fail before the work, not after

    if pred.is_dir():
        with _progress() as bar:
            task = bar.add_task("evaluating", total=None)

            def _step(done: int, total: int, case: str) -> None:
                bar.update(task, completed=done, total=total, description=case)

            result = S.evaluate_folders(pred, gt, label_ids, label_names, progress=_step)
        rows = result["rows"]
    else:
        result = S.evaluate_files(pred, gt, label_ids, label_names)
        rows = [{"case": result["case"], **row} for row in result["classes"]]

    for message in result["warnings"]:
        warn(message)
    if csv_path is not None:
        write_text_atomic(csv_path, S.rows_to_csv(rows), overwrite=overwrite)
    if as_json:
        print_json(result)
        if csv_path is not None:
            note(f"wrote {csv_path}")
        return

    if pred.is_dir():
        _print_folder(result)
    else:
        _print_case(result)
    if csv_path is not None:
        note(f"wrote {csv_path}")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    )


def _table(title: str, headers: list[str], rows: list[list[str]], text: tuple[str, ...]) -> Table:
    """Numbers never wrap or truncate (a wide table scrolls); names and notes fold when the terminal is narrow."""
    table = Table(box=box.SIMPLE_HEAD, title=title)
    for k, header in enumerate(headers):
        if header in text:
            table.add_column(header, justify="left", overflow="fold", min_width=12 if k == 0 else 8)
        else:
            width = max([len(header)] + [len(r[k]) for r in rows])
            table.add_column(header, justify="right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    return table


def _print_wide(table: Table) -> None:
    """Print at least as wide as the table's minimum, so narrow terminals scroll instead of dropping columns."""
    from rich.measure import Measurement

    need = Measurement.get(out, out.options.update(width=10_000), table).minimum
    if need <= out.width:
        out.print(table)
        return
    from rich.console import Console

    wide = Console(width=need, soft_wrap=True, force_terminal=out.is_terminal, color_system=out.color_system,
                   no_color=out.no_color)
    wide.print(table)


def _print_case(result: dict[str, Any]) -> None:
    spacing = "x".join(f"{s:g}" for s in result["spacing_mm"])
    size = "x".join(map(str, result["size"]))
    headers = ["class", "id", "Dice", "prec", "recall", "S2S mm", "HD95 mm", "pred mL", "GT mL", "note"]
    rows = [
        [
            escape(row["name"]), str(row["label"]), _fmt(row["dice"]), _fmt(row["precision"]), _fmt(row["recall"]),
            _fmt(row["s2s_mm"], 2), _fmt(row["hd95_mm"], 2), _fmt(row["vol_pred_ml"], 1), _fmt(row["vol_gt_ml"], 1),
            row["note"],
        ]
        for row in result["classes"]
    ]
    _print_wide(_table(f"{result['case']}  ({size} voxels, {spacing} mm)", headers, rows, ("class", "note")))


def _print_folder(result: dict[str, Any]) -> None:
    title = f"{len(result['cases'])} cases: mean ± std over cases (n = cases with a Dice value)"
    headers = ["class", "id", "n", "Dice", "prec", "recall", "S2S mm", "HD95 mm", "pred mL", "GT mL"]
    rows = [
        [
            escape(e["name"]), str(e["label"]), f"{e['dice_n']}/{e['cases']}", _mean_std(e, "dice"),
            _mean_std(e, "precision"), _mean_std(e, "recall"), _mean_std(e, "s2s_mm", 2), _mean_std(e, "hd95_mm", 2),
            _mean_std(e, "vol_pred_ml", 1), _mean_std(e, "vol_gt_ml", 1),
        ]
        for e in result["summary"]
    ]
    _print_wide(_table(title, headers, rows, ("class",)))
    pairs = (("unmatched_pred", "predictions without a reference"), ("unmatched_gt", "references without a prediction"))
    for key, what in pairs:
        if result[key]:
            shown = ", ".join(result[key][:10]) + (" ..." if len(result[key]) > 10 else "")
            warn(f"{len(result[key])} {what}: {shown}")


# ------------------------------------------------------------------------------------------------------------- cls
@app.command("cls")
def cls(
    pred: Path = typer.Argument(..., help="Output of 'agn classify' (JSON with 'frames', or CSV path,frame,label)."),
    gt: Path = typer.Argument(
        ..., help="Reference CSV: path,label (or filename,sononet_label, or FETAL_PLANES_DB Image_name;...;Plane)."
    ),
    label_map: Optional[str] = typer.Option(
        None, "--map", help="JSON mapping predicted labels to reference labels, or 'fetal-planes-db' (built in)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
) -> None:
    """Accuracy, macro and per-class precision/recall/F1 and the confusion matrix of plane predictions.

    Frames are matched by file name (no folder, no extension, case-insensitive) and frame index (default 0).
    """
    from agn_cli.metrics.classification import evaluate_classification

    result = evaluate_classification(pred, gt, label_map)
    for message in result["warnings"]:
        warn(message)
    for key, what in (("unmatched_pred", "predicted frames without a reference label"),
                      ("unmatched_gt", "reference frames without a prediction")):
        if result[key]:
            shown = ", ".join(result[key][:10]) + (" ..." if len(result[key]) > 10 else "")
            warn(f"{len(result[key])} {what}: {shown}")
    if as_json:
        print_json(result)
        return

    title = (
        f"{result['correct']}/{result['n']} correct: accuracy {result['accuracy']:.3f}, "
        f"macro F1 {_fmt(result['macro_f1'])} over {result['macro_classes']} classes"
    )
    headers = ["class", "precision", "recall", "F1", "support", "predicted", "note"]
    rows = [
        [
            escape(row["class"]), _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]), str(row["support"]),
            str(row["predicted"]), row["note"],
        ]
        for row in result["per_class"]
    ]
    rows.append([
        "macro", _fmt(result["macro_precision"]), _fmt(result["macro_recall"]), _fmt(result["macro_f1"]),
        str(result["n"]), str(result["n"]), "over classes with support",
    ])
    _print_wide(_table(title, headers, rows, ("class", "note")))

    classes = result["classes"]
    cm = Table(box=box.SIMPLE_HEAD, title="confusion matrix (rows: reference, columns: predicted, numbered as rows)")
    cm.add_column("reference", overflow="fold", min_width=12)
    for j in range(len(classes)):
        cm.add_column(str(j + 1), justify="right", no_wrap=True)
    for i, (name, counts) in enumerate(zip(classes, result["confusion_matrix"])):
        cells = [_cm_cell(c, i == j) for j, c in enumerate(counts)]
        cm.add_row(f"{i + 1} {escape(name)}", *cells)
    out.print(cm)


@app.command("hc")
def hc(
    results: Path = typer.Argument(..., help="Output of 'agn measure hc -o results.json'."),
    reference: Path = typer.Argument(..., help="Reference CSV with HC18's header: filename,pixel size(mm),head circumference (mm)."),
    masks_ref: Optional[Path] = typer.Option(None, "--masks-ref", help="Reference masks (<stem>_Mask.png or <stem>.png): adds Dice and HD95 (mm)."),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON on stdout."),
) -> None:
    """Head circumference against reference values: mean absolute and signed difference (mm), share within 2 and
    3 mm; with --masks-ref also Dice and HD95 of the masks written by `agn measure hc --masks`."""
    from agn_cli.metrics.biometry import evaluate_hc, read_measurements

    if masks_ref is not None and not masks_ref.is_dir():
        raise AgnError(f"--masks-ref {masks_ref} is not a folder of reference masks")
    report = evaluate_hc(read_measurements(results), reference, masks_ref)
    if as_json:
        print_json(report)
        return
    s = report["summary"]
    title = (f"{s['measured']}/{s['frames']} reference frames measured: mean |difference| "
             f"{_fmt(s['mean_abs_difference_mm'], 2)} mm, mean difference {_fmt(s['mean_difference_mm'], 2)} mm, "
             f"within 2 mm {_fmt(s['within_2mm'])}, within 3 mm {_fmt(s['within_3mm'])}")
    if masks_ref is not None:
        title += f", Dice {_fmt(s['mean_dice'])}, HD95 {_fmt(s['mean_hd95_mm'], 2)} mm"
    headers = ["file", "HC mm", "reference mm", "difference mm"] + (["Dice", "HD95 mm"] if masks_ref else []) + ["note"]
    rows = [
        [escape(r["filename"]), _fmt(r["hc_mm"], 2), _fmt(r["reference_hc_mm"], 2), _fmt(r.get("difference_mm"), 2)]
        + ([_fmt(r.get("dice")), _fmt(r.get("hd95_mm"), 2)] if masks_ref else []) + [r.get("reason", "")]
        for r in report["frames"]
    ]
    _print_wide(_table(title, headers, rows, ("file", "note")))
