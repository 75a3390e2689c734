"""`agn demo`: the whole tool end to end on synthetic data, ending in a report a person can look at.

Why: a new user (or a reviewer of a change) should see in about three minutes on a laptop CPU that every part
works together - synthetic CT phantoms -> a short Attention U-Net training -> segmentation with attention maps ->
Dice / HD95 / ASSD per organ -> synthetic ultrasound frames -> a short AG-Sononet training -> plane labels and boxes
from attention with IoU against the known boxes -> fast-path benchmark - without downloading anything.

Every step calls the library functions the commands use (no subprocesses), so the demo exercises the same code as
`agn synth`, `agn train`, `agn segment`, `agn evaluate`, `agn classify` and `agn bench`. Everything is seeded: the
same seed gives the same data, the same trained weights (CPU, deterministic algorithms) and the same metrics; only
the timings change. The output folder is built in a hidden temporary folder beside it and moved into place at the
end, so a failed or interrupted demo leaves nothing behind.

Figures are drawn with OpenCV (no plotting library is needed).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np

from agn_cli.errors import AgnError
from agn_cli.viz.slices import PALETTE

ORGANS: dict[int, str] = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "liver", 5: "pancreas"}
DEFAULT_OUTPUT = "agn-demo"
BUDGET_S = 180.0  # the default demo's target wall time on a quiet 2-core CPU
_MARKERS = ("summary.json", "report.md", "report.html")  # what makes a folder a previous demo's output

# BGR colours of chart series (organs use the segmentation preview's PALETTE)
SERIES_COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]


# ==================================================================================================== configuration


@dataclass
class DemoConfig:
    """Sizes of every step. `default()` takes about 1.5 minutes on a 2-core CPU (budget: 3); `quick_config()` a
    few seconds (tests, smoke checks)."""

    seed: int = 0
    device: str = "auto"
    quick: bool = False
    # CT phantoms: a few training cases and one held-out case, resampled to `spacing` mm for the network
    ct_train_cases: int = 4
    ct_resolution: int = 96
    ct_size_mm: tuple[float, float, float] = (400.0, 400.0, 240.0)
    # 6 mm: a 48x48x32 patch then holds whole organs with context, and 96 steps learn liver, spleen and kidneys
    # (at 4 mm the same budget learnt the liver only); the pancreas needs longer training
    spacing: float = 6.0
    # segmentation training (attention-unet3d)
    seg_base_filters: int = 8
    seg_patch: tuple[int, int, int] = (48, 48, 32)
    seg_epochs: int = 12
    seg_steps: int = 8
    seg_batch: int = 2
    seg_lr: float = 1e-2
    seg_p_foreground: float = 0.9  # patches centred on a random organ: the small ones are seen from the start
    # ultrasound frames and the plane classifier (ag-sononet-8)
    us_size: tuple[int, int] = (224, 288)
    us_train_frames: int = 250
    us_test_frames: int = 30
    cls_model: str = "ag-sononet-8"
    cls_size: tuple[int, int] = (112, 144)
    cls_epochs: int = 20
    cls_steps: int = 5
    cls_batch: int = 16
    cls_lr: float = 1e-3
    # benchmark (network only, eager vs fast path)
    bench_sizes: tuple[tuple[int, int, int], ...] = ((32, 32, 32), (48, 48, 32))
    bench_2d_size: tuple[int, int] = (112, 144)
    bench_repeat: int = 3
    # an installed default CT model is also run on the held-out phantom when one window of it is this cheap
    default_model_budget_s: float = 25.0
    # CPU threads. One by default: the demo's small tensors gain little from more, the numbers then do not depend on
    # the core count (the summation order depends on the thread count), and on a CPU shared with other busy
    # processes two spinning OpenMP threads per core ran the 3D U-Net 8x slower (185 ms vs 1460 ms per forward).
    threads: int | None = 1

    @classmethod
    def default(cls, seed: int = 0, device: str = "auto") -> "DemoConfig":
        return cls(seed=seed, device=device)

    @classmethod
    def quick_config(cls, seed: int = 0, device: str = "auto") -> "DemoConfig":
        """Much smaller sizes (tests, smoke checks): the numbers mean little, every step still runs."""
        return cls(
            seed=seed, device=device, quick=True,
            ct_train_cases=2, ct_resolution=48, ct_size_mm=(400.0, 400.0, 200.0), spacing=8.0,
            seg_base_filters=4, seg_patch=(32, 32, 16), seg_epochs=4, seg_steps=3, seg_batch=2,
            us_size=(112, 144), us_train_frames=40, us_test_frames=10, cls_size=(64, 80),
            cls_epochs=4, cls_steps=3, cls_batch=8,
            bench_sizes=((16, 16, 16),), bench_2d_size=(64, 80), bench_repeat=1,
            default_model_budget_s=0.0,
        )


# ==================================================================================================== progress


@dataclass
class StepRecord:
    key: str
    title: str
    seconds: float = 0.0
    note: str = ""


class Steps:
    """Runs the demo's steps in order, timing each and telling a listener (the CLI's progress lines)."""

    def __init__(self, listener: Optional[Callable[[str, StepRecord], None]] = None) -> None:
        self.records: list[StepRecord] = []
        self.listener = listener or (lambda event, record: None)
        self.t0 = time.perf_counter()

    def run(self, key: str, title: str, fn: Callable[[], Any]) -> Any:
        record = StepRecord(key, title)
        self.listener("start", record)
        start = time.perf_counter()
        result = fn()
        record.seconds = time.perf_counter() - start
        if isinstance(result, dict) and isinstance(result.get("_note"), str):
            record.note = result.pop("_note")
        self.records.append(record)
        self.listener("done", record)
        return result

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


# ==================================================================================================== output folder


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder without `overwrite`, and never replace a folder that is not a demo's output."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise AgnError(f"{output} exists and is not a folder; choose another -o")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise AgnError(f"{output} already exists and is not empty; pass --overwrite to replace it or choose another -o")
        if not any((output / marker).is_file() for marker in _MARKERS):
            raise AgnError(f"{output} holds files that are not an agn demo report; refusing to replace it, choose another -o")


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers; floats are rounded."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, Path):
        return str(value)
    return value


# ==================================================================================================== figures (OpenCV)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (40, 40, 40)
_LIGHT = (225, 225, 225)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45, colour=_INK, thickness: int = 1) -> None:
    cv2.putText(img, text, (int(org[0]), int(org[1])), _FONT, scale, colour, thickness, cv2.LINE_AA)


def _text_width(text: str, scale: float = 0.45, thickness: int = 1) -> int:
    return cv2.getTextSize(text, _FONT, scale, thickness)[0][0]


def _outlined(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    """White text with a dark outline: readable on any image."""
    _text(img, text, org, scale, (0, 0, 0), 3)
    _text(img, text, org, scale, (255, 255, 255), 1)


def _nice_ticks(value: float, target: int = 5) -> tuple[float, float]:
    """(axis top, tick step): a 1/2/2.5/5 x 10^k step giving about `target` ticks up to at least `value`."""
    if not math.isfinite(value) or value <= 0:
        return 1.0, 0.25
    raw = value / target
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 2.5, 5, 10) if raw <= m * exp)
    return step * math.ceil(value / step - 1e-9), step


def _tick_label(v: float, step: float) -> str:
    """As many decimals as the step needs (0.25 -> 2, 0.2 -> 1, 50 -> 0)."""
    decimals = 0
    while decimals < 4 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    return f"{v:.{decimals}f}"


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: dict[str, Sequence[Optional[float]]],
    ymax: Optional[float] = None,
    fmt: str = "{:.2f}",
    ylabel: str = "",
) -> np.ndarray:
    """Grouped vertical bars with their values written on top; missing values (None/NaN) are marked 'n/a'."""
    n_cat, n_ser = len(categories), max(1, len(series))
    longest = max((_text_width(line, 0.38) for c in categories for line in c.split("\n")), default=40)
    group_w = max(70, 28 * n_ser + 24, longest + 16)
    left, right, top, bottom = 60, 20, 46, 80
    width = max(420, left + right + group_w * n_cat)
    height = 356
    img = np.full((height, width, 3), 255, np.uint8)
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    top_value, step = _nice_ticks(ymax if ymax is not None else max(values, default=1.0) * 1.08)
    plot_h = height - top - bottom
    _text(img, title, (left, 24), 0.55, _INK, 1)
    for i in range(int(round(top_value / step)) + 1):  # grid lines and y ticks
        v = i * step
        y = top + plot_h - int(round(plot_h * v / top_value))
        cv2.line(img, (left, y), (width - right, y), _LIGHT, 1)
        label = _tick_label(v, step)
        _text(img, label, (left - 6 - _text_width(label, 0.38), y + 4), 0.38)
    if ylabel:
        _text(img, ylabel, (4, top - 10), 0.38)
    bar_w = max(10, (group_w - 24) // n_ser)
    for c, name in enumerate(categories):
        x0 = left + c * group_w + 12
        for s, (sname, vals) in enumerate(series.items()):
            v = vals[c] if c < len(vals) else None
            x = x0 + s * bar_w
            colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
            if v is None or not math.isfinite(v):
                _text(img, "n/a", (x, top + plot_h - 4), 0.32)
                continue
            h = int(round(plot_h * min(max(v, 0.0), top_value) / top_value))
            cv2.rectangle(img, (x, top + plot_h - h), (x + bar_w - 3, top + plot_h), colour, -1)
            label = fmt.format(v)
            _text(img, label, (x + (bar_w - 3 - _text_width(label, 0.32)) // 2, top + plot_h - h - 4), 0.32)
        for k, line in enumerate(name.split("\n")[:2]):  # category names may have two lines
            _text(img, line, (x0 + (group_w - 24 - _text_width(line, 0.38)) // 2, top + plot_h + 18 + 15 * k), 0.38)
    cv2.line(img, (left, top + plot_h), (width - right, top + plot_h), _INK, 1)
    if len(series) > 1:  # legend
        x = left
        for s, sname in enumerate(series):
            cv2.rectangle(img, (x, height - 22), (x + 12, height - 10), SERIES_COLOURS[s % len(SERIES_COLOURS)], -1)
            _text(img, sname, (x + 16, height - 11), 0.38)
            x += 30 + _text_width(sname, 0.38)
    return img


def line_chart(title: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str = "", ylabel: str = "") -> np.ndarray:
    """Lines with markers on shared axes starting at y = 0."""
    width, height = 460, 320
    left, right, top, bottom = 56, 16, 44, 56
    img = np.full((height, width, 3), 255, np.uint8)
    xs = [x for xv, _ in series.values() for x in xv]
    ys = [y for _, yv in series.values() for y in yv if math.isfinite(y)]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    y_hi, y_step = _nice_ticks(max(ys, default=1.0) * 1.05)
    plot_w, plot_h = width - left - right, height - top - bottom
    _text(img, title, (left, 24), 0.55)

    def px(x: float, y: float) -> tuple[int, int]:
        return (left + int(plot_w * (x - x_lo) / (x_hi - x_lo)), top + plot_h - int(plot_h * min(max(y, 0), y_hi) / y_hi))

    for i in range(int(round(y_hi / y_step)) + 1):
        v = i * y_step
        y = top + plot_h - int(round(plot_h * v / y_hi))
        cv2.line(img, (left, y), (left + plot_w, y), _LIGHT, 1)
        label = _tick_label(v, y_step)
        _text(img, label, (left - 6 - _text_width(label, 0.38), y + 4), 0.38)
    _, x_step = _nice_ticks(x_hi - x_lo, 5)
    x_step = float(max(1, math.ceil(x_step)))  # epochs: whole numbers
    for x_tick in np.arange(math.ceil(x_lo / x_step) * x_step, x_hi + 1e-9, x_step):
        p = px(float(x_tick), 0)
        label = f"{x_tick:.0f}"
        _text(img, label, (p[0] - _text_width(label, 0.38) // 2, top + plot_h + 16), 0.38)
    cv2.line(img, (left, top + plot_h), (left + plot_w, top + plot_h), _INK, 1)
    cv2.line(img, (left, top), (left, top + plot_h), _INK, 1)
    if xlabel:
        _text(img, xlabel, (left + plot_w // 2 - _text_width(xlabel, 0.4) // 2, height - 22), 0.4)
    if ylabel:
        _text(img, ylabel, (4, top - 10), 0.38)
    lx = left
    for s, (name, (xv, yv)) in enumerate(series.items()):
        colour = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        pts = [px(float(x), float(y)) for x, y in zip(xv, yv) if math.isfinite(y)]
        for a, b in zip(pts[:-1], pts[1:]):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
        cv2.rectangle(img, (lx, height - 12), (lx + 12, height - 2), colour, -1)
        _text(img, name, (lx + 16, height - 3), 0.38)
        lx += 30 + _text_width(name, 0.38)
    return img


def _grey_u8(ct: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(ct, [0.5, 99.5]) if ct.size else (0.0, 1.0)
    return (np.clip((ct - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _panel(image_bgr: np.ndarray, row_mm: float, col_mm: float, size: int, nearest: bool = False) -> np.ndarray:
    """Resize to physical aspect (longer side `size` px) and centre on a black square."""
    h, w = image_bgr.shape[0] * row_mm, image_bgr.shape[1] * col_mm
    scale = size / max(h, w)
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image_bgr, (out_w, out_h), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    canvas = np.zeros((size, size, 3), np.uint8)
    y0, x0 = (size - out_h) // 2, (size - out_w) // 2
    canvas[y0 : y0 + out_h, x0 : x0 + out_w] = resized
    return canvas


def _overlay_labels(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    present = labels > 0
    if present.any():
        colour = PALETTE[(labels[present].astype(int) - 1) % len(PALETTE)]
        bgr[present] = ((1 - alpha) * bgr[present] + alpha * colour).astype(np.uint8)
        # organ outlines in full colour so small organs stay visible
        for lab in np.unique(labels[present]):
            mask = (labels == lab).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(bgr, contours, -1, tuple(int(c) for c in PALETTE[(int(lab) - 1) % len(PALETTE)]), 1)
    return bgr


def _overlay_heat(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 0.5, colour, 0.5, 0)


def ct_figure(
    ct: np.ndarray,
    reference: np.ndarray,
    predictions: dict[str, np.ndarray],
    attention: Optional[np.ndarray],
    spacing: Sequence[float],
    panel: int = 220,
) -> np.ndarray:
    """Rows axial / coronal through the reference organs' centre; columns CT, reference, each prediction, attention.

    Arrays are (x, y, z) in LPS at the model's spacing, shown the radiological way (patient right on the left,
    anterior / superior at the top)."""
    fg = np.argwhere(reference > 0)
    centre = fg.mean(axis=0).round().astype(int) if len(fg) else np.asarray(reference.shape) // 2
    cx, cy, cz = (int(v) for v in centre)
    sx, sy, sz = (float(s) for s in spacing)

    def views(vol: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(vol[:, :, cz].T), np.ascontiguousarray(vol[:, cy, :].T[::-1])]

    aspects = [(sy, sx), (sz, sx)]
    columns: list[tuple[str, list[np.ndarray]]] = []
    greys = [_grey_u8(v) for v in views(ct)]
    columns.append(("CT", [cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in greys]))
    columns.append(("reference", [_overlay_labels(g, v) for g, v in zip(greys, views(reference))]))
    for name, pred in predictions.items():
        columns.append((name, [_overlay_labels(g, v) for g, v in zip(greys, views(pred))]))
    if attention is not None:
        columns.append(("attention", [_overlay_heat(g, v) for g, v in zip(greys, views(attention))]))
    header = 24
    rows = []
    for r, (row_mm, col_mm) in enumerate(aspects):
        tiles = []
        for name, imgs in columns:
            tile = _panel(imgs[r], row_mm, col_mm, panel)
            _outlined(tile, ("axial " if r == 0 else "coronal ") + name, (6, 16), 0.42)
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    sheet = np.vstack(rows)
    legend = np.full((header, sheet.shape[1], 3), 255, np.uint8)
    x = 8
    for lab, name in ORGANS.items():
        cv2.rectangle(legend, (x, 6), (x + 12, 18), tuple(int(c) for c in PALETTE[(lab - 1) % len(PALETTE)]), -1)
        _text(legend, name, (x + 16, 17), 0.4)
        x += 30 + _text_width(name, 0.4)
    return np.vstack([sheet, legend])


def us_figure(items: list[dict[str, Any]], columns: int = 5, tile: tuple[int, int] = (224, 288)) -> np.ndarray:
    """Frames with the attention heat map, the predicted box (green), the true box (yellow) and both labels."""
    from agn_cli.us.classifier import overlay_image

    th, tw = tile
    tiles = []
    for item in items:
        result = item["result"]
        bgr = overlay_image(result, alpha=0.45)
        if item.get("gt_box") is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in item["gt_box"])
            cv2.rectangle(bgr, (x0, y0), (x1 - 1, y1 - 1), (0, 215, 255), 1, cv2.LINE_AA)
        bgr = cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_AREA)
        caption = f"true: {item['truth']}"
        if item.get("iou") is not None:
            caption += f"   box IoU {item['iou']:.2f}"
        bar = np.zeros((22, tw, 3), np.uint8)
        bar[:] = (40, 110, 40) if item["correct"] else (40, 40, 170)  # dark green: right plane, dark red: wrong
        _text(bar, caption, (6, 15), 0.42, (255, 255, 255), 1)
        bgr = np.vstack([bgr, bar])
        tiles.append(bgr)
    if not tiles:
        return np.full((th, tw, 3), 255, np.uint8)
    while len(tiles) % columns:
        tiles.append(np.full(tiles[0].shape, 255, np.uint8))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    sheet = np.vstack(rows)
    legend = np.full((24, sheet.shape[1], 3), 255, np.uint8)
    _text(legend, "green box: predicted from attention    yellow box: ground truth    heat map: attention gates    "
                  "caption: green = plane right, red = wrong", (8, 17), 0.42)
    return np.vstack([sheet, legend])


def write_png(path: Path, image: np.ndarray) -> Path:
    from agn_cli.runtime.atomic import atomic_path

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise AgnError(f"cannot encode {path.name} as PNG")
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path


# ==================================================================================================== pipeline steps


def synth_ct(work: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Training phantoms in nnU-Net layout plus one held-out phantom (different seed stream) with its labels."""
    import SimpleITK as sitk

    from agn_cli.synth.ct_phantom import generate_ct_case_with_info, write_ct_dataset

    infos = write_ct_dataset(work / "data" / "ct-train", cfg.ct_train_cases, seed=cfg.seed, resolution=cfg.ct_resolution,
                             size_mm=cfg.ct_size_mm)
    rng = np.random.default_rng([cfg.seed, 10_000])  # case ids 0.. are the training cases: never the same stream
    image, label, info = generate_ct_case_with_info(rng, resolution=cfg.ct_resolution, size_mm=cfg.ct_size_mm)
    test_dir = work / "data" / "ct-test"
    test_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(test_dir / "test_0000.nii.gz"), useCompression=True)
    sitk.WriteImage(label, str(test_dir / "test_0000_label.nii.gz"), useCompression=True)
    return {
        "train_cases": len(infos),
        "test_case": "data/ct-test/test_0000.nii.gz",
        "test_size": list(info.size),
        "test_spacing_mm": list(info.spacing),
        "test_contrast": info.contrast,
        "_note": f"{len(infos)} training + 1 held-out phantoms, {'x'.join(map(str, info.size))} voxels",
    }


