"""The `agn demo` report: its figures (drawn by agn_cli.viz) and its text, rendered to Markdown and to a single
self-contained HTML file. Everything here reads the demo's results; nothing runs a model."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agn_cli.synth.ct_phantom import ORGAN_NAMES as ORGANS
from agn_cli.viz.charts import bar_chart, line_chart
from agn_cli.viz.draw import write_png
from agn_cli.viz.frames import SheetTile, frame_sheet
from agn_cli.viz.slices import ct_sheet, render_preview

# ==================================================================================================== figures


def write_figures(work: Path, seg: dict[str, Any], cls: dict[str, Any], bench: dict[str, Any], train_seg_: dict[str, Any],
                  train_cls_: dict[str, Any]) -> dict[str, str]:
    """The report's PNGs under work/figures; returns {figure key: path relative to work}."""
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

            from agn_cli.ct.preprocess import resample_to_geometry
            from agn_cli.ct.volume import array_xyz, image_from_xyz

            src = image_from_xyz(d_arr["pred"].astype(np.uint8), d_arr["geometry"])
            moved = resample_to_geometry(src, arrays["geometry"], is_label=True, pixel_type=sitk.sitkUInt8)
            predictions["default model"] = np.ascontiguousarray(array_xyz(moved))
    write_png(fig_dir / "ct_segmentation.png",
              ct_sheet(arrays["ct"], arrays["ref"], predictions, arrays["attention"], arrays["spacing"], ORGANS), True)
    figures["ct"] = "figures/ct_segmentation.png"
    if arrays["attention"] is not None:
        render_preview(arrays["ct"], arrays["pred"], arrays["attention"], arrays["spacing"], fig_dir / "ct_preview.png",
                       overwrite=True, title="test_0000 (demo model)")
        figures["ct_preview"] = "figures/ct_preview.png"
    organs = list(seg["demo_model"]["organs"])
    series = {"demo model": [seg["demo_model"]["organs"][o]["dice"] for o in organs]}
    if default is not None:
        series["default model"] = [default["organs"].get(o, {}).get("dice") for o in organs]
    write_png(fig_dir / "dice.png", bar_chart("Dice per organ (held-out phantom)", organs, series, ymax=1.0, fmt="{:.2f}"),
              True)
    figures["dice"] = "figures/dice.png"
    seg_loss = train_seg_["loss_per_epoch"]
    cls_loss = train_cls_["loss_per_epoch"]
    left = line_chart("CT segmentation loss", {"attention-unet3d": (list(range(1, len(seg_loss) + 1)), seg_loss)}, "epoch")
    right = line_chart("Ultrasound classification loss", {train_cls_["model"]: (list(range(1, len(cls_loss) + 1)), cls_loss)},
                       "epoch")
    write_png(fig_dir / "training_loss.png", np.hstack([left, right]), True)
    figures["loss"] = "figures/training_loss.png"
    items = _pick_frames(cls["_items"], per_class=2)
    write_png(fig_dir / "ultrasound_boxes.png", frame_sheet(_sheet_tiles(items), columns=5, tile=_tile_for(items)), True)
    figures["us"] = "figures/ultrasound_boxes.png"
    cats = [f"{r['model']}\n{r['size']}" for r in bench["rows"]]
    write_png(fig_dir / "bench.png", bar_chart("Forward pass, batch 1 (ms, lower is better)", cats,
                                               {"eager fp32": [r["eager_ms"] for r in bench["rows"]],
                                                "fast path": [r["fast_ms"] for r in bench["rows"]]}, fmt="{:.1f}"), True)
    figures["bench"] = "figures/bench.png"
    return figures


def _tile_for(items: list[dict[str, Any]]) -> tuple[int, int]:
    if not items:
        return (224, 288)
    h, w = items[0]["result"].shape[:2]
    scale = 288 / max(w, 1)
    return (max(64, int(round(h * scale))), 288)


def _sheet_tiles(items: list[dict[str, Any]]) -> list[SheetTile]:
    """Each frame's overlay (attention, predicted box, label) with its true box and a caption."""
    tiles = []
    for item in items:
        caption = f"true: {item['truth']}"
        if item.get("iou") is not None:
            caption += f"   box IoU {item['iou']:.2f}"
        tiles.append(SheetTile(item["result"].overlay(alpha=0.45), item.get("gt_box"), caption, item["correct"]))
    return tiles


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


def _section(title: str, text: str) -> list[Block]:
    return [Block("h2", title), Block("p", text)]


def _training(t: dict[str, Any], command: str, note: str = "") -> str:
    """'for N steps (`command`); loss a -> b' of a training record."""
    return f"for {t['steps']} steps (`{command}`{note}); loss {_f(t['first_loss'])} -> {_f(t['final_loss'])}"


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

    t = seg["training"]
    b += _section("1. CT organ segmentation (Attention U-Net 3D)",
                  f"{summary['ct']['data']['train_cases']} synthetic abdominal CT phantoms (`agn synth ct`) trained an "
                  f"attention-unet3d (base filters {t['base_filters']}, patch {'x'.join(map(str, t['patch']))} at "
                  f"{t['spacing_mm']:g} mm, batch {t['batch']}) {_training(t, 'agn train seg')} (Dice + cross-entropy, "
                  "deep supervision). It then segmented a held-out phantom (`agn segment`) and was scored against the "
                  "phantom's labels (`agn evaluate seg`): Dice, HD95 and ASSD (mean symmetric surface distance) in mm "
                  "on the input grid.")
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

    t = cls["training"]
    b += _section("2. Ultrasound plane detection and boxes from attention (AG-Sononet)",
                  f"{cls['data']['train_frames']} synthetic fetal-ultrasound-like frames in {len(cls['classes'])} classes "
                  f"(`agn synth us`) trained {t['model']} at {'x'.join(map(str, t['input_size']))} "
                  f"{_training(t, 'agn train cls', ', deep supervision')}. It then labelled {cls['frames']} held-out "
                  "frames and drew a box from its attention gates (`agn classify --boxes`, no box labels used in "
                  "training), scored against the frames' known boxes. The installed SonoNet-16 classifier (weights/) was "
                  "trained on real scans, so it is not used on these cartoons.")
    header = ["true \\ predicted"] + cls["classes"]
    rows = [header] + [[c] + [str(v) for v in row] for c, row in zip(cls["classes"], cls["confusion"])]
    b.append(Block("table", rows=rows))
    loc_rows = [["class", "frames", "IoU mean", "IoU > 0.5"]]
    for name, v in cls["localisation"].items():
        loc_rows.append([name, str(v["n"]), _f(v["iou_mean"], 2), _f(v["correctness"], 2)])
    b.append(Block("table", rows=loc_rows))
    b.append(Block("image", "Held-out frames: attention heat map, predicted box (green), true box (yellow)", path=figures["us"]))
    b.append(Block("image", "Training loss of both networks (per epoch)", path=figures["loss"]))

    env = bench["environment"]
    b += _section("3. Speed: fast path vs plain PyTorch (`agn bench`)",
                  f"Network forward pass only, batch 1, median of {bench['repeat']} calls after one warm-up, on "
                  f"{env.get('device_name')} ({_threads(env.get('threads'))}, load average {env.get('load_average')} at "
                  "the time). The fast path folds batch norm into the convolutions, uses channels-last memory and bf16 "
                  "where the processor supports it.")
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
        f"--blur-sigma {cls['blur_sigma']:g} --overlays overlays/`",
        "`agn train seg data/ct-train -o my-run --spacing 6 --patch 48x48x32 --base-filters 8` (longer training: better Dice)",
    ]))
    return b
