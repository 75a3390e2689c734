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

The report (figures, Markdown, HTML) is made by `demo_report`.
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from agn_cli.apps.demo_report import build_report, render_html, render_markdown, write_figures
from agn_cli.errors import AgnError
from agn_cli.runtime.jsonio import dumps, jsonable
from agn_cli.synth.ct_phantom import ORGAN_NAMES as ORGANS

DEFAULT_OUTPUT = "agn-demo"
BUDGET_S = 180.0  # the default demo's target wall time on a quiet 2-core CPU
_MARKERS = ("summary.json", "report.md", "report.html")  # what makes a folder a previous demo's output


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
    return {"model": "attention-unet3d", "base_filters": cfg.seg_base_filters, "patch": list(summary["patch"]),
            "spacing_mm": cfg.spacing, **_training_record(run, cfg.seg_epochs * cfg.seg_steps, cfg.seg_batch)}


def _training_record(run: Path, steps: int, batch: int) -> dict[str, Any]:
    """What the report shows of a short training run (its loss per epoch from metrics.csv); drops the run's cache of
    preprocessed data (derived, not needed)."""
    shutil.rmtree(run / "cache", ignore_errors=True)
    metrics = run / "metrics.csv"
    rows = _read_csv_rows(metrics) if metrics.is_file() else []
    losses = [float(r["train_loss"]) for r in rows]
    return {
        "steps": steps,
        "batch": batch,
        "loss_per_epoch": losses,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "weights": f"models/{run.name}/latest.safetensors",
        "_note": f"{steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "",
    }


def _canonical_label(label: Any, geometry: Any) -> np.ndarray:
    """The reference label map on the model grid (canonical LPS, model spacing), nearest neighbour, (x, y, z)."""
    from agn_cli.ct.preprocess import resample_to_geometry, to_canonical
    from agn_cli.ct.volume import array_xyz

    return np.ascontiguousarray(array_xyz(resample_to_geometry(to_canonical(label), geometry, is_label=True)))


def segment_and_evaluate(
    weights: Path, image: Any, label: Any, device: Any, mask_path: Path, want_attention: bool = True
) -> dict[str, Any]:
    """`agn segment` + `agn evaluate seg` on one case, in memory: mask on the input grid, metrics per organ,
    and the model-resolution arrays for the figure."""
    from agn_cli.ct.segmenter import Segmenter, SegmentOptions
    from agn_cli.ct.volume import write_volume
    from agn_cli.metrics.segmentation import evaluate_segmentation

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

    from agn_cli.ct.preprocess import prepare_ct
    from agn_cli.ct.sliding_window import window_starts
    from agn_cli.runtime.checkpoint import load_checkpoint
    from agn_cli.runtime.fast import prepare_model

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
    default = find_default_weights("segmentation", dims=3)
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
    return {"model": cfg.cls_model, "input_size": list(cfg.cls_size),
            **_training_record(run, cfg.cls_epochs * cfg.cls_steps, cfg.cls_batch)}


def _blur_sigma(cls_size: Sequence[int]) -> float:
    """The default box blur (12 px) is tuned for SonoNet's 224x288 input: scale it to the demo's input."""
    return round(12.0 * min(cls_size) / 224.0, 2)


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def classify_step(work: Path, cfg: DemoConfig, device: Any) -> dict[str, Any]:
    """`agn classify --boxes` on the held-out frames with the demo's classifier; accuracy, confusion, box IoU."""
    from agn_cli.us.classifier import Classifier, classify_inputs
    from agn_cli.us.ground_truth import GroundTruth, best_match
    from agn_cli.us.localisation import LocalisationParams, localisation_table

    test_dir = work / "data" / "us-test"
    truth = {row["path"]: row["label"] for row in _read_csv_rows(test_dir / "labels.csv")}
    boxes = GroundTruth(test_dir / "boxes.csv")
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
        targets, _, _ = boxes.lookup(rel, 0)
        gt_box, iou = best_match(result.box, targets) if targets else (None, None)
        if iou is not None:
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
                      dumps({"classes": classes, "frames": frames}, digits=6), overwrite=True)
    out = {
        "classes": classes,
        "frames": len(items),
        "accuracy": accuracy,
        "confusion": confusion.tolist(),
        "localisation": table,
        "iou_mean": table.get("all", {}).get("iou_mean", float("nan")),
        "correctness": table.get("all", {}).get("correctness", float("nan")),
        "frames_per_second": summary.frames_per_second,
        "blur_sigma": params.blur_sigma,
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


# ==================================================================================================== the demo


def run_demo(
    output: Path | str = DEFAULT_OUTPUT,
    cfg: Optional[DemoConfig] = None,
    overwrite: bool = False,
    listener: Optional[Callable[[str, StepRecord], None]] = None,
) -> dict[str, Any]:
    """Run every step, write the report, summary.json, figures, data and weights into `output`; return the summary."""
    from agn_cli import __version__
    from agn_cli.runtime.atomic import atomic_dir, write_text_atomic
    from agn_cli.runtime.device import configure_cpu_threads, device_name, resolve_device

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
                figures.update(write_figures(work, seg, cls, bench, seg_train, cls_train))
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
            summary = jsonable(summary, digits=6)
            blocks = build_report(summary, figures)
            write_text_atomic(work / "report.md", render_markdown(blocks), overwrite=True)
            write_text_atomic(work / "report.html", render_html(blocks, work, "agn demo report"), overwrite=True)
            write_text_atomic(work / "summary.json", dumps(summary), overwrite=True)
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
