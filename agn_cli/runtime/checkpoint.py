"""Checkpoints with model cards: safetensors (or weights-only torch) weights plus a JSON card beside them.

The card says everything needed to use the weights correctly on new data (architecture, labels, spacing,
intensity normalisation, patch size) and where they came from (training data, licence, citation, sha256), so a
checkpoint is never a bare tensor dump whose preprocessing lives in someone's head.

Layout: `NAME.safetensors` (or `NAME.pt`) + `NAME.json`. A run folder holds `best.*` and `latest.*` pairs.
Loading never unpickles: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agn_cli import __version__
from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import CHECKPOINT_SUFFIXES, Transaction, check_writable, sha256_file
from agn_cli.runtime.jsonio import dumps, read_json_object

CARD_FORMAT = 1
WEIGHT_SUFFIXES = CHECKPOINT_SUFFIXES
PAPER_CITATION = (
    "Schlemper J, Oktay O, Schaap M, Heinrich M, Kainz B, Glocker B, Rueckert D. Attention gated networks: "
    "Learning to leverage salient regions in medical images. Medical Image Analysis 53:197-207, 2019. "
    "doi:10.1016/j.media.2019.01.012"
)


@dataclass
class ModelCard:
    """What a checkpoint is, how to feed it, and where it came from."""

    architecture: str
    model_kwargs: dict[str, Any]
    task: str  # "segmentation" | "classification"
    labels: dict[int, str]  # class id -> name; 0 is background for segmentation
    spacing: list[float] | None = None  # target spacing in mm (x, y, z) for CT
    normalisation: dict[str, Any] = field(default_factory=dict)  # e.g. {"type": "ct", "clip": [lo, hi], "mean", "std"}
    patch_size: list[int] | None = None  # (x, y, z) for CT, (rows, cols) for frames
    # spatial axes (0=x, 1=y, 2=z) flipped at random in training: the only axes mirroring TTA may use.
    # None = not recorded (random weights, older cards): treated as trained without mirroring.
    mirror_axes: list[int] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)  # frame crop, resize, grey conversion, ...
    # what `agn segment` does after the argmax unless told otherwise, e.g. {"largest_component": true}
    postprocessing: dict[str, Any] = field(default_factory=dict)
    training_data: str = "untrained: randomly initialised"
    metrics: dict[str, Any] = field(default_factory=dict)
    licence: str = "Apache-2.0"
    citation: str = PAPER_CITATION
    source: str = ""
    notes: str = ""
    default: bool = False  # the default model for its task when shipped in weights/
    weights_sha256: str = ""
    weights_file: str = ""
    created: str = ""
    agn_version: str = __version__
    format: int = CARD_FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["labels"] = {str(k): v for k, v in sorted(self.labels.items())}
        return dumps(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        known = {f.name for f in fields(cls)}
        missing = {"architecture", "model_kwargs", "task", "labels"} - set(data)
        if missing:
            raise AgnError(f"model card lacks {', '.join(sorted(missing))}; regenerate it with 'agn weights init'")
        data = {k: v for k, v in data.items() if k in known}
        data["labels"] = {int(k): str(v) for k, v in data["labels"].items()}
        return cls(**data)

    @property
    def num_classes(self) -> int:
        return int(self.model_kwargs.get("num_classes", len(self.labels)))


def card_path_for(weights: Path) -> Path:
    return weights.with_suffix(".json")


def _state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    return {k: v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}


def save_checkpoint(path: Path | str, model: nn.Module, card: ModelCard, overwrite: bool = False) -> Path:
    """Write weights and card atomically; the card records the weights' sha256 and file name."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise AgnError(f"checkpoint file must end in {', '.join(WEIGHT_SUFFIXES)}: {path}")
    card_file = card_path_for(path)
    check_writable(path, overwrite)
    check_writable(card_file, overwrite)
    state = _state_dict_for_saving(model)
    with Transaction(overwrite) as transaction:  # weights first, the card last: a card always describes its weights
        tmp = transaction.stage(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"format": "pt"})  # one key: safetensors orders metadata by hash, so two keys make the sha256 vary
        else:
            torch.save(state, tmp)
        card.weights_sha256 = sha256_file(tmp)
        card.weights_file = path.name
        card.created = card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        transaction.stage(card_file).write_text(card.to_json(), encoding="utf-8")
    return path


