"""`agn data ...` sub-commands."""

import typer

from agn_cli.cli.stub import not_implemented

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Not implemented yet."""


@app.command("check")
def check() -> None:
    """Validate a dataset (not implemented yet)."""
    not_implemented("data check")
