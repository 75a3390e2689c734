"""`agn weights convert-sononet`: reproduce the shipped default plane classifier from the published weights."""

from __future__ import annotations

from pathlib import Path

import typer

from agn_cli.cli.console import note, out, print_json


def convert_sononet(
    npz: Path = typer.Argument(..., help="SonoNet16.npz from github.com/baumgach/SonoNet-weights (Apache-2.0)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output weights, e.g. sononet16.safetensors (card .json beside it)."),
    default: bool = typer.Option(True, "--default/--no-default", help="Mark the card as the default classifier."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    json_out: bool = typer.Option(False, "--json", help="Print the written paths and sha256 as JSON."),
) -> None:
    """Convert the published SonoNet-16 (Theano/Lasagne .npz) into an agn checkpoint with a model card."""
    from agn_cli.runtime.checkpoint import card_path_for, read_card
    from agn_cli.us.sononet_convert import convert_sononet16

    if output.suffix != ".safetensors":
        from agn_cli.errors import AgnError

        raise AgnError(f"output must end in .safetensors: {output}")
    path = convert_sononet16(npz, output, overwrite=overwrite, default=default)
    card = read_card(card_path_for(path))
    if json_out:
        print_json({"weights": str(path), "card": str(card_path_for(path)), "sha256": card.weights_sha256})
        return
    note(f"converted {npz} -> {path} (+ {card_path_for(path).name})")
    out.print(f"{path}  sha256 {card.weights_sha256}", highlight=False)
