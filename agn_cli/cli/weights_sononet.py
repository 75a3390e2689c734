"""`agn weights convert-sononet` (placeholder)."""

from agn_cli.cli.stub import not_implemented


def convert_sononet() -> None:
    """Convert the published SonoNet-16 weights (not implemented yet)."""
    not_implemented("weights convert-sononet")
