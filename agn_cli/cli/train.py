"""`agn train ...` sub-commands."""

import typer

from agn_cli.cli.stub import not_implemented

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Not implemented yet."""


@app.command("seg")
def seg() -> None:
    """Train a segmentation network (not implemented yet)."""
    not_implemented("train seg")


@app.command("cls")
def cls() -> None:
    """Train a plane classifier (not implemented yet)."""
    not_implemented("train cls")