def train_segmentation(work: Path, cfg: DemoConfig) -> dict[str, Any]:
    """A short, fixed-length `agn train seg` run (epochs x steps), no validation split: the held-out phantom is
    the test."""
    from agn_cli.train.seg_trainer import SegTrainConfig, train_seg

    run = work / "models" / "ct-attention-unet3d"
    tcfg = SegTrainConfig(
        dataset=str(work / "data" / "ct-train"), output=str(run), model="attention-unet3d",
        base_filters=cfg.seg_base_filters, epochs=cfg.seg_epochs, steps_per_epoch=cfg.seg_steps, batch_size=cfg.seg_batch,
        patch=cfg.seg_patch, spacing=(cfg.spacing,) * 3, lr=cfg.seg_lr, val_fraction=0.0, seed=cfg.seed,
        device=cfg.device, p_foreground=cfg.seg_p_foreground,
    )
    summary = train_seg(tcfg, progress=False)
    shutil.rmtree(run / "cache", ignore_errors=True)  # preprocessed copies of the phantoms: derived, not needed
    rows = _read_metrics(run / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows]
    return {
        "model": "attention-unet3d",
        "base_filters": cfg.seg_base_filters,
        "patch": list(summary["patch"]),
        "spacing_mm": cfg.spacing,
        "steps": cfg.seg_epochs * cfg.seg_steps,
        "batch": cfg.seg_batch,
        "loss_per_epoch": losses,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "weights": "models/ct-attention-unet3d/latest.safetensors",
        "_note": f"{cfg.seg_epochs * cfg.seg_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "",
    }


