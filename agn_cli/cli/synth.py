"""`agn synth ...` sub-commands."""

import typer

from agn_cli.cli.stub import not_implemented

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Not implemented yet."""


@app.command("ct")
def ct() -> None:
    """Synthetic CT phantoms (not implemented yet)."""
    not_implemented("synth ct")
