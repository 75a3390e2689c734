"""Safe output: files are written under hidden temporary names and put in place only when complete.

Rules every writer in agn follows through this module:
- A finished file appears under its final name in one step; a crash, a Ctrl-C or a failed check leaves no
  half-written mask, checkpoint or report behind (at worst a hidden `.NAME.*.tmp*` file).
- Without `--overwrite` the final name is created exclusively (`os.link` of the finished temp file, which fails if
  the name exists), never check-then-rename: a second run to the same path fails instead of replacing the first
  run's file, and its cleanup removes only files it created itself (checked by inode).
- Write failures of the environment (read-only folder, full disk, no permission) are one-line `AgnError`s, and
  output folders are checked for writability before any compute (`check_writable`, `check_outputs`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from agn_cli.errors import AgnError

# Multi-part suffixes that readers (SimpleITK, nibabel) dispatch on; the temp file must keep them.
_COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz", ".seg.nrrd")
# Checkpoint files: a `.json` beside one of these is a model card, which no output may replace.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
# errno values that mean "the environment refuses the write", reported in one line instead of a traceback
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EFBIG}
# A folder with less free space than this cannot take even a small mask or report: refused before any compute.
MIN_FREE_BYTES = 1 << 20
# errno values of file systems without hard links; exclusive creation then reserves the name with O_EXCL.
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def full_suffix(path: Path) -> str:
    """The suffix a reader dispatches on, e.g. '.nii.gz' rather than '.gz'."""
    name = path.name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix):]
    return path.suffix


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes (checkpoint integrity, completion markers)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_error(path: Path | str, exc: OSError) -> AgnError:
    """A one-line error for a failed write that names the file and the cause (disk full, read-only, ...)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on the device"
    elif exc.errno == errno.EROFS:
        reason = "the file system is read-only"
    return AgnError(f"cannot write {path}: {reason}")


def _exists_message(path: Path) -> str:
    return f"{path} already exists; pass --overwrite to replace it"


def ensure_folder(folder: Path) -> Path:
    """Create `folder` (and parents) and prove it takes a new file, or fail in one line (read-only, not a folder,
    no permission, disk full) before any compute."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AgnError(f"cannot create {folder}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".agn-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise write_error(folder, exc) from None
    if free < MIN_FREE_BYTES:
        raise AgnError(f"cannot write into {folder}: no space left on the device ({free} bytes free)")
    return folder


def check_writable(path: Path | str, overwrite: bool) -> Path:
    """Refuse to clobber an existing output unless asked, and a folder where a file is wanted; make the parent
    folder and check that it is writable."""
    path = Path(path)
    if path.is_dir():
        raise AgnError(f"{path} is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise AgnError(_exists_message(path))
    ensure_folder(path.parent)
    return path


def model_file_conflict(path: Path) -> str | None:
    """Why `path` must never be written by an output (it is a checkpoint or its model card), or None."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        for weights_suffix in CHECKPOINT_SUFFIXES:
            if path.with_suffix(weights_suffix).is_file():
                return f"it is the model card of {path.with_suffix(weights_suffix)}"
    if suffix in CHECKPOINT_SUFFIXES and path.with_suffix(".json").is_file():
        return f"it is a checkpoint (model card {path.with_suffix('.json')})"
    return None


def _identities(path: Path) -> set:
    """Keys under which two names denote the same file: the resolved path, and (dev, inode) when it exists."""
    keys: set = {os.path.realpath(path)}
    with contextlib.suppress(OSError):
        st = os.stat(path)
        keys.add((st.st_dev, st.st_ino))
    return keys


def check_outputs(paths: Iterable[Path | None], overwrite: bool, inputs: Iterable[Path | str | None] = ()) -> list[Path]:
    """Check every output of a run before any compute: none is an input (also with --overwrite), a checkpoint or a
    model card, or named twice; each is new (or --overwrite) and its folder writable."""
    protected: set = set()
    for source in inputs:
        if source is not None:
            protected |= _identities(Path(source))
    seen: dict = {}
    checked = []
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        keys = _identities(path)
        why = model_file_conflict(path)
        if why:
            raise AgnError(f"refusing to write {path}: {why}; choose another output name")
        if keys & protected:
            raise AgnError(f"refusing to write {path}: it is an input of this run; choose another output name")
        twice = [seen[k] for k in keys if k in seen]
        if twice:
            raise AgnError(f"{path} is given for two outputs ({twice[0]} and {path}); give each output its own name")
        for key in keys:
            seen[key] = path
        checked.append(check_writable(path, overwrite))
    return checked


