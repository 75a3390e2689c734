"""`agn data check DATASET`: validate an nnU-Net v2 or MSD dataset before training."""

from __future__ import annotations

from pathlib import Path

import typer

from agn_cli.cli.console import err, out, print_json, warn
from agn_cli.errors import AgnError

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Validate datasets in nnU-Net v2 or Medical Segmentation Decathlon layout."""


@app.command("check")
def check(
    dataset: Path = typer.Argument(..., help="Dataset folder holding dataset.json, imagesTr/ and labelsTr/."),
    no_values: bool = typer.Option(False, "--no-values", help="Read headers only: no truncation or label-value checks (faster)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Check image/label pairs (complete files, one grid, integer label ids from dataset.json, paths inside the
    dataset folder): the same check `agn train seg` runs before training; exit 2 when anything is wrong."""
    from agn_cli.train.datasets import check_dataset

    report = check_dataset(dataset, read_labels=not no_values)
    if as_json:
        print_json(report.to_dict())
    else:
        if report.dataset is not None:
            ds = report.dataset
            labels = ", ".join(f"{k}={v}" for k, v in sorted(ds.labels.items()))
            out.print(f"{ds.root}: {ds.layout} layout, {len(ds.cases)} cases, labels {labels}", highlight=False)
        for message in report.warnings:
            warn(message)
        if len(report.errors) > 1:
            for message in report.errors:
                err.print(f"[red]error:[/red] {message}", highlight=False)
        if report.ok:
            out.print(f"ok: {report.checked} cases checked", highlight=False)
    # exit 2 through AgnError, like every other bad input: one problem is one line, several end with their count
    if len(report.errors) == 1:
        raise AgnError(report.errors[0])
    if report.errors:
        raise AgnError(f"{len(report.errors)} problems found in {dataset}")
