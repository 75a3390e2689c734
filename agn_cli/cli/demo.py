"""`agn demo`."""

from agn_cli.cli.stub import not_implemented


def command() -> None:
    """Not implemented yet."""
    not_implemented("demo")
