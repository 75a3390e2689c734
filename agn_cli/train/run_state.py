"""What a run folder holds besides weights: the resumable training state, metrics.csv and config.json.

`latest_state.pt` holds model, optimiser, scheduler and scaler state dicts, the RNG states of python, numpy and
torch (CPU and CUDA) and the epoch count, as tensors and primitive containers only, so it loads with
`torch.load(weights_only=True)` and never unpickles code. Everything is written atomically on rank 0; the state
file is written before `latest.safetensors`, so a run killed in between resumes from a consistent state.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import atomic_path, write_text_atomic
from agn_cli.runtime.checkpoint import ModelCard, save_checkpoint
from agn_cli.runtime.jsonio import dumps

STATE_FILE = "latest_state.pt"
RUN_FILES = (
    "best.safetensors",
    "best.json",
    "latest.safetensors",
    "latest.json",
    STATE_FILE,
    "metrics.csv",
    "config.json",
)


@dataclass
class RunConfig:
    """Settings every training run shares; saved as config.json so `--resume` continues with the same ones."""

    dataset: str
    output: str
    epochs: int = 300
    steps_per_epoch: int | None = None  # optimiser steps per epoch (the task's default when None)
    batch_size: int = 2  # global, per optimiser step
    accumulate: int = 1  # micro-batches per rank per step (same effective batch, less memory)
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    step_size: int = 100  # epochs between x gamma decays of the step schedule
    gamma: float = 0.1
    precision: str = "auto"
    grad_clip: float = 0.0
    val_fraction: float = 0.2
    val_every: int = 1
    seed: int = 0
    deterministic: bool = True
    workers: int = 0
    device: str = "auto"
    cache_dir: str | None = None

    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Rebuild from config.json: unknown keys are ignored, JSON lists become the tuples the fields expect."""
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for key in cls.TUPLE_FIELDS:
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def seed_everything(seed: int, deterministic: bool = True, device: torch.device | None = None) -> None:
    """Seed python, numpy and torch; deterministic kernels where torch offers them (warn-only elsewhere)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # deterministic mode also fills every new tensor with NaN to expose reads of uninitialised memory; that
        # debugging aid cost a third of the CPU time of a 2D training step (measured) and changes no result
        torch.utils.deterministic.fill_uninitialized_memory = False
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors / lists of ints (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_state(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AgnError(f"cannot resume: {path} not found; start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AgnError(f"cannot read training state {path} ({type(exc).__name__}); it is corrupt, start over with --overwrite") from exc


def prepare_run_dir(run: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Refuse to mix runs: an existing run needs --resume (continue) or --overwrite (start over)."""
    existing = [name for name in RUN_FILES if (run / name).exists()]
    if run.exists() and not run.is_dir():
        raise AgnError(f"{run} exists and is not a folder; choose another -o")
    if resume:
        if not (run / STATE_FILE).is_file():
            raise AgnError(f"cannot resume: {run / STATE_FILE} not found; start without --resume")
        return
    if existing and not overwrite:
        raise AgnError(f"{run} already holds a training run ({existing[0]}); pass --resume to continue or --overwrite to start over")
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
        for name in existing:
            (run / name).unlink()


def write_metrics_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    write_text_atomic(path, buffer.getvalue(), overwrite=True)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        parsed: dict[str, Any] = {}
        for k, v in row.items():
            try:
                parsed[k] = int(v) if k == "epoch" else float(v) if v not in ("", None) else v
            except ValueError:
                parsed[k] = v
        out.append(parsed)
    return out


def write_config(path: Path, config: dict[str, Any]) -> None:
    write_text_atomic(path, dumps(config), overwrite=True)


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AgnError(f"cannot read {path} ({exc}); the run folder is incomplete, start over with --overwrite") from exc


def save_run(run: Path, net, card: ModelCard, step, epoch: int, best_score: float, metrics: dict[str, Any],
             improved: bool) -> None:
    """State first, then latest weights, then best: a kill at any point leaves a resumable, consistent run."""
    inner = getattr(net, "module", net)
    save_state(
        run / STATE_FILE,
        {
            "model": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
            "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(),
            "scaler": step.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "best_score": best_score,
        },
    )
    card.metrics = {"epoch": epoch, **{k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}}
    card.created = ""
    save_checkpoint(run / "latest.safetensors", net, dataclasses.replace(card), overwrite=True)
    if improved:
        save_checkpoint(run / "best.safetensors", net, dataclasses.replace(card), overwrite=True)


def load_run(run: Path, net, step) -> tuple[int, float, list[dict[str, Any]]]:
    """Restore what `save_run` wrote (weights, optimiser, scheduler, scaler, RNG); (epoch, best score, metrics rows)."""
    state = load_state(run / STATE_FILE)
    net.load_state_dict(state["model"])
    step.optimizer.load_state_dict(state["optimizer"])
    step.scheduler.load_state_dict(state["scheduler"])
    step.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    epoch = int(state["epoch"])
    rows = [r for r in read_metrics_csv(run / "metrics.csv") if int(r.get("epoch", 0)) <= epoch]
    return epoch, float(state["best_score"]), rows
