"""`agn weights ...` sub-commands."""

import typer

from agn_cli.cli.stub import not_implemented

app = typer.Typer(no_args_is_help=True)


@app.callback()
def callback() -> None:
    """Not implemented yet."""


@app.command("list")
def list_() -> None:
    """List installed weights (not implemented yet)."""
    not_implemented("weights list")


from agn_cli.cli.weights_sononet import convert_sononet  # noqa: E402

app.command("convert-sononet")(convert_sononet)
