"""Where the CLI prints: results and JSON to stdout, progress and messages to stderr."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

from agn_cli.runtime.jsonio import dumps

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_json(payload: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else on that stream."""
    sys.stdout.write(dumps(payload))
    sys.stdout.flush()


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def note(message: str) -> None:
    err.print(message, highlight=False)
