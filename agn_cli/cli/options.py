"""Options shared by several commands, defined once so their names and help agree."""

from __future__ import annotations

from typing import Any

import typer


def limit_threads(threads: int | None) -> None:
    """Apply --threads where a command otherwise keeps torch's own default (which honours OMP_NUM_THREADS)."""
    if threads is not None:
        from agn_cli.runtime.device import configure_cpu_threads

        configure_cpu_threads(threads)


def threads_option() -> Any:
    """`--threads N` for every command that computes; see runtime.device.configure_cpu_threads."""
    return typer.Option(
        None, "--threads", min=1, help="CPU threads (default: OMP_NUM_THREADS if set, else every core this process may use)."
    )
