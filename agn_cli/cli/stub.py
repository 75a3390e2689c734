"""Placeholder for commands that exist in the interface but are not built yet."""

from agn_cli.errors import NotImplementedYet


def not_implemented(command: str) -> None:
    raise NotImplementedYet(f"'agn {command}' is not implemented yet")
