"""Scan-plane classification of ultrasound frames, batched, with optional boxes from attention.

Why a pipeline object: real-time use (>= 30 frames/s on two CPU cores) needs the model loaded once, frames read and
preprocessed in a background thread while the network runs on the previous batch, and no per-frame Python overhead
beyond the small localisation step. `Classifier.run(frames)` yields one `FrameResult` per frame, in input order.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from agn_cli.errors import AgnError
from agn_cli.runtime.checkpoint import ModelCard, find_default_weights, load_checkpoint
from agn_cli.us.frames import Frame
from agn_cli.us.localisation import LocalisationParams, attention_maps_for, localise
from agn_cli.us.preprocess import Crop, FrameGeometry, frame_geometry, preprocess_frame
from agn_cli.viz.frames import overlay_frame


@dataclass
class FrameResult:
    """One frame's prediction; `box` is (x0, y0, x1, y1) in the input frame's pixels (edges), or None."""

    path: str
    frame: int
    label: str
    confidence: float
    topk: list[tuple[str, float]]
    box: list[float] | None = None
    box_score: float | None = None
    box_label: str | None = None  # the class whose attention gave the box
    class_index: int = -1
    shape: tuple[int, ...] = ()  # input frame (rows, cols[, 3])
    geometry: FrameGeometry | None = None
    attention: np.ndarray | None = None  # (rows, cols) in network-input pixels, max 1, for overlays
    image: np.ndarray | None = field(default=None, repr=False)  # the input frame, kept only for overlays

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "frame": self.frame,
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "topk": [[name, round(p, 6)] for name, p in self.topk],
            "box": None if self.box is None else [round(v, 1) for v in self.box],
            "box_score": None if self.box_score is None else round(self.box_score, 4),
            "box_label": self.box_label,
        }

    def overlay(self, alpha: float = 0.4) -> np.ndarray:
        """BGR picture of the frame with its attention heat map, box and label (needs Classifier(keep_images=True))."""
        if self.image is None:
            raise ValueError("overlays need the frame image (Classifier(keep_images=True))")
        g = self.geometry
        window = None if g is None else (g.x0, g.y0, g.x1, g.y1)
        return overlay_frame(self.image, f"{self.label} {self.confidence:.2f}", self.attention, window, self.box, alpha)


def resolve_weights(weights: Path | str | None) -> Path:
    """The given checkpoint, or the installed default classifier."""
    if weights is not None:
        return Path(weights)
    found = find_default_weights("classification")
    if found is None:
        raise AgnError(
            "no default classification weights installed; pass --weights W.safetensors or reinstall agn "
            "(weights/sononet16.safetensors)"
        )
    return found


@dataclass
class _Batch:
    frames: list[Frame]
    inputs: np.ndarray  # (N, rows, cols) float32
    geometries: list[FrameGeometry]


class Classifier:
    """A loaded plane classifier: `run(frames)` -> FrameResults, batching and prefetching internally."""

    def __init__(
        self,
        weights: Path | str | None = None,
        device: str | torch.device = "cpu",
        fast: bool = True,
        crop: Crop = "auto",
        top_k: int = 3,
        boxes: bool = False,
        keep_attention: bool = False,
        keep_images: bool = False,
        localisation: LocalisationParams | None = None,
        target_label: str | None = None,
    ) -> None:
        from agn_cli.runtime.fast import prepare_model

        self.weights = resolve_weights(weights)
        self.device = torch.device(device)
        model, card = load_checkpoint(self.weights, device="cpu")
        if card.task != "classification":
            raise AgnError(f"{self.weights} is a {card.task} model; agn classify needs a classification checkpoint")
        self.card: ModelCard = card
        self.model = prepare_model(model, self.device, fast=fast)
        self.labels = [card.labels[i] for i in sorted(card.labels)]
        self.preprocessing = dict(card.preprocessing)
        if not self.preprocessing.get("size") and card.patch_size:
            self.preprocessing["size"] = list(card.patch_size)
        self.crop = crop
        self.top_k = max(1, min(int(top_k), len(self.labels)))
        self.boxes = boxes
        self.keep_attention = keep_attention
        self.keep_images = keep_images
        self.localisation = localisation or LocalisationParams()
        self.background = {i for i, name in enumerate(self.labels) if _is_background(name)}
        self.target_index: int | None = None
        if target_label is not None:
            lookup = {name.lower(): i for i, name in enumerate(self.labels)}
            if target_label.lower() not in lookup:
                raise AgnError(f"unknown class '{target_label}'; the model's classes are: {', '.join(self.labels)}")
            self.target_index = lookup[target_label.lower()]

    # -- preprocessing -------------------------------------------------------------------------------------------
    def _prepare(self, frames: list[Frame]) -> _Batch:
        inputs, geometries = [], []
        for frame in frames:
            geometries.append(frame_geometry(frame.image.shape, self.preprocessing, self.crop))
            inputs.append(preprocess_frame(frame.image, self.preprocessing, self.crop))
        shapes = {x.shape for x in inputs}
        if len(shapes) > 1:  # a card without a fixed size and frames of different sizes: run one by one
            raise _MixedSizes()
        return _Batch(frames, np.stack(inputs), geometries)

    def _batches(self, frames: Iterable[Frame], batch_size: int) -> Iterator[_Batch]:
        chunk: list[Frame] = []
        for frame in frames:
            chunk.append(frame)
            if len(chunk) >= batch_size:
                yield from self._prepare_safe(chunk)
                chunk = []
        if chunk:
            yield from self._prepare_safe(chunk)

    def _prepare_safe(self, chunk: list[Frame]) -> Iterator[_Batch]:
        try:
            yield self._prepare(chunk)
        except _MixedSizes:
            for frame in chunk:
                yield self._prepare([frame])

    # -- inference -----------------------------------------------------------------------------------------------
    def _infer(self, batch: _Batch) -> list[FrameResult]:
        need_maps = self.boxes or self.keep_attention
        x = torch.from_numpy(batch.inputs).unsqueeze(1).to(self.device)
        with torch.inference_mode():
            if need_maps:
                logits, attention = self.model(x, return_attention=True)
            else:
                logits, attention = self.model(x), None
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
            maps = None
            if attention is not None:
                maps = {k: v.float().cpu().numpy() for k, v in attention.items()}
        order = np.argsort(-probs, axis=1)[:, : self.top_k]
        results = []
        for i, frame in enumerate(batch.frames):
            top = [(self.labels[j], float(probs[i, j])) for j in order[i]]
            cls = int(order[i, 0])
            result = FrameResult(
                path=str(frame.path),
                frame=int(frame.index),
                label=self.labels[cls],
                confidence=float(probs[i, cls]),
                topk=top,
                class_index=cls,
                shape=tuple(frame.image.shape),
                geometry=batch.geometries[i],
                image=frame.image if self.keep_images else None,
            )
            if maps is not None:
                target = self._box_class(probs[i]) if self.target_index is None else self.target_index
                per_frame = attention_maps_for(maps, i, target)
                loc = localise(per_frame, batch.geometries[i], self.localisation)
                if self.boxes:
                    result.box, result.box_score = loc.box, loc.score
                    result.box_label = self.labels[target] if loc.box is not None else None
                if self.keep_attention:
                    result.attention = loc.attention
            results.append(result)
        return results

    def _box_class(self, probs: np.ndarray) -> int:
        """The class whose attention gives the box: the most likely class that is not background (a background
        frame's own map shows where "no plane" evidence is, which is no object; its runner-up points at the
        structure that is there). Measured on HC18: mean IoU 0.687 this way vs 0.666 with the background map."""
        order = np.argsort(-probs)
        for j in order:
            if j not in self.background:
                return int(j)
        return int(order[0])

    def run(self, frames: Iterable[Frame], batch_size: int = 16, prefetch: bool = True) -> Iterator[FrameResult]:
        """Classify every frame (in order). With `prefetch`, reading and preprocessing run in a background thread."""
        if batch_size < 1:
            raise AgnError("--batch-size must be 1 or more")
        batches = self._batches(frames, batch_size)
        if prefetch:
            batches = _prefetch(batches, depth=2)
        for batch in batches:
            yield from self._infer(batch)


def _is_background(label: str) -> bool:
    """Classes that mean "no standard plane"."""
    return label.strip().lower() in ("background", "other", "none")


class _MixedSizes(Exception):
    pass


_DONE = object()


def _prefetch(source: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run `source` in a daemon thread, `depth` items ahead; its exceptions surface in the consumer."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("done", _DONE))
        except BaseException as exc:  # hand over to the consumer thread
            slots.put(("error", exc))

    thread = threading.Thread(target=work, name="agn-frame-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class RunSummary:
    """Totals for the summary table and the JSON `summary`."""

    frames: int = 0
    files: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    per_label: dict[str, int] = field(default_factory=dict)
    weights: str = ""
    device: str = ""
    boxes: int = 0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "files": self.files,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames_per_second, 2),
            "per_label": dict(sorted(self.per_label.items(), key=lambda kv: -kv[1])),
            "boxes": self.boxes,
            "weights": self.weights,
            "device": self.device,
        }


def classify_inputs(
    classifier: "Classifier",
    inputs: Sequence[Path | str],
    every: int = 1,
    batch_size: int = 16,
    on_error: Callable[[Path, str], None] | None = None,
    on_result: Callable[[FrameResult], None] | None = None,
    require_frames: bool = False,
) -> tuple[list[FrameResult], RunSummary]:
    """Read, classify and (optionally) localise every frame of `inputs`; failures are collected, not raised (with
    `require_frames`, a one-line AgnError when not a single frame could be read)."""
    from agn_cli.us.frames import iter_frames

    summary = RunSummary(weights=str(classifier.weights), device=str(classifier.device))
    files: set[str] = set()

    def failed(path: Path, message: str) -> None:
        summary.failed.append({"path": str(path), "error": message})
        if on_error is not None:
            on_error(path, message)

    results: list[FrameResult] = []
    start = time.perf_counter()
    for result in classifier.run(iter_frames(inputs, every=every, on_error=failed), batch_size=batch_size):
        results.append(result)
        files.add(result.path)
        summary.per_label[result.label] = summary.per_label.get(result.label, 0) + 1
        summary.boxes += result.box is not None
        if on_result is not None:
            on_result(result)
    summary.seconds = time.perf_counter() - start
    summary.frames, summary.files = len(results), len(files)
    if require_frames and not results:
        if summary.failed:
            raise AgnError(f"no frame could be read from the {len(summary.failed)} input(s); see the warnings above")
        raise AgnError("no frames found in the inputs (folders are searched for PNG, JPEG, TIFF, BMP, DICOM and video)")
    return results, summary