def _permissions_as_new(tmp: Path) -> None:
    """mkstemp creates 0600; outputs get the permissions any new file would get."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Put the finished `tmp` under `final`: replace with `overwrite`, else create exclusively."""
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise AgnError(f"{final} already exists (written by another run meanwhile?); pass --overwrite to replace it") from None
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
        try:  # no hard links on this file system: reserve the name, then move the file onto our own placeholder
            os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise AgnError(f"{final} already exists (written by another run meanwhile?); pass --overwrite to replace it") from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


class Transaction:
    """Several files written under temporary names and put in place together by `commit`, in the order they were
    staged, so the last one (a sidecar) marks the set complete. Anything that fails before or during the commit
    removes the temporary files and the files this transaction placed - and nothing else."""

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self.staged: list[tuple[Path, Path]] = []  # (temporary, final)
        self.placed: list[tuple[Path, tuple[int, int]]] = []  # (final, (dev, inode)) of files this transaction put there

    def stage(self, path: Path | str) -> Path:
        """A new temporary file beside `path` (same suffix) to write into; `path`'s folder must exist or is made."""
        final = Path(path)
        ensure_folder(final.parent)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{full_suffix(final)}", dir=final.parent)
        except OSError as exc:
            raise write_error(final, exc) from None
        os.close(fd)
        self.staged.append((Path(name), final))
        return Path(name)

    def temporary(self, path: Path | str) -> Path:
        """The temporary file staged for `path` (to read back what will be committed)."""
        return next(tmp for tmp, final in self.staged if final == Path(path))

    def commit(self) -> None:
        final = None
        try:
            for tmp, final in self.staged:
                if not tmp.exists():
                    raise AgnError(f"nothing was written for {final}")
                _permissions_as_new(tmp)
                _fsync(tmp)  # a full disk can surface only here
            for tmp, final in self.staged:
                _place(tmp, final, self.overwrite)
                st = os.stat(final)
                self.placed.append((final, (st.st_dev, st.st_ino)))
            for folder in {final.parent for _, final in self.staged}:
                with contextlib.suppress(OSError):  # the new names survive a power cut
                    _fsync(folder)
        except OSError as exc:
            self.rollback()
            if exc.errno in _ENVIRONMENT_ERRNOS:
                raise write_error(final or "output", exc) from None
            raise
        except BaseException:
            self.rollback()
            raise
        self.staged = []
        self.placed = []

    def rollback(self) -> None:
        """Remove the temporary files, and the placed files that are still the ones this transaction made."""
        for final, identity in self.placed:
            with contextlib.suppress(OSError):
                st = os.stat(final)
                if (st.st_dev, st.st_ino) == identity:
                    final.unlink()
        self.placed = []
        for tmp, _ in self.staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.staged = []

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        target = self.staged[-1][1] if self.staged else "output"
        self.rollback()
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
            raise write_error(target, exc) from None


@contextlib.contextmanager
def atomic_path(path: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path with the same suffix as `path`; put it in place as `path` on success (exclusively
    unless `overwrite`). Environment failures while writing (disk full, read-only) become one-line AgnErrors."""
    path = check_writable(path, overwrite)
    transaction = Transaction(overwrite)
    try:
        tmp = transaction.stage(path)
        yield tmp
        transaction.commit()
    except OSError as exc:
        transaction.rollback()
        if exc.errno in _ENVIRONMENT_ERRNOS:
            raise write_error(path, exc) from None
        raise
    except BaseException:
        transaction.rollback()
        raise


def write_text_atomic(path: Path | str, text: str, overwrite: bool = False) -> Path:
    """Write a small text file (JSON, CSV, Markdown) atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: Path | str, may_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Build a folder under a hidden temporary name beside `path` and move it into place when complete.

    A new or empty `path` is taken directly. An existing non-empty one is replaced only if `may_replace(path)` is
    given and returns (it raises AgnError to refuse); the old folder is moved aside first and removed last."""
    path = Path(path)
    ensure_folder(path.parent)
    tmp = path.parent / f".{path.name}.tmp-{time.time_ns()}"
    try:
        tmp.mkdir()
        yield tmp
        try:
            os.rename(tmp, path)  # fails on a non-empty folder or a file: never merges into or replaces one
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            if may_replace is None or not path.is_dir():
                raise AgnError(_exists_message(path)) from None
            may_replace(path)
            old = path.parent / f".{path.name}.old-{time.time_ns()}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if exc.errno in _ENVIRONMENT_ERRNOS:
            raise write_error(path, exc) from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
