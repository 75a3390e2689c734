"""`agn weights ...`: create (random init), list, verify and convert checkpoints with model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agn_cli.cli.console import note, out, print_json
from agn_cli.errors import AgnError

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Create, list, verify and convert checkpoints (safetensors + JSON model card)."""


@app.command("init")
def init(
    model: str = typer.Option(..., "--model", "-m", help="Registered architecture, e.g. attention-unet3d (see 'agn info')."),
    labels: str = typer.Option(
        ..., "--labels", help="Foreground labels, e.g. spleen,pancreas,kidney (ids 1..n) or 1:spleen,7:pancreas."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Weights file (.safetensors or .pt); the card is written beside it as .json."),
    base_filters: int = typer.Option(16, "--base-filters", min=1, help="F1, filters of the first level (paper: 16)."),
    spacing: str = typer.Option("2.0", "--spacing", help="Target spacing in mm: one number (isotropic) or XxYxZ."),
    patch: Optional[str] = typer.Option(None, "--patch", help="Patch size XxYxZ (CT default 160x160x96)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the initialisation."),
    default: bool = typer.Option(False, "--default", help="Mark the card as the default model for its task."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
    json_out: bool = typer.Option(False, "--json", help="Print the written paths and the card as JSON."),
) -> None:
    """Write a randomly initialised checkpoint with a valid model card (for pipeline tests and benchmarks)."""
    from agn_cli.apps.weights_init import init_checkpoint
    from agn_cli.runtime.checkpoint import card_path_for

    path, card = init_checkpoint(
        model,
        labels,
        output,
        base_filters=base_filters,
        spacing=spacing,
        patch=patch,
        seed=seed,
        default=default,
        overwrite=overwrite,
    )
    if json_out:
        print_json({"weights": str(path), "card": str(card_path_for(path)), "sha256": card.weights_sha256, **_card_summary(card)})
        return
    out.print(f"wrote {path} ({card.architecture}, {len(card.labels)} labels, sha256 {card.weights_sha256[:12]}...)", highlight=False)
    note(f"model card: {card_path_for(path)}; weights are random: use them only to test pipelines")


def _card_summary(card) -> dict:
    return {
        "architecture": card.architecture,
        "task": card.task,
        "labels": {str(k): v for k, v in sorted(card.labels.items())},
        "spacing": card.spacing,
        "patch_size": card.patch_size,
        "normalisation": card.normalisation,
        "training_data": card.training_data,
        "default": card.default,
    }


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List installed weights ($AGN_WEIGHTS folders, then the project's weights/ folder)."""
    from rich.table import Table

    from agn_cli.runtime.checkpoint import list_weights, weights_dirs

    found = list_weights()
    if json_out:
        print_json([{"weights": str(path), "sha256": card.weights_sha256, **_card_summary(card)} for path, card in found])
        return
    if not found:
        searched = ", ".join(str(d) for d in weights_dirs()) or "no weights folder"
        note(f"no weights installed (searched: {searched}); create one with 'agn weights init' or 'agn train seg'")
        return
    table = Table(title="installed weights")
    table.add_column("file", overflow="fold")
    for column in ("architecture", "task", "labels", "default", "sha256"):
        table.add_column(column)
    for path, card in found:
        names = [v for _, v in sorted(card.labels.items())]
        shown = ", ".join(names[:4]) + (f", ... ({len(names)})" if len(names) > 4 else "")
        table.add_row(str(path), card.architecture, card.task, shown, "yes" if card.default else "", card.weights_sha256[:12])
    out.print(table)


@app.command("verify")
def verify(
    path: Path = typer.Argument(..., help="Weights file, its .json card, or a run folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check the weights' sha256 against the model card and that they load into the card's architecture."""
    from agn_cli.runtime.checkpoint import load_checkpoint, resolve_checkpoint, verify_checkpoint

    weights = resolve_checkpoint(path)
    matches, expected, actual = verify_checkpoint(weights)
    if not matches:
        raise AgnError(f"{weights}: sha256 {actual} does not match the model card ({expected or 'none recorded'}); the file is corrupt or was replaced")
    _, card = load_checkpoint(weights, verify=False)
    if json_out:
        print_json({"weights": str(weights), "ok": True, "sha256": actual, **_card_summary(card)})
        return
    out.print(f"ok: {weights} matches its model card (sha256 {actual}) and loads into {card.architecture}", highlight=False)


from agn_cli.cli.weights_sononet import convert_sononet  # noqa: E402

app.command("convert-sononet")(convert_sononet)
