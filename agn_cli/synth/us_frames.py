"""Synthetic fetal-ultrasound-like plane frames with class labels, boxes and head masks.

Why: the plane classifier, the attention-map localisation and the demo need frames with known labels and known boxes
that ship with the tool. These are cartoons of a few SonoNet standard planes (a head ellipse with midline and
ventricles, an abdomen with the stomach bubble, a bright femur), rendered with a fan-shaped sector, depth attenuation
and multiplicative Rayleigh speckle so that they look and behave like B-mode frames, not like clean drawings.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import atomic_dir

# SonoNet label names (plus the folder each class is written to).
US_CLASSES: dict[str, str] = {
    "Brain (Tv.)": "brain-tv",
    "Brain (Cb.)": "brain-cb",
    "Abdominal": "abdominal",
    "Femur": "femur",
    "Background": "background",
}
HEAD_CLASSES = ("Brain (Tv.)", "Brain (Cb.)")

Box = tuple[int, int, int, int]
FRAME_SIDE_RANGE = (32, 2048)  # pixels per side the generator's shapes and text stay sensible for


def _sector(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Fan-shaped field of view of a curvilinear probe: (mask, depth 0..1 per pixel, apex)."""
    apex = (w / 2 + rng.normal(0, w * 0.01), -h * rng.uniform(0.12, 0.25))
    half = math.radians(rng.uniform(30, 40))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - apex[0], yy - apex[1])
    ang = np.arctan2(xx - apex[0], yy - apex[1])
    r0, r1 = -apex[1] + h * 0.03, -apex[1] + h * rng.uniform(0.93, 1.0)
    mask = (np.abs(ang) <= half) & (r >= r0) & (r <= r1)
    depth = np.clip((r - r0) / (r1 - r0), 0, 1)
    return mask, depth, apex


