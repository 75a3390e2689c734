"""Atomic output: write to a temporary file beside the target, then rename.

A crash, a Ctrl-C or a failed check never leaves a half-written mask, checkpoint or report behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from agn_cli.errors import AgnError

# Multi-part suffixes that readers (SimpleITK, nibabel) dispatch on; the temp file must keep them.
_COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz", ".seg.nrrd")


def full_suffix(path: Path) -> str:
    """The suffix a reader dispatches on, e.g. '.nii.gz' rather than '.gz'."""
    name = path.name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix):]
    return path.suffix


def check_writable(path: Path | str, overwrite: bool) -> Path:
    """Refuse to clobber an existing output unless asked; make the parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise AgnError(f"{path} already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path with the same suffix as `path`; rename it onto `path` on success."""
    path = check_writable(path, overwrite)
    suffix = full_suffix(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            # mkstemp creates 0600; outputs should get the permissions any new file would get.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path | str, text: str, overwrite: bool = False) -> Path:
    """Write a small text file (JSON, CSV, Markdown) atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
