"""Where the CLI prints: results and JSON to stdout, progress and messages to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_json(payload: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else on that stream."""
    sys.stdout.write(json.dumps(payload, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def note(message: str) -> None:
    err.print(message, highlight=False)