def _ellipse_mask(h: int, w: int, cx: float, cy: float, a: float, b: float, theta: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = math.cos(theta), math.sin(theta)
    u = ((xx - cx) * c + (yy - cy) * s) / a
    v = (-(xx - cx) * s + (yy - cy) * c) / b
    return u * u + v * v


def _box_of(mask: np.ndarray) -> Optional[Box]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def generate_us_frame(
    rng: np.random.Generator, label: str, size: tuple[int, int] = (224, 288)
) -> tuple[np.ndarray, Optional[Box], Optional[np.ndarray]]:
    """One frame: (uint8 grey image (H, W), box (x0, y0, x1, y1) of the main structure or None, filled head mask or None).

    The box is in pixels, x1/y1 exclusive, always inside the frame; the mask (uint8 0/255) is given for head planes.
    """
    if label not in US_CLASSES:
        raise AgnError(f"unknown ultrasound class {label!r}; use one of: {', '.join(US_CLASSES)}")
    h, w = size
    sector, depth, _ = _sector(h, w, rng)
    scale = min(h, w)
    # tissue echogenicity map (0..1), a slowly varying background first
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tissue = 0.25 + 0.08 * np.sin(xx / w * rng.uniform(2, 6) + rng.uniform(0, 6)) * np.cos(yy / h * rng.uniform(2, 5))
    tissue += rng.uniform(0.0, 0.1)
    # amniotic fluid pocket (dark) near the structure
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.45, 0.62)
    box: Optional[Box] = None
    mask: Optional[np.ndarray] = None
    if label != "Background":
        fluid = _ellipse_mask(h, w, cx, cy, scale * 0.45, scale * 0.38, rng.uniform(0, np.pi)) <= 1
        tissue[fluid] = 0.04
    if label in HEAD_CLASSES:
        a, b = scale * rng.uniform(0.26, 0.36), scale * rng.uniform(0.2, 0.27)
        th = rng.uniform(-0.5, 0.5)
        e = _ellipse_mask(h, w, cx, cy, a, b, th)
        skull = (e <= 1.0) & (e >= (1 - 0.09) ** 2)
        inside = e < (1 - 0.09) ** 2
        tissue[inside] = 0.22
        tissue[skull] = 0.95
        c, s = math.cos(th), math.sin(th)
        u = ((xx - cx) * c + (yy - cy) * s) / a
        v = (-(xx - cx) * s + (yy - cy) * c) / b
        midline = inside & (np.abs(v) < 0.035) & (np.abs(u) < 0.85)
        tissue[midline] = 0.7
        if label == "Brain (Tv.)":  # lateral ventricles: dark bands either side of the midline, choroid bright
            vent = inside & (np.abs(np.abs(v) - 0.28) < 0.07) & (u > 0.1) & (u < 0.65)
            tissue[vent] = 0.06
            tissue[inside & (np.abs(np.abs(v) - 0.28) < 0.04) & (u > 0.35) & (u < 0.55)] = 0.6
            csp = inside & (np.abs(v) < 0.1) & (np.abs(u + 0.3) < 0.08)  # cavum septi pellucidi
            tissue[csp] = 0.05
        else:  # cerebellum: a dumbbell at the back of the head, cisterna magna behind it
            cb = ((np.abs(v) - 0.2) ** 2 / 0.14**2 + (u - 0.45) ** 2 / 0.12**2) <= 1
            tissue[inside & cb] = 0.45
            tissue[inside & (np.abs(v) < 0.18) & (np.abs(u - 0.72) < 0.08)] = 0.05
        filled = e <= 1.0
        mask = (filled & sector).astype(np.uint8) * 255
        box = _box_of(mask > 0)
    elif label == "Abdominal":
        r = scale * rng.uniform(0.22, 0.32)
        e = _ellipse_mask(h, w, cx, cy, r, r * rng.uniform(0.85, 1.0), rng.uniform(0, np.pi))
        tissue[e <= 1] = 0.35
        tissue[(e <= 1) & (e > 0.88)] = 0.65  # abdominal wall / skin line
        ang = rng.uniform(0, 2 * np.pi)
        sx, sy = cx + 0.4 * r * math.cos(ang), cy + 0.4 * r * math.sin(ang)
        stomach = _ellipse_mask(h, w, sx, sy, r * 0.28, r * 0.2, rng.uniform(0, np.pi)) <= 1
        tissue[stomach] = 0.03
        spine_ang = ang + np.pi + rng.uniform(-0.4, 0.4)
        bx, by = cx + 0.7 * r * math.cos(spine_ang), cy + 0.7 * r * math.sin(spine_ang)
        for k in range(3):  # the spine's ossification centres: three bright dots
            off = (k - 1) * 0.16 * r
            px = bx + off * -math.sin(spine_ang)
            py = by + off * math.cos(spine_ang)
            tissue[_ellipse_mask(h, w, px, py, r * 0.07, r * 0.07, 0) <= 1] = 0.95
        uv = _ellipse_mask(h, w, cx + 0.1 * r, cy - 0.05 * r, r * 0.25, r * 0.04, rng.uniform(0, np.pi)) <= 1
        tissue[uv] = 0.12  # umbilical vein
        box = _box_of((e <= 1) & sector)
    elif label == "Femur":
        length, thick = scale * rng.uniform(0.45, 0.7), scale * rng.uniform(0.035, 0.055)
        th = rng.uniform(-0.45, 0.45)
        e = _ellipse_mask(h, w, cx, cy, length / 2, thick, th)
        # a bone is a bar with rounded ends: superellipse-like via clipping the ellipse value along its axis
        c, s = math.cos(th), math.sin(th)
        u = ((xx - cx) * c + (yy - cy) * s) / (length / 2)
        v = (-(xx - cx) * s + (yy - cy) * c) / thick
        bone = (np.abs(u) <= 1) & (np.abs(v) <= 1 - 0.6 * np.clip(np.abs(u) - 0.85, 0, 1) / 0.15)
        tissue[(e <= 4) & ~bone] = 0.3  # soft tissue of the thigh
        tissue[bone] = 1.0
        # acoustic shadow below the bone
        shadow = (v > 1) & (np.abs(u) <= 0.95) & (yy > cy)
        tissue[shadow] *= 0.25
        box = _box_of(bone & sector)
    # speckle: multiplicative Rayleigh on the echogenicity, slightly elongated laterally, depth attenuation, TGC
    speckle = rng.rayleigh(1.0, size=(h, w)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=1.2, sigmaY=0.6)
    speckle /= speckle.mean()
    tissue = cv2.GaussianBlur(tissue.astype(np.float32), (0, 0), 0.8)
    atten = np.exp(-rng.uniform(0.6, 1.4) * depth) * (1 + rng.uniform(0.2, 0.6) * depth)  # attenuation and TGC
    env = tissue * speckle * atten
    img = np.log1p(rng.uniform(15, 30) * env) / math.log1p(30)  # log compression
    img = np.clip(img * rng.uniform(200, 255), 0, 255)
    img[~sector] = 0
    if box is not None:
        x0, y0, x1, y1 = box
        box = (max(0, x0), max(0, y0), min(w, x1), min(h, y1))
    return img.astype(np.uint8), box, mask


