"""Options shared by several commands, defined once so their names and help agree."""

from __future__ import annotations

from typing import Any

import typer


def threads_option() -> Any:
    """`--threads N` for every command that computes; see runtime.device.configure_cpu_threads."""
    return typer.Option(
        None, "--threads", min=1, help="CPU threads (default: OMP_NUM_THREADS if set, else every core this process may use)."
    )
