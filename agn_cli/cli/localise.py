"""`agn localise`."""

import typer

CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}

from agn_cli.cli.stub import not_implemented


def command(ctx: typer.Context) -> None:
    """Not implemented yet."""
    not_implemented("localise")