def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _canonical_label(label: Any, geometry: Any) -> np.ndarray:
    """The reference label map on the model grid (canonical LPS, model spacing), nearest neighbour, (x, y, z)."""
    from agn_cli.ct.volume import array_xyz
    from agn_cli.ct.preprocess import resample_to_geometry, to_canonical

    return np.ascontiguousarray(array_xyz(resample_to_geometry(to_canonical(label), geometry, is_label=True)))


def segment_and_evaluate(
    weights: Path, image: Any, label: Any, device: Any, mask_path: Path, want_attention: bool = True
) -> dict[str, Any]:
    """`agn segment` + `agn evaluate seg` on one case, in memory: mask on the input grid, metrics per organ,
    and the model-resolution arrays for the figure."""
    from agn_cli.ct.volume import write_volume
    from agn_cli.metrics.segmentation import evaluate_segmentation
    from agn_cli.ct.segmenter import Segmenter, SegmentOptions

    segmenter = Segmenter.from_checkpoint(weights, device)
    # match the model's organs to the phantom's by name (another model may number them differently)
    by_name = {name: lab for lab, name in ORGANS.items()}
    mapping = {int(k): by_name[v] for k, v in segmenter.card.labels.items() if v in by_name}
    if not mapping:
        raise AgnError(f"{weights.name} segments none of the phantom's organs ({', '.join(ORGANS.values())})")
    attention = want_attention and segmenter.has_attention
    t0 = time.perf_counter()
    result = segmenter.segment(image, SegmentOptions(), attention=attention)
    seconds = time.perf_counter() - t0
    write_volume(result.labels, mask_path, overwrite=True)
    pred_image, model_labels = result.labels, result.model_labels
    if any(k != v for k, v in mapping.items()) or len(mapping) < len(segmenter.label_ids) - 1:
        import SimpleITK as sitk

        lut = np.zeros(256, np.uint8)
        for k, v in mapping.items():
            lut[k] = v
        pred_image = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(result.labels)])
        pred_image.CopyInformation(result.labels)
        model_labels = lut[model_labels]
    metrics = evaluate_segmentation(pred_image, label, labels=sorted(mapping.values()), label_names=ORGANS)
    organs = {
        row["name"]: {
            "dice": row["dice"], "hd95_mm": row["hd95_mm"], "assd_mm": row["s2s_mm"],
            "volume_pred_ml": row["vol_pred_ml"], "volume_ref_ml": row["vol_gt_ml"], "note": row.get("note", ""),
        }
        for row in metrics["classes"]
    }
    dices = [o["dice"] for o in organs.values() if o["dice"] is not None and math.isfinite(o["dice"])]
    att, att_range = None, None
    if result.attention:
        att = np.mean([np.asarray(v, np.float32) for v in result.attention.values()], axis=0)
        lo, hi = float(att.min()), float(att.max())
        att_range = [lo, hi]
        # after a short training the gates are still close to uniform (e.g. 0.90-0.96): scale min-max for display
        att = (att - lo) / (hi - lo) if hi > lo else np.zeros_like(att)
    return {
        "organs": organs,
        "mean_dice": float(np.mean(dices)) if dices else float("nan"),
        "seconds": seconds,
        "windows": result.windows,
        "attention_range": att_range,
        "architecture": segmenter.card.architecture,
        "model_spacing_mm": list(result.prepared.model_geometry.spacing),
        "_arrays": {
            "ct": result.prepared.crop(result.prepared.array),
            "pred": model_labels,
            "ref": _canonical_label(label, result.prepared.model_geometry),
            "attention": att,
            "spacing": result.prepared.model_geometry.spacing,
            "geometry": result.prepared.model_geometry,
        },
    }


