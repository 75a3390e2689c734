"""`agn evaluate ...` sub-commands."""

import typer

from agn_cli.cli.stub import not_implemented

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Not implemented yet."""


@app.command("seg")
def seg() -> None:
    """Evaluate segmentations (not implemented yet)."""
    not_implemented("evaluate seg")


@app.command("cls")
def cls() -> None:
    """Evaluate classifications (not implemented yet)."""
    not_implemented("evaluate cls")