def write_us_dataset(
    out_dir: Path | str,
    frames: int,
    seed: int = 0,
    size: tuple[int, int] = (224, 288),
    classes: Optional[list[str]] = None,
    overwrite: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> dict[str, int]:
    """Write `frames` PNG frames (classes in turn) with labels.csv, boxes.csv and head masks; returns counts per class.

    Layout: <class-folder>/frame_XXXX.png, masks/frame_XXXX.png (head planes), labels.csv (path,label),
    boxes.csv (path,x0,y0,x1,y1; empty box fields for Background). Paths are relative to out_dir, '/'-separated.
    """
    out_dir = Path(out_dir)
    classes = list(classes or US_CLASSES)
    if frames < 1:
        raise AgnError("--frames must be at least 1")
    for c in classes:
        if c not in US_CLASSES:
            raise AgnError(f"unknown ultrasound class {c!r}; use one of: {', '.join(US_CLASSES)}")
    known = {"labels.csv", "boxes.csv", "masks", *US_CLASSES.values()}

    def check(folder: Path) -> None:
        if not folder.exists():
            return
        if not folder.is_dir():
            raise AgnError(f"{folder} exists and is not a folder; choose another -o")
        entries = {p.name for p in folder.iterdir()}
        if entries and not overwrite:
            raise AgnError(f"{folder} already exists and is not empty; pass --overwrite to replace it")
        if entries - known:
            raise AgnError(f"{folder} holds files that are not synthetic frames; choose an empty or new folder")

    check(out_dir)
    counts = {c: 0 for c in classes}
    with atomic_dir(out_dir, may_replace=check) as tmp:  # checked again right before an old folder is replaced
        labels = io.StringIO()
        boxes = io.StringIO()
        lw, bw = csv.writer(labels, lineterminator="\n"), csv.writer(boxes, lineterminator="\n")
        lw.writerow(["path", "label"])
        bw.writerow(["path", "x0", "y0", "x1", "y1"])
        for i in range(frames):
            label = classes[i % len(classes)]
            rng = np.random.default_rng([seed, i])
            img, box, mask = generate_us_frame(rng, label, size)
            rel = f"{US_CLASSES[label]}/frame_{i:04d}.png"
            (tmp / US_CLASSES[label]).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp / rel), img)
            if mask is not None:
                (tmp / "masks").mkdir(exist_ok=True)
                cv2.imwrite(str(tmp / "masks" / f"frame_{i:04d}.png"), mask)
            lw.writerow([rel, label])
            bw.writerow([rel, *(box if box is not None else ("", "", "", ""))])
            counts[label] += 1
            if progress is not None:
                progress(i)
        (tmp / "labels.csv").write_text(labels.getvalue())
        (tmp / "boxes.csv").write_text(boxes.getvalue())
    return counts