def _default_ct_cost(weights: Path, image: Any, device: Any) -> tuple[float, int]:
    """(estimated seconds, windows) for the installed default CT model on this image: one timed window x windows."""
    import itertools

    import torch

    from agn_cli.runtime.checkpoint import load_checkpoint
    from agn_cli.runtime.fast import prepare_model
    from agn_cli.ct.sliding_window import window_starts
    from agn_cli.ct.preprocess import prepare_ct

    model, card = load_checkpoint(weights, device="cpu")
    prepared = prepare_ct(image, card)
    shape = prepared.array.shape
    window = [min(int(p), s) for p, s in zip(card.patch_size or shape, shape)]
    windows = len(list(itertools.product(*[window_starts(s, w, 0.5) for s, w in zip(shape, window)])))
    net = prepare_model(model, device, fast=True)
    x = torch.zeros((1, 1, *window), dtype=torch.float32, device=device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        net(x)
    return (time.perf_counter() - t0) * windows, windows


def segment_step(work: Path, cfg: DemoConfig, device: Any) -> dict[str, Any]:
    """Segment the held-out phantom with the demo's model and, when installed and cheap enough, the default model."""
    import SimpleITK as sitk

    from agn_cli.runtime.checkpoint import find_default_weights

    image = sitk.ReadImage(str(work / "data" / "ct-test" / "test_0000.nii.gz"))
    label = sitk.ReadImage(str(work / "data" / "ct-test" / "test_0000_label.nii.gz"))
    results_dir = work / "results" / "ct"
    demo = segment_and_evaluate(work / "models" / "ct-attention-unet3d" / "latest.safetensors", image, label, device,
                                results_dir / "test_0000_demo-model.nii.gz")
    out: dict[str, Any] = {"demo_model": demo, "default_model": None, "default_model_note": ""}
    default = find_default_weights("segmentation")
    if default is None:
        out["default_model_note"] = "no default CT model installed in weights/"
    elif cfg.default_model_budget_s <= 0:
        out["default_model_note"] = f"{default.name} installed; skipped in --quick mode"
    else:
        try:
            estimate, windows = _default_ct_cost(default, image, device)
            if estimate > cfg.default_model_budget_s:
                out["default_model_note"] = (
                    f"{default.name} installed; skipped: {windows} windows would take about {estimate:.0f} s here "
                    f"(budget {cfg.default_model_budget_s:.0f} s); run `agn segment` on data/ct-test yourself"
                )
            else:
                res = segment_and_evaluate(default, image, label, device, results_dir / "test_0000_default-model.nii.gz",
                                           want_attention=False)
                res["weights"] = default.name
                out["default_model"] = res
                out["default_model_note"] = f"{default.name} (installed default), {res['windows']} windows"
        except (AgnError, RuntimeError, ValueError) as exc:  # a broken installed model must not stop the demo
            out["default_model_note"] = f"{default.name} installed but not usable here: {str(exc).splitlines()[0][:200]}"
    note = f"mean Dice {demo['mean_dice']:.3f} (demo model)"
    if out["default_model"] is not None:
        note += f", {out['default_model']['mean_dice']:.3f} (default model)"
    out["_note"] = note
    return out


def synth_us(work: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Training and held-out ultrasound-like frames (separate seed streams), with labels, boxes and head masks."""
    from agn_cli.synth.us_frames import write_us_dataset

    train = write_us_dataset(work / "data" / "us-train", cfg.us_train_frames, seed=cfg.seed, size=cfg.us_size)
    test = write_us_dataset(work / "data" / "us-test", cfg.us_test_frames, seed=cfg.seed + 10_000, size=cfg.us_size)
    return {"train": train, "test": test, "size": list(cfg.us_size),
            "_note": f"{cfg.us_train_frames} training + {cfg.us_test_frames} held-out frames, {len(train)} classes"}


def train_classifier(work: Path, cfg: DemoConfig) -> dict[str, Any]:
    """A short `agn train cls` run of AG-Sononet-8 on the synthetic frames (Adam; classes sampled equally)."""
    from agn_cli.train.cls_trainer import ClsTrainConfig, train_cls

    run = work / "models" / "us-ag-sononet"
    crop = (cfg.cls_size[0] - cfg.cls_size[0] // 14, cfg.cls_size[1] - cfg.cls_size[1] // 18)  # the paper's 208x272 of 224x288
    tcfg = ClsTrainConfig(
        dataset=str(work / "data" / "us-train" / "labels.csv"), output=str(run), model=cfg.cls_model,
        aggregation="deep-sup", epochs=cfg.cls_epochs, steps_per_epoch=cfg.cls_steps, batch_size=cfg.cls_batch,
        size=cfg.cls_size, crop_size=crop, optimizer="adam", lr=cfg.cls_lr, warmup_epochs=0,
        step_size=max(1, cfg.cls_epochs), background_weight=1.0, val_fraction=0.0, seed=cfg.seed, device=cfg.device,
    )
    train_cls(tcfg, progress=False)
    shutil.rmtree(run / "cache", ignore_errors=True)
    rows = _read_metrics(run / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows]
    return {
        "model": cfg.cls_model,
        "input_size": list(cfg.cls_size),
        "steps": cfg.cls_epochs * cfg.cls_steps,
        "batch": cfg.cls_batch,
        "loss_per_epoch": losses,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "weights": "models/us-ag-sononet/latest.safetensors",
        "_note": f"{cfg.cls_epochs * cfg.cls_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "",
    }


def _blur_sigma(cls_size: Sequence[int]) -> float:
    """The default box blur (12 px) is tuned for SonoNet's 224x288 input: scale it to the demo's input."""
    return round(12.0 * min(cls_size) / 224.0, 2)


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def classify_step(work: Path, cfg: DemoConfig, device: Any) -> dict[str, Any]:
    """`agn classify --boxes` on the held-out frames with the demo's classifier; accuracy, confusion, box IoU."""
    from agn_cli.us.classifier import Classifier, classify_inputs
    from agn_cli.us.localisation import LocalisationParams, box_iou, localisation_table

    test_dir = work / "data" / "us-test"
    truth = {row["path"]: row["label"] for row in _read_csv_rows(test_dir / "labels.csv")}
    boxes: dict[str, Optional[list[float]]] = {}
    for row in _read_csv_rows(test_dir / "boxes.csv"):
        boxes[row["path"]] = [float(row[k]) for k in ("x0", "y0", "x1", "y1")] if row["x0"] != "" else None
    rel_paths = list(truth)
    params = LocalisationParams(blur_sigma=_blur_sigma(cfg.cls_size))
    classifier = Classifier(
        weights=work / "models" / "us-ag-sononet" / "latest.safetensors", device=device, boxes=True,
        keep_attention=True, keep_images=True, localisation=params,
    )
    results, summary = classify_inputs(classifier, [test_dir / p for p in rel_paths], batch_size=16)
    if summary.failed:
        raise AgnError(f"could not read {summary.failed[0]['path']}: {summary.failed[0]['error']}")
    classes = classifier.labels
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    items: list[dict[str, Any]] = []
    records: list[tuple[str, float]] = []
    for rel, result in zip(rel_paths, results):
        true_label = truth[rel]
        confusion[classes.index(true_label), classes.index(result.label)] += 1
        gt_box = boxes.get(rel)
        iou = None
        if gt_box is not None:
            iou = box_iou(result.box, gt_box) if result.box is not None else 0.0
            records.append((true_label, iou))
        items.append({"path": rel, "truth": true_label, "result": result, "gt_box": gt_box, "iou": iou,
                      "correct": result.label == true_label})
    table = localisation_table(records)
    accuracy = float(np.trace(confusion) / max(1, confusion.sum()))
    frames = [
        {**it["result"].to_dict(), "path": it["path"], "truth": it["truth"], "gt_box": it["gt_box"], "iou": it["iou"]}
        for it in items
    ]
    (work / "results" / "us").mkdir(parents=True, exist_ok=True)
    from agn_cli.runtime.atomic import write_text_atomic

    write_text_atomic(work / "results" / "us" / "predictions.json",
                      json.dumps(_json_safe({"classes": classes, "frames": frames}), indent=2) + "\n", overwrite=True)
    out = {
        "classes": classes,
        "frames": len(items),
        "accuracy": accuracy,
        "confusion": confusion.tolist(),
        "localisation": table,
        "iou_mean": table.get("all", {}).get("iou_mean", float("nan")),
        "correctness": table.get("all", {}).get("correctness", float("nan")),
        "frames_per_second": summary.frames_per_second,
        "_items": items,
        "_note": f"accuracy {accuracy:.2f}, box IoU {table.get('all', {}).get('iou_mean', float('nan')):.2f}",
    }
    return out


def bench_step(cfg: DemoConfig) -> dict[str, Any]:
    """`agn bench --stage model --compare-eager` for the demo's networks at a couple of sizes (forward, batch 1)."""
    from agn_cli.apps.bench import BenchConfig, run_benchmark

    jobs: list[tuple[str, str, dict[str, Any]]] = []
    for size in cfg.bench_sizes:
        jobs.append(("attention-unet3d", "x".join(map(str, size)), {"num_classes": 6, "base_filters": cfg.seg_base_filters}))
    jobs.append((cfg.cls_model, "x".join(map(str, cfg.bench_2d_size)), {"num_classes": 5}))
    rows = []
    environment: dict[str, Any] = {}
    for model, size, kwargs in jobs:
        record = run_benchmark(BenchConfig(
            model=model, size=size, batch=1, device=cfg.device, stage="model", compare_eager=True,
            repeat=cfg.bench_repeat, warmup=1, seed=cfg.seed, threads=cfg.threads, **kwargs,
        ))
        results = record["results"]
        rows.append({
            "model": model,
            "size": size,
            "params": record["params"],
            "eager_ms": results["eager"]["median_ms"],
            "fast_ms": results["fast"]["median_ms"],
            "fast_dtype": results["fast"].get("dtype", "fp32"),
            "speedup": record.get("speedup"),
            "argmax_agreement": record.get("agreement", {}).get("argmax_agreement"),
        })
        environment = {k: record.get(k) for k in ("device", "device_name", "threads", "torch", "load_average")}
    speedups = ", ".join(f"{r['speedup']:.2f}x" for r in rows if r["speedup"])
    return {"rows": rows, "environment": environment, "repeat": cfg.bench_repeat, "_note": f"fast vs eager: {speedups}"}


# ==================================================================================================== report


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "table" | "image" | "list"
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)  # table: first row is the header
    items: list[str] = field(default_factory=list)
    path: str = ""  # image: relative to the report


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out += [f"# {b.text}", ""]
        elif b.kind == "h2":
            out += [f"## {b.text}", ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "list":
            out += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "image":
            out += [f"![{b.text}]({b.path})", ""]
        elif b.kind == "table" and b.rows:
            header, *body = b.rows
            out.append("| " + " | ".join(_md_escape(c) for c in header) + " |")
            out.append("|" + "|".join(" --- " for _ in header) + "|")
            out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _inline_html(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only Markdown inline used in the report)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list[Block], root: Path, title: str) -> str:
    """A single self-contained HTML file: images embedded as base64 PNG."""
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "image":
            data = base64.b64encode((root / b.path).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline_html(b.text)}</figcaption></figure>")
        elif b.kind == "table" and b.rows:
            header, *rows = b.rows
            head = "".join(f"<th>{_inline_html(c)}</th>" for c in header)
            trs = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
    style = (
        "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;"
        "padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd;padding-bottom:.3em}"
        "h2{margin-top:1.8em;border-bottom:1px solid #eee}table{border-collapse:collapse;margin:.8em 0}"
        "th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}"
        "figcaption{color:#555;font-size:.9em}code{background:#f3f3f3;padding:0 .25em;border-radius:3px}"
    )
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _threads(n: Any) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def build_report(summary: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    """The report's content, rendered to both Markdown and HTML."""
    seg, cls, bench = summary["ct"], summary["ultrasound"], summary["bench"]
    demo = seg["demo_model"]
    default = seg.get("default_model")
    b: list[Block] = [Block("h1", "agn demo report")]
    b.append(Block("p", (
        f"Everything below was made by `agn demo` in {summary['total_seconds']:.0f} s on {summary['environment']['device_name']} "
        f"(seed {summary['seed']}, {_threads(summary['environment']['threads'])}"
        f"{', --quick sizes' if summary['quick'] else ''}). All data are synthetic phantoms and "
        "cartoon ultrasound frames made by `agn synth`; the networks were trained for "
        f"{seg['training']['steps']} and {cls['training']['steps']} steps, so the numbers show that the pipeline works "
        "end to end, not what the methods reach with real data and full training. The same seed and thread count "
        "give the same numbers (timings aside)."
    )))
    b.append(Block("h2", "Results at a glance"))
    rows = [["what", "value"],
            ["CT: mean Dice over 5 organs (demo model, held-out phantom)", _f(demo["mean_dice"])]]
    if default:
        rows.append([f"CT: mean Dice (installed default model {default.get('weights', '')})", _f(default["mean_dice"])])
    rows += [
        ["Ultrasound: plane accuracy on held-out frames", _f(cls["accuracy"], 2)],
        ["Ultrasound: box IoU from attention (mean over frames with a structure)", _f(cls["iou_mean"], 2)],
        ["Ultrasound: boxes with IoU > 0.5", _f(cls["correctness"], 2)],
    ]
    for r in bench["rows"]:
        rows.append([f"Bench: {r['model']} {r['size']} forward, fast vs eager",
                     f"{r['fast_ms']:.1f} ms vs {r['eager_ms']:.1f} ms ({_f(r['speedup'], 2)}x)"])
    b.append(Block("table", rows=rows))

    b.append(Block("h2", "1. CT organ segmentation (Attention U-Net 3D)"))
    t = seg["training"]
    b.append(Block("p", (
        f"{summary['ct']['data']['train_cases']} synthetic abdominal CT phantoms (`agn synth ct`) trained an attention-unet3d "
        f"(base filters {t['base_filters']}, patch {'x'.join(map(str, t['patch']))} at {t['spacing_mm']:g} mm, batch {t['batch']}) "
        f"for {t['steps']} steps (`agn train seg`); loss {_f(t['first_loss'])} -> {_f(t['final_loss'])} (Dice + cross-entropy, "
        "deep supervision). It then segmented a held-out phantom (`agn segment`) and was scored against the phantom's "
        "labels (`agn evaluate seg`): Dice, HD95 and ASSD (mean symmetric surface distance) in mm on the input grid."
    )))
    header = ["organ", "Dice", "HD95 (mm)", "ASSD (mm)", "volume pred / ref (mL)"]
    if default:
        header += ["Dice (default model)"]
    rows = [header]
    for name, m in demo["organs"].items():
        row = [name, _f(m["dice"]), _f(m["hd95_mm"], 1), _f(m["assd_mm"], 1),
               f"{_f(m['volume_pred_ml'], 0)} / {_f(m['volume_ref_ml'], 0)}"]
        if default:
            row.append(_f(default["organs"].get(name, {}).get("dice")))
        rows.append(row)
    b.append(Block("table", rows=rows))
    rng = demo.get("attention_range")
    span = f", raw range {rng[0]:.2f}-{rng[1]:.2f}, shown min-max scaled" if rng else ""
    b.append(Block("image", "Held-out phantom: CT, reference labels, prediction and the attention gates' coefficients "
                            f"(mean of the three gates{span}), axial and coronal", path=figures["ct"]))
    b.append(Block("image", "Dice per organ", path=figures["dice"]))
    if "ct_preview" in figures:
        b.append(Block("image", "The preview `agn segment --preview` writes for the same case", path=figures["ct_preview"]))
    b.append(Block("p", f"Installed default CT model: {seg['default_model_note']}."))

    b.append(Block("h2", "2. Ultrasound plane detection and boxes from attention (AG-Sononet)"))
    t = cls["training"]
    b.append(Block("p", (
        f"{cls['data']['train_frames']} synthetic fetal-ultrasound-like frames in {len(cls['classes'])} classes (`agn synth us`) "
        f"trained {t['model']} at {'x'.join(map(str, t['input_size']))} for {t['steps']} steps (`agn train cls`, deep supervision); "
        f"loss {_f(t['first_loss'])} -> {_f(t['final_loss'])}. It then labelled {cls['frames']} held-out frames and drew a box "
        "from its attention gates (`agn classify --boxes`, no box labels used in training), scored against the frames' known "
        "boxes. The installed SonoNet-16 classifier (weights/) was trained on real scans, so it is not used on these cartoons."
    )))
    header = ["true \\ predicted"] + cls["classes"]
    rows = [header] + [[c] + [str(v) for v in row] for c, row in zip(cls["classes"], cls["confusion"])]
    b.append(Block("table", rows=rows))
    loc_rows = [["class", "frames", "IoU mean", "IoU > 0.5"]]
    for name, v in cls["localisation"].items():
        loc_rows.append([name, str(v["n"]), _f(v["iou_mean"], 2), _f(v["correctness"], 2)])
    b.append(Block("table", rows=loc_rows))
    b.append(Block("image", "Held-out frames: attention heat map, predicted box (green), true box (yellow)", path=figures["us"]))
    b.append(Block("image", "Training loss of both networks (per epoch)", path=figures["loss"]))

    b.append(Block("h2", "3. Speed: fast path vs plain PyTorch (`agn bench`)"))
    env = bench["environment"]
    b.append(Block("p", (
        f"Network forward pass only, batch 1, median of {bench['repeat']} calls after one warm-up, on {env.get('device_name')} "
        f"({_threads(env.get('threads'))}, load average {env.get('load_average')} at the time). The fast path folds batch norm "
        "into the convolutions, uses channels-last memory and bf16 where the processor supports it."
    )))
    rows = [["model", "input", "parameters", "eager (ms)", "fast (ms)", "speed-up", "fast dtype", "argmax agreement"]]
    for r in bench["rows"]:
        rows.append([r["model"], r["size"], f"{r['params']:,}", f"{r['eager_ms']:.1f}", f"{r['fast_ms']:.1f}",
                     _f(r["speedup"], 2) + "x", r["fast_dtype"], _f(r["argmax_agreement"], 3)])
    b.append(Block("table", rows=rows))
    b.append(Block("image", "Milliseconds per forward pass", path=figures["bench"]))

    b.append(Block("h2", "Steps and timings"))
    rows = [["step", "seconds", "result"]] + [[s["title"], f"{s['seconds']:.1f}", s["note"]] for s in summary["steps"]]
    rows.append(["total", f"{summary['total_seconds']:.1f}", ""])
    b.append(Block("table", rows=rows))
    b.append(Block("h2", "Files"))
    b.append(Block("list", items=[
        "`data/ct-train/` synthetic CT phantoms (nnU-Net v2 layout), `data/ct-test/` the held-out phantom and its labels",
        "`data/us-train/`, `data/us-test/` synthetic frames with labels.csv, boxes.csv and head masks",
        "`models/ct-attention-unet3d/`, `models/us-ag-sononet/` the trained runs (safetensors + model card, metrics.csv)",
        "`results/ct/` predicted label maps, `results/us/predictions.json` labels and boxes per frame",
        "`figures/` the PNG figures, `summary.json` every number in this report",
    ]))
    b.append(Block("p", "Try the commands yourself, from inside this folder:"))
    b.append(Block("list", items=[
        "`agn segment data/ct-test/test_0000.nii.gz --weights models/ct-attention-unet3d -o mask.nii.gz --preview p.png`",
        "`agn evaluate seg mask.nii.gz data/ct-test/test_0000_label.nii.gz`",
        "`agn classify data/us-test/femur data/us-test/abdominal --weights models/us-ag-sononet --boxes "
        f"--blur-sigma {_blur_sigma(summary['config']['cls_size']):g} --overlays overlays/`",
        "`agn train seg data/ct-train -o my-run --spacing 6 --patch 48x48x32 --base-filters 8` (longer training: better Dice)",
    ]))
    return b


# ==================================================================================================== the demo


def _figures(work: Path, seg: dict[str, Any], cls: dict[str, Any], bench: dict[str, Any], train_seg_: dict[str, Any],
             train_cls_: dict[str, Any]) -> dict[str, str]:
    fig_dir = work / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    arrays = seg["demo_model"]["_arrays"]
    predictions = {"prediction": arrays["pred"]}
    default = seg.get("default_model")
    if default is not None:
        d_arr = default["_arrays"]
        if d_arr["pred"].shape == arrays["pred"].shape:
            predictions["default model"] = d_arr["pred"]
        else:  # another spacing: bring it onto the demo model's grid for the side-by-side view
            import SimpleITK as sitk

            from agn_cli.ct.volume import array_xyz, image_from_xyz
            from agn_cli.ct.preprocess import resample_to_geometry

            src = image_from_xyz(d_arr["pred"].astype(np.uint8), d_arr["geometry"])
            moved = resample_to_geometry(src, arrays["geometry"], is_label=True, pixel_type=sitk.sitkUInt8)
            predictions["default model"] = np.ascontiguousarray(array_xyz(moved))
    write_png(fig_dir / "ct_segmentation.png",
              ct_figure(arrays["ct"], arrays["ref"], predictions, arrays["attention"], arrays["spacing"]))
    figures["ct"] = "figures/ct_segmentation.png"
    if arrays["attention"] is not None:
        from agn_cli.viz.slices import render_preview

        render_preview(arrays["ct"], arrays["pred"], arrays["attention"], arrays["spacing"], fig_dir / "ct_preview.png",
                       overwrite=True, title="test_0000 (demo model)")
        figures["ct_preview"] = "figures/ct_preview.png"
    organs = list(seg["demo_model"]["organs"])
    series = {"demo model": [seg["demo_model"]["organs"][o]["dice"] for o in organs]}
    if default is not None:
        series["default model"] = [default["organs"].get(o, {}).get("dice") for o in organs]
    write_png(fig_dir / "dice.png", bar_chart("Dice per organ (held-out phantom)", organs, series, ymax=1.0, fmt="{:.2f}"))
    figures["dice"] = "figures/dice.png"
    seg_loss = train_seg_["loss_per_epoch"]
    cls_loss = train_cls_["loss_per_epoch"]
    left = line_chart("CT segmentation loss", {"attention-unet3d": (list(range(1, len(seg_loss) + 1)), seg_loss)}, "epoch")
    right = line_chart("Ultrasound classification loss", {train_cls_["model"]: (list(range(1, len(cls_loss) + 1)), cls_loss)},
                       "epoch")
    write_png(fig_dir / "training_loss.png", np.hstack([left, right]))
    figures["loss"] = "figures/training_loss.png"
    items = _pick_frames(cls["_items"], per_class=2)
    write_png(fig_dir / "ultrasound_boxes.png", us_figure(items, columns=5, tile=_tile_for(items)))
    figures["us"] = "figures/ultrasound_boxes.png"
    cats = [f"{r['model']}\n{r['size']}" for r in bench["rows"]]
    write_png(fig_dir / "bench.png", bar_chart("Forward pass, batch 1 (ms, lower is better)", cats,
                                               {"eager fp32": [r["eager_ms"] for r in bench["rows"]],
                                                "fast path": [r["fast_ms"] for r in bench["rows"]]}, fmt="{:.1f}"))
    figures["bench"] = "figures/bench.png"
    return figures


def _tile_for(items: list[dict[str, Any]]) -> tuple[int, int]:
    if not items:
        return (224, 288)
    h, w = items[0]["result"].shape[:2]
    scale = 288 / max(w, 1)
    return (max(64, int(round(h * scale))), 288)


def _pick_frames(items: list[dict[str, Any]], per_class: int) -> list[dict[str, Any]]:
    """Up to `per_class` frames of every class, in class order, for the figure."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_class.setdefault(it["truth"], []).append(it)
    picked = []
    for k in range(per_class):
        for name in by_class:
            if k < len(by_class[name]):
                picked.append(by_class[name][k])
    return picked


def run_demo(
    output: Path | str = DEFAULT_OUTPUT,
    cfg: Optional[DemoConfig] = None,
    overwrite: bool = False,
    listener: Optional[Callable[[str, StepRecord], None]] = None,
) -> dict[str, Any]:
    """Run every step, write the report, summary.json, figures, data and weights into `output`; return the summary."""
    from agn_cli import __version__
    from agn_cli.runtime.device import configure_cpu_threads, device_name, resolve_device
    from agn_cli.runtime.atomic import atomic_dir, write_text_atomic

    cfg = cfg or DemoConfig.default()
    output = Path(output).expanduser()
    check_output(output, overwrite)
    device = resolve_device(cfg.device)
    import torch

    previous_threads = torch.get_num_threads()
    threads = configure_cpu_threads(cfg.threads)
    steps = Steps(listener)
    try:
        # built in a hidden folder, moved into place when complete; an old demo folder is replaced only with --overwrite
        with atomic_dir(output, may_replace=lambda folder: check_output(folder, overwrite)) as work:
            ct_data = steps.run("synth_ct", "synthetic CT phantoms", lambda: synth_ct(work, cfg))
            seg_train = steps.run("train_seg", "train attention-unet3d", lambda: train_segmentation(work, cfg))
            seg = steps.run("segment", "segment + evaluate held-out CT", lambda: segment_step(work, cfg, device))
            us_data = steps.run("synth_us", "synthetic ultrasound frames", lambda: synth_us(work, cfg))
            cls_train = steps.run("train_cls", f"train {cfg.cls_model}", lambda: train_classifier(work, cfg))
            cls = steps.run("classify", "classify frames + boxes", lambda: classify_step(work, cfg, device))
            bench = steps.run("bench", "benchmark eager vs fast", lambda: bench_step(cfg))
            figures: dict[str, str] = {}
            summary: dict[str, Any] = {}

            def report() -> dict[str, Any]:
                figures.update(_figures(work, seg, cls, bench, seg_train, cls_train))
                return {"_note": f"{len(figures)} figures"}

            steps.run("report", "figures + report", report)
            total = steps.elapsed
            ct_summary = {
                "data": ct_data,
                "training": seg_train,
                "demo_model": {k: v for k, v in seg["demo_model"].items() if not k.startswith("_")},
                "default_model": None if seg["default_model"] is None
                else {k: v for k, v in seg["default_model"].items() if not k.startswith("_")},
                "default_model_note": seg["default_model_note"],
            }
            us_summary = {
                "data": {"train_frames": cfg.us_train_frames, "test_frames": cfg.us_test_frames, "size": list(cfg.us_size),
                         "train_per_class": us_data["train"], "test_per_class": us_data["test"]},
                "training": cls_train,
                **{k: v for k, v in cls.items() if not k.startswith("_")},
            }
            summary = {
                "agn_version": __version__,
                "seed": cfg.seed,
                "quick": cfg.quick,
                "output": str(output),
                "report": str(output / "report.md"),
                "report_html": str(output / "report.html"),
                "total_seconds": total,
                "budget_seconds": BUDGET_S if not cfg.quick else None,
                "environment": {"device": str(device), "device_name": device_name(device), "threads": threads},
                "steps": [{"key": s.key, "title": s.title, "seconds": s.seconds, "note": s.note} for s in steps.records],
                "ct": ct_summary,
                "ultrasound": us_summary,
                "bench": bench,
                "figures": dict(figures),
                "config": asdict(cfg),
            }
            summary = _json_safe(summary)
            blocks = build_report(summary, figures)
            write_text_atomic(work / "report.md", render_markdown(blocks), overwrite=True)
            write_text_atomic(work / "report.html", render_html(blocks, work, "agn demo report"), overwrite=True)
            write_text_atomic(work / "summary.json", json.dumps(summary, indent=2) + "\n", overwrite=True)
            _fix_paths(work, output)
    finally:
        torch.set_num_threads(previous_threads)  # the demo may run inside a larger Python process (tests, notebooks)
    return summary


def _fix_paths(work: Path, output: Path) -> None:
    """Training configs and model cards record where their data were; point them at the final folder."""
    old, new = str(work.resolve()), str(output.resolve())
    for path in work.rglob("*.json"):
        text = path.read_text(encoding="utf-8")
        if old in text:
            path.write_text(text.replace(old, new), encoding="utf-8")
