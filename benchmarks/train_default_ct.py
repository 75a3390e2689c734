#!/usr/bin/env python
"""Recreate agn's default CT weights, `weights/ct-attention-unet3d-synth.safetensors` + `.json` (issue 7).

    python benchmarks/train_default_ct.py --work /tmp/agn-default-ct              # data, train, install
    python benchmarks/train_default_ct.py --work /tmp/agn-default-ct --stage install --overwrite
    python benchmarks/train_default_ct.py --work /tmp/agn-default-ct --stage evaluate   # real CT, needs AGN_SHARED

Stages (each one skips what is already done, so a killed run continues with the same command):

1. data: `agn synth ct` phantoms (generator seed and case count below) in nnU-Net v2 layout;
2. train: `agn train seg` with the recipe below (CPU: about 2 s per step of two 80x64x48 patches on one EPYC core,
   so about 20 min; the run resumes from its latest state if interrupted);
3. install: the run's final (latest) checkpoint is written to weights/ with a model card that says exactly what it
   was trained on, with label ids renumbered to TotalSegmentator's "total" ids (1 spleen, 2 kidney_right,
   3 kidney_left, 5 liver, 7 pancreas) so masks compare directly with TotalSegmentator outputs, and marked default;
4. evaluate: Dice / HD95 / ASSD per organ on the one real CT in $AGN_SHARED/data/ct/totalseg-example (silver labels).
   That scan was looked at while the phantoms and the recipe were developed: it is not a held-out test set.

Nothing here reads real data for training: the network sees only synthetic phantoms.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the agn_cli of this checkout, also when run as a plain script

from agn_cli.synth.ct_phantom import TOTALSEGMENTATOR_IDS  # noqa: E402

WEIGHTS = ROOT / "weights" / "ct-attention-unet3d-synth.safetensors"

# ---- the recipe (change nothing here without retraining and updating the model card text below)
PHANTOM_SEED = 7
PHANTOM_CASES = 64
PHANTOM_RESOLUTION = 128
TRAIN_ARGS = [
    "--model", "attention-unet3d", "--base-filters", "8", "--norm", "instance",
    "--steps-per-epoch", "30", "--batch-size", "2",
    "--patch", "80x64x48", "--spacing", "4",
    "--lr", "1e-3", "--schedule", "poly", "--loss", "dice+ce", "--deep-supervision", "aux",
    "--rotation", "15", "--scale", "0.15", "--translation", "0.05", "--p-affine", "0.6",
    "--intensity", "0.25", "--noise", "0.1", "--fg-oversample", "0.5",
    "--val-fraction", "0.05", "--val-every", "20", "--seed", "0",
]
# 20 epochs in four sessions of 5 (--stop-after 5, then --resume); a resumed run continues the same sample and random
# streams (tests/test_train_seg.py), so sessions only mark where it may pause (the shipped weights ran all 20 at once).
SESSIONS = [("20", 5)] * 4
# TotalSegmentator v2 "total" ids for the phantom classes (phantom ids 1..5 = spleen, kidney_right, kidney_left,
# liver, pancreas); class order is unchanged, only the ids written into the mask differ.
CARD_LABELS = {0: "background", **{real_id: name for name, real_id in TOTALSEGMENTATOR_IDS.items()}}
# Inference window at 4 mm: covers a whole abdomen-pelvis scan (e.g. 366 x 303 x 336 mm) in one or two windows.
INFERENCE_PATCH = [96, 80, 64]
# Each of these organs is one connected structure; the InstanceNorm model leaves stray islands far from the organs on
# real CT (liver HD95 190 mm on the example scan without this), so agn segment keeps the largest component by default.
POSTPROCESSING = {"largest_component": True}
REAL_IDS = TOTALSEGMENTATOR_IDS


def agn(*args: str) -> None:
    cmd = [sys.executable, "-m", "agn_cli", *args]
    print("+ agn " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def stage_data(work: Path) -> Path:
    data = work / "phantoms"
    if not (data / "dataset.json").is_file():
        agn("synth", "ct", "-o", str(data), "--cases", str(PHANTOM_CASES), "--seed", str(PHANTOM_SEED),
            "--resolution", str(PHANTOM_RESOLUTION))
    return data


def stage_train(work: Path, data: Path) -> Path:
    run = work / "run"
    done = 0
    if (run / "metrics.csv").is_file():
        done = _training_wall_time(run)[1]
    for k, (epochs, stop_after) in enumerate(SESSIONS):
        start = sum(s for _, s in SESSIONS[:k] if s)  # epochs finished before this session
        end = start + stop_after if stop_after else int(epochs)
        if done >= end:
            continue
        resume = (run / "latest_state.pt").is_file()
        agn("train", "seg", str(data), "-o", str(run), *TRAIN_ARGS, "--epochs", epochs, "--no-progress",
            *(["--stop-after", str(end - max(done, start))] if stop_after else []), *(["--resume"] if resume else []))
        done = end
    return run


def _training_wall_time(run: Path) -> tuple[float, int]:
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return sum(float(r["seconds"]) for r in rows), len(rows)


def machine() -> str:
    cpus = os.cpu_count() or 0
    return f"{cpus}-core {platform.processor() or platform.machine()} CPU, no GPU"


def stage_install(work: Path, out: Path, overwrite: bool, machine_text: str | None = None) -> Path:
    """Final checkpoint of the run -> weights/ with the default model card."""
    import dataclasses

    from agn_cli.runtime.checkpoint import load_checkpoint, save_checkpoint
    from agn_cli.synth.ct_phantom import LABELS

    run = work / "run"
    model, card = load_checkpoint(run / "latest.safetensors")
    config = json.loads((run / "config.json").read_text())
    seconds, epochs = _training_wall_time(run)
    steps = epochs * int(config["steps_per_epoch"])
    phantom_names = [n for n, i in sorted(LABELS.items(), key=lambda kv: kv[1]) if i]
    if [CARD_LABELS[k] for k in sorted(CARD_LABELS) if k] != phantom_names:
        raise SystemExit("CARD_LABELS must list the phantom classes in the phantom id order")
    meta = json.loads((work / "phantoms" / "phantoms.json").read_text())
    contrasts = sorted({v["contrast"] for v in meta.values()})
    new = dataclasses.replace(
        card,
        labels=dict(CARD_LABELS),
        patch_size=list(INFERENCE_PATCH),
        default=True,
        postprocessing=dict(POSTPROCESSING),
        training_data=(
            f"Synthetic only: {PHANTOM_CASES} abdominal CT phantoms from agn's generator (agn_cli/synth/ct_phantom.py, "
            f"agn {card.agn_version}: 'agn synth ct --cases {PHANTOM_CASES} --seed {PHANTOM_SEED} --resolution "
            f"{PHANTOM_RESOLUTION}'), contrast phases {' and '.join(contrasts)} (about half each), random spacing "
            "(in-plane 2.4-4 mm, slices 1.9-5 mm), orientation (LPS, RAS, oblique) and field of view (about half "
            "abdomen-pelvis, 330-480 mm in z, the rest upper abdomen); "
            f"{len(meta) - round(len(meta) * float(config['val_fraction']))} cases trained on, the rest held out for "
            f"validation. Resampled to {card.spacing[0]:g} mm isotropic, training patch "
            f"{'x'.join(map(str, card.patch_size or []))} voxels. {steps} Adam steps of batch 2 ({epochs} epochs x "
            f"{config['steps_per_epoch']}), lr {config['lr']:g} poly, {config['norm']} normalisation layers, "
            "Dice + cross-entropy with deep supervision, "
            f"random affine and intensity/noise augmentation; {seconds / 60:.0f} min of training on a "
            f"{machine_text or machine()} (shared with other jobs). No real scan was used for training."
        ),
        source="benchmarks/train_default_ct.py (agn synth ct + agn train seg; recipe in the script)",
        notes=(
            "Limits: trained on synthetic phantoms only (geometric organ templates, simple textures), so expect "
            "lower accuracy than a model trained on real scans; abdomen only (liver, spleen, kidneys, pancreas; other "
            "structures are background); contrast phases seen: none and portal venous (arterial or delayed phases, "
            "oral contrast, metal, and pathology such as tumours, cysts or missing organs were never seen); adult "
            "anatomy; low resolution (4 mm), so small structures such as the pancreas are coarse. Sim-to-real Dice "
            "was measured on ONE real CT (TotalSegmentator example, silver-standard labels) that was also looked "
            "at during development, so it is not a held-out test. Research and education only: NOT for clinical use. "
            "Label ids follow TotalSegmentator's 'total' task (1 spleen, 2 kidney_right, 3 kidney_left, 5 liver, "
            "7 pancreas). Inference window (patch_size) is larger than the training patch; the network is fully "
            "convolutional. agn segment keeps the largest connected component of each organ (postprocessing; "
            "--all-components keeps every component)."
        ),
        metrics={
            "phantom_validation": card.metrics,
            "training_wall_time_s": round(seconds, 1),
            "training_steps": steps,
            "seconds_per_step": round(seconds / max(steps, 1), 2),
        },
        created="",
    )
    real = stage_evaluate_model(model, new)
    if real is not None:
        new.metrics["real_ct_totalseg_example"] = real
    if out.exists() and not overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    save_checkpoint(out, model, new, overwrite=overwrite)
    print(f"installed {out} and {out.with_suffix('.json')}")
    return out


def stage_evaluate_model(model, card) -> dict | None:
    """Per-organ Dice, HD95 and ASSD (mm) on the real example CT; None without AGN_SHARED data."""
    import SimpleITK as sitk
    import torch

    from agn_cli.ct.segmenter import Segmenter, SegmentOptions
    from agn_cli.metrics.segmentation import evaluate_segmentation

    shared = Path(os.environ.get("AGN_SHARED", ROOT.parent / "shared"))
    folder = shared / "data" / "ct" / "totalseg-example"
    if not (folder / "example_ct.nii.gz").is_file():
        print(f"no real CT at {folder}: skipping the sim-to-real evaluation")
        return None
    segmenter = Segmenter(model, card, torch.device("cpu"))
    t0 = time.perf_counter()
    result = segmenter.segment(sitk.ReadImage(str(folder / "example_ct.nii.gz")), SegmentOptions())
    seconds = time.perf_counter() - t0
    by_name = {v: k for k, v in card.labels.items()}
    pred = sitk.GetArrayFromImage(result.labels)
    mapped = pred * 0
    for name, real_id in REAL_IDS.items():
        mapped[pred == by_name[name]] = real_id
    pred_img = sitk.GetImageFromArray(mapped)
    pred_img.CopyInformation(result.labels)
    gt = sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz"))
    rows = evaluate_segmentation(pred_img, gt, list(REAL_IDS.values()), {v: k for k, v in REAL_IDS.items()})["classes"]
    out = {
        "case": "TotalSegmentator example_ct.nii.gz vs example_seg_fast_force_split.nii.gz (silver labels)",
        "segment_seconds": round(seconds, 1),
    }
    for row in rows:
        out[row["name"]] = {k: (round(row[k], 3) if row[k] == row[k] else None) for k in ("dice", "hd95_mm", "s2s_mm")}
        print(f"{row['name']:>13}: Dice {row['dice']:.3f}  HD95 {row['hd95_mm']:.1f} mm  ASSD {row['s2s_mm']:.1f} mm")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/agn-default-ct"), help="phantoms and run folder")
    parser.add_argument("--stage", choices=["all", "data", "train", "install", "evaluate"], default="all")
    parser.add_argument("--output", type=Path, default=WEIGHTS, help="where to install the weights")
    parser.add_argument("--machine", default=None, help="machine description for the model card")
    parser.add_argument("--overwrite", action="store_true", help="replace installed weights")
    args = parser.parse_args()
    work = args.work.expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "data", "train"):
        data = stage_data(work)
        if args.stage != "data":
            stage_train(work, data)
    if args.stage in ("all", "install"):
        stage_install(work, args.output, args.overwrite, args.machine)
    if args.stage == "evaluate":
        from agn_cli.runtime.checkpoint import load_checkpoint

        model, card = load_checkpoint(args.output)
        stage_evaluate_model(model, card)


if __name__ == "__main__":
    main()