def resolve_checkpoint(path: Path | str) -> Path:
    """Accept a weights file, its card, or a run folder (best, else latest, else the only checkpoint)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AgnError(f"weights not found: {path}")
    if path.is_dir():
        for stem in ("best", "latest"):
            for suffix in WEIGHT_SUFFIXES:
                if (path / f"{stem}{suffix}").is_file():
                    return path / f"{stem}{suffix}"
        candidates = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(candidates) == 1:
            return candidates[0]
        raise AgnError(f"no checkpoint in {path}: expected best.safetensors, latest.safetensors or a single weights file")
    if path.suffix == ".json":
        card = read_card(path)
        target = path.parent / (card.weights_file or path.with_suffix(".safetensors").name)
        if not target.is_file():
            raise AgnError(f"model card {path} points to missing weights {target}")
        return target
    if path.suffix not in WEIGHT_SUFFIXES:
        raise AgnError(f"unsupported weights file {path}: use .safetensors or .pt with a .json model card beside it")
    return path


def read_card(path: Path) -> ModelCard:
    return ModelCard.from_dict(read_json_object(path, "model card"))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights without executing code from the file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle with code in it
        raise AgnError(f"cannot read weights {path} ({type(exc).__name__}); the file is corrupt or not a weights file") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints nest the weights
    if not isinstance(state, dict):
        raise AgnError(f"{path} does not hold a state dict")
    return state


def verify_checkpoint(path: Path | str) -> tuple[bool, str, str]:
    """(matches, expected, actual) sha256 of the weights against their card."""
    weights = resolve_checkpoint(path)
    card = read_card(card_path_for(weights))
    actual = sha256_file(weights)
    return actual == card.weights_sha256, card.weights_sha256, actual


def build_model(card: ModelCard) -> nn.Module:
    from agn_cli.models import create_model

    try:
        return create_model(card.architecture, **card.model_kwargs)
    except KeyError as exc:
        raise AgnError(str(exc.args[0])) from exc
    except TypeError as exc:
        raise AgnError(f"model card arguments do not fit {card.architecture}: {exc}") from exc


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu", verify: bool = True) -> tuple[nn.Module, ModelCard]:
    """Build the card's architecture and load the weights into it (strict), in eval mode on `device`."""
    weights = resolve_checkpoint(path)
    card_file = card_path_for(weights)
    if not card_file.is_file():
        raise AgnError(f"no model card beside {weights} (expected {card_file.name}); checkpoints need one")
    card = read_card(card_file)
    if verify:
        if not card.weights_sha256:
            raise AgnError(
                f"model card {card_file} records no weights_sha256, so {weights.name} cannot be checked; "
                f"put the file's sha256 (e.g. from 'sha256sum {weights.name}') into the card"
            )
        if sha256_file(weights) != card.weights_sha256:
            raise AgnError(f"{weights} does not match the sha256 in its model card; the file is corrupt or was replaced")
    model = build_model(card)
    state = load_state_dict(weights)
    load_weights_into(model, state, weights, card)
    model.to(device).eval()
    return model, card


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], weights: Path, card: ModelCard) -> None:
    """Strict load with one-line errors: missing, unexpected or differently shaped tensors mean the card does not
    describe these weights (torch's own error would be a page of 'size mismatch' lines)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} tensor(s) of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
            f"{tuple(expected[k].shape)} for the card's network)"
        )
    if missing:
        problems.append(f"missing {len(missing)} (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
    if problems:
        raise AgnError(
            f"weights in {weights} do not match architecture '{card.architecture}' as its model card describes it: "
            + ", ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def shipped_weights_dir() -> Path:
    """The checkpoints that ship with agn: the installed package data `agn_cli.weights` (top-level weights/ in the
    source tree, mapped in pyproject.toml), else the source checkout's weights/ folder."""
    try:
        from importlib.resources import files

        shipped = files("agn_cli.weights")
        if isinstance(shipped, Path) and shipped.is_dir():
            return shipped
    except (ImportError, TypeError):  # running from a source checkout without installing
        pass
    return Path(__file__).resolve().parents[2] / "weights"


def weights_dirs() -> list[Path]:
    """Where installed weights live: $AGN_WEIGHTS (os.pathsep-separated) then the shipped checkpoints."""
    dirs = [Path(p) for p in os.environ.get("AGN_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(shipped_weights_dir())
    return [d for d in dirs if d.is_dir()]


def list_weights() -> list[tuple[Path, ModelCard]]:
    found = []
    for directory in weights_dirs():
        for card_file in sorted(directory.glob("*.json")):
            try:
                card = read_card(card_file)
            except AgnError:
                continue
            weights = card_file.parent / (card.weights_file or card_file.with_suffix(".safetensors").name)
            if weights.is_file():
                found.append((weights, card))
    return found


def find_default_weights(task: str, dims: int | None = None) -> Path | None:
    """The checkpoint marked default for `task` (and, if given, a `dims`-D network) among installed weights.

    `dims` keeps the 3D CT default and the 2D ultrasound default apart: both are segmentation models."""
    from agn_cli.models import get_entry

    for weights, card in list_weights():
        if card.task != task or not card.default:
            continue
        try:
            network_dims = get_entry(card.architecture).dims
        except KeyError:
            continue
        if dims is None or network_dims == dims:
            return weights
    return None
