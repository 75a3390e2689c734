"""Options shared by several commands, defined once so their names and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from agn_cli.errors import AgnError

# Options several commands take with the same meaning, declared once.
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
EVERY = typer.Option(1, "--every", min=1, help="Use every N-th frame of videos and multi-frame DICOM.")
FAST = typer.Option(True, "--fast/--no-fast", help="Fast inference path (folded BN, channels-last, bf16 where it pays).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing output files.")
CLASSIFIER_WEIGHTS = typer.Option(None, "--weights", "-w", help="Checkpoint (.safetensors + card); default: the shipped SonoNet-16.")
FRAME_BATCH = typer.Option(16, "--batch-size", min=1, help="Frames per forward pass.")
CROP = typer.Option("auto", "--crop", help="auto (model card's crop for screen captures), none, or Y0:Y1,X0:X1.")


def limit_threads(threads: int | None) -> None:
    """Apply --threads where a command otherwise keeps torch's own default (which honours OMP_NUM_THREADS)."""
    if threads is not None:
        from agn_cli.runtime.device import configure_cpu_threads

        configure_cpu_threads(threads)


def input_option() -> Any:
    """`-i/--input`, an alias of the positional inputs (TotalSegmentator / nnU-Net habit); both may be given."""
    return typer.Option(None, "-i", "--input", help="An input (as the arguments; may be repeated).", show_default=False)


def merge_inputs(arguments: Optional[Sequence[Path]], options: Optional[Sequence[Path]], what: str) -> list[Path]:
    """The positional inputs followed by the -i ones; none at all is a usage error."""
    inputs = [*(arguments or []), *(options or [])]
    if not inputs:
        raise AgnError(f"no input: give {what} as arguments or with -i")
    return inputs


def threads_option() -> Any:
    """`--threads N` for every command that computes; see runtime.device.configure_cpu_threads."""
    return typer.Option(
        None, "--threads", min=1, help="CPU threads (default: OMP_NUM_THREADS if set, else every core this process may use)."
    )
