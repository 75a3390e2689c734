"""CT segmentation with a checkpoint: read, check, preprocess from the card, infer, map back, write.

The mask is computed at the model's resolution (canonical orientation, card spacing), argmax'd there, and only
the uint8 label map is resampled (nearest neighbour) onto the input grid, whose size, spacing, origin and
direction it then equals exactly (asserted before writing). So memory is bounded by the model-resolution volume
plus one uint8 copy of the scan, never by full-resolution float per-class volumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from agn_cli.ct.outputs import GATE_NAMES, CaseOutputs, sidecar_path  # noqa: F401  (re-exported: the segmentation API)
from agn_cli.ct.preprocess import PreparedVolume, prepare_ct
from agn_cli.ct.sliding_window import predict_volume
from agn_cli.ct.volume import GEOMETRY_WARNING_KEY, Geometry, read_volume, volume_stem, write_volume
from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import Transaction, check_writable, sha256_file
from agn_cli.runtime.checkpoint import ModelCard, load_checkpoint, resolve_checkpoint
from agn_cli.runtime.jsonio import dumps

HU_MIN_WARN = -500.0  # CT air is about -1000 HU; a scan whose minimum is above this is probably not in HU
HU_MAX_WARN = 100.0  # soft tissue / contrast / bone exceed this in any abdominal CT
ANISOTROPY_WARN = 3.0


def _network_dims(card: ModelCard) -> int | None:
    """The registered network's dimensionality; None for an architecture the registry does not know (loading the
    checkpoint reports that)."""
    from agn_cli.models import get_entry

    try:
        return get_entry(card.architecture).dims
    except KeyError:
        return None


def check_card(card: ModelCard) -> list[int]:
    """The card's label ids, sorted (class index -> id); fail if the card cannot drive CT segmentation."""
    if card.task != "segmentation":
        raise AgnError(f"these weights are a {card.task} model ({card.architecture}); agn segment needs a segmentation checkpoint")
    if _network_dims(card) == 2:
        raise AgnError(f"these weights are a 2D network ({card.architecture}); agn segment needs a 3D CT model "
                       "(for fetal head frames use agn measure hc)")
    ids = sorted(int(k) for k in card.labels)
    if ids and (ids[0] < 0 or ids[-1] > 255):
        raise AgnError(f"model card label ids {ids[0]}..{ids[-1]} do not fit the uint8 label map (0..255)")
    if len(ids) != card.num_classes:
        raise AgnError(f"model card has {len(ids)} labels but the network has {card.num_classes} classes; fix the card")
    if card.num_classes > 256:
        raise AgnError(f"{card.num_classes} classes do not fit a uint8 label map")
    return ids


def input_warnings(image: sitk.Image) -> list[str]:
    """Plausibility warnings (not errors): intensities that do not look like HU, strongly anisotropic voxels."""
    found = []
    if image.HasMetaDataKey(GEOMETRY_WARNING_KEY):  # a DICOM series accepted with --allow-nonuniform
        found.append(image.GetMetaData(GEOMETRY_WARNING_KEY))
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    lo, hi = stats.GetMinimum(), stats.GetMaximum()
    if lo > HU_MIN_WARN or hi < HU_MAX_WARN:
        found.append(
            f"intensities {lo:g}..{hi:g} do not look like CT Hounsfield units (air is about -1000); "
            "check the modality or the rescale slope/intercept"
        )
    spacing = image.GetSpacing()
    ratio = max(spacing) / min(spacing)
    if ratio > ANISOTROPY_WARN:
        found.append(
            f"strongly anisotropic voxels ({' x '.join(f'{s:g}' for s in spacing)} mm, ratio {ratio:.1f}); "
            "results between slices are interpolated"
        )
    return found


def largest_component_per_class(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Keep only the largest 26-connected component of every foreground label (in place, returned)."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3), dtype=bool)
    for label_id in ids:
        if label_id == 0:
            continue
        mask = labels == label_id
        if not mask.any():
            continue
        components, count = ndimage.label(mask, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            labels[mask & (components != int(sizes.argmax()))] = 0
    return labels


def label_statistics(labels: sitk.Image, names: dict[int, str]) -> dict[str, dict[str, Any]]:
    """Voxel counts and volumes in mL per label of the card, on the (input-resolution) label map."""
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=256)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    return {
        str(label_id): {"name": name, "voxels": int(counts[label_id]), "volume_ml": round(float(counts[label_id]) * voxel_ml, 3)}
        for label_id, name in sorted(names.items())
    }


def _geometry_dict(geometry: Geometry) -> dict[str, list]:
    return {
        "size": list(geometry.size),
        "spacing": list(geometry.spacing),
        "origin": list(geometry.origin),
        "direction": list(geometry.direction),
    }


@dataclass
class SegmentOptions:
    overlap: float = 0.5
    tta: bool = False
    batch_size: int = 1
    largest_component: bool | None = None  # None: what the model card's `postprocessing` recommends (default off)


@dataclass
class SegmentationResult:
    labels: sitk.Image  # uint8 on the input grid
    model_labels: np.ndarray  # uint8 (x, y, z) at model resolution (label ids, not class indices)
    prepared: PreparedVolume
    probabilities: np.ndarray | None = None  # (classes, x, y, z) float32 at model resolution
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # gate -> (x, y, z) at model resolution
    windows: int = 1
    passes: int = 1
    timings: dict[str, float] = field(default_factory=dict)


class Segmenter:
    """A loaded segmentation model with its card; segments any number of volumes (the model loads once)."""

    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device, weights: Path | None = None, fast: bool = True):
        try:
            from agn_cli.runtime.fast import prepare_model
        except ImportError:  # fast path being rebuilt: fall back to the plain eval-mode model

            def prepare_model(model: nn.Module, device: torch.device | str = "cpu", fast: bool = True) -> nn.Module:
                return model.to(device).eval()

        self.card = card
        self.label_ids = check_card(card)
        self.device = device
        self.weights = weights
        self.has_attention = bool(getattr(model, "attention", False)) or bool(getattr(model, "gates", None))
        self.model = prepare_model(model, device, fast=fast)

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: torch.device, fast: bool = True) -> "Segmenter":
        weights = resolve_checkpoint(path)
        model, card = load_checkpoint(weights, device="cpu")
        return cls(model, card, device, weights=weights, fast=fast)

    def keeps_largest_component(self, options: SegmentOptions) -> bool:
        """The caller's choice, else the card's: each organ is one connected structure, so a model whose stray
        islands are known to be false positives says so in its card (`postprocessing.largest_component`)."""
        if options.largest_component is not None:
            return options.largest_component
        return bool(self.card.postprocessing.get("largest_component", False))

    def tta_axes(self) -> list[int]:
        """The axes mirroring TTA may flip: those the model was trained with flips on (card `mirror_axes`).

        Averaging in passes over anatomy the model never saw mirrored (left/right organs, head/feet) blurs the
        answer instead of sharpening it, so with none recorded TTA is refused rather than run."""
        axes = sorted(set(self.card.mirror_axes or []))
        if not axes:
            raise AgnError(
                "--tta mirrors the scan, but this model was trained without flips (its card lists no mirror_axes), so "
                "mirrored passes would swap left and right organs; drop --tta, or train with 'agn train seg --flip ...'"
            )
        return axes

    def segment(
        self,
        image: sitk.Image | PreparedVolume,
        options: SegmentOptions,
        attention: bool = False,
        probabilities: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> SegmentationResult:
        """Preprocess from the card (unless given a PreparedVolume), infer, argmax at model resolution, map the
        labels onto the input grid."""
        if attention and not self.has_attention:
            raise AgnError(f"{self.card.architecture} has no attention gates; drop --attention or use an attention model")
        tta_axes = self.tta_axes() if options.tta else None
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        prepared = image if isinstance(image, PreparedVolume) else prepare_ct(image, self.card)
        del image
        timings["preprocess_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        prediction = predict_volume(
            self.model,
            prepared.array,
            self.card.patch_size,
            device=self.device,
            overlap=options.overlap,
            batch_size=options.batch_size,
            tta=options.tta,
            attention=attention,
            progress=progress,
            tta_axes=tta_axes,
        )
        timings["inference_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        probs = prepared.crop(prediction.probabilities)
        lut = np.asarray(self.label_ids, dtype=np.uint8)
        model_labels = lut[probs.argmax(dim=0).numpy()]
        if self.keeps_largest_component(options):
            largest_component_per_class(model_labels, self.label_ids)
        labels = prepared.labels_to_input(model_labels)
        if Geometry.of(labels) != prepared.input_geometry:
            raise AssertionError("label map geometry differs from the input's")  # never expected: resampled onto it
        kept_probs = np.ascontiguousarray(probs.numpy()) if probabilities else None
        gates = {name: np.ascontiguousarray(prepared.crop(value).numpy()) for name, value in prediction.attention.items()}
        windows, passes = prediction.windows, prediction.passes
        del prediction, probs
        timings["postprocess_s"] = time.perf_counter() - t0
        return SegmentationResult(labels, model_labels, prepared, kept_probs, gates, windows, passes, timings)


def segment_case(
    segmenter: Segmenter,
    source: Path,
    outputs: CaseOutputs,
    options: SegmentOptions,
    series_uid: str | None = None,
    overwrite: bool = False,
    notify: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    image: sitk.Image | list[sitk.Image] | None = None,
    read_seconds: float | None = None,
    allow_nonuniform: bool = False,
) -> dict[str, Any]:
    """Segment one scan and write every requested output atomically; nothing is left behind on failure.

    `image`: the scan already read by `read_case` (so input errors surface before a model is loaded); pass it as
    a one-element list to hand it over, so the full-resolution scan is freed before inference."""
    timings: dict[str, float] = {} if read_seconds is None else {"read_s": read_seconds}
    if isinstance(image, list):
        image = image.pop()
    if image is None:
        t0 = time.perf_counter()
        image = read_case(source, outputs, series_uid, overwrite, notify, allow_nonuniform)
        timings["read_s"] = time.perf_counter() - t0
    warnings = input_warnings(image)
    for message in warnings:
        (warn or (lambda m: None))(f"{source}: {message}")
    want_attention = bool(outputs.attention or outputs.preview) and segmenter.has_attention
    if outputs.attention and not segmenter.has_attention:
        raise AgnError(f"{segmenter.card.architecture} has no attention gates; drop --attention or use an attention model")
    t0 = time.perf_counter()
    prepared = prepare_ct(image, segmenter.card)
    del image  # only the model-resolution volume is needed from here on
    preprocess_s = time.perf_counter() - t0
    result = segmenter.segment(
        prepared, options, attention=want_attention, probabilities=outputs.probabilities is not None, progress=progress
    )
    result.timings["preprocess_s"] = preprocess_s
    timings.update(result.timings)
    record: dict[str, Any] = {
        "input": str(source),
        "output": str(outputs.mask),
        "weights": str(segmenter.weights) if segmenter.weights else None,
        "weights_sha256": segmenter.card.weights_sha256,
        "architecture": segmenter.card.architecture,
        "labels": label_statistics(result.labels, segmenter.card.labels),
        "input_geometry": _geometry_dict(result.prepared.input_geometry),
        "model_grid": _geometry_dict(result.prepared.model_geometry),
        "device": str(segmenter.device),
        "overlap": options.overlap,
        "tta": options.tta,
        "largest_component": segmenter.keeps_largest_component(options),
        "windows": result.windows,
        "passes": result.passes,
        "warnings": warnings,
    }
    t0 = time.perf_counter()
    # every file is staged under a temporary name and put in place at the end, the sidecar last: it marks the case
    # complete (batch re-runs trust it), and a failure leaves nothing behind but never removes another run's files
    with Transaction(overwrite) as transaction:
        write_volume(result.labels, outputs.mask, transaction=transaction)
        if outputs.attention:
            record["attention"] = {}
            for gate in sorted(result.attention):
                path = outputs.attention_path(gate)
                write_volume(result.prepared.float_to_input(result.attention[gate]), path, transaction=transaction)
                record["attention"][gate] = str(path)
        if outputs.probabilities is not None and result.probabilities is not None:
            write_volume(probability_image(result), outputs.probabilities, transaction=transaction)
            record["probabilities"] = str(outputs.probabilities)
        if outputs.preview:
            from agn_cli.viz.slices import render_preview

            attention_map = np.mean(list(result.attention.values()), axis=0) if result.attention else None
            render_preview(
                result.prepared.crop(result.prepared.array),
                result.model_labels,
                attention_map,
                result.prepared.model_geometry.spacing,
                transaction.stage(outputs.preview),
                overwrite=True,  # onto the temporary file just staged for it
                title=volume_stem(source),
            )
            record["preview"] = str(outputs.preview)
        staged_mask = transaction.temporary(outputs.mask)
        record["output_bytes"] = staged_mask.stat().st_size
        record["output_sha256"] = sha256_file(staged_mask)
        timings["write_s"] = time.perf_counter() - t0
        record["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        record["sidecar"] = str(outputs.sidecar)
        transaction.stage(outputs.sidecar).write_text(dumps(record), encoding="utf-8")
    return record


def read_case(
    source: Path, outputs: CaseOutputs, series_uid: str | None = None, overwrite: bool = False,
    notify: Callable[[str], None] | None = None, allow_nonuniform: bool = False,
) -> sitk.Image:
    """Refuse existing outputs, then read and check the scan: every input error before any inference."""
    gates = list(GATE_NAMES) if outputs.attention else []
    for path in outputs.planned(gates):
        check_writable(path, overwrite)
    return read_volume(source, series_uid=series_uid, notify=notify, allow_nonuniform=allow_nonuniform)


def probability_image(result: SegmentationResult) -> sitk.Image:
    """Class probabilities as a 4D image (x, y, z, class) on the model grid (canonical orientation, card spacing)."""
    assert result.probabilities is not None
    geometry = result.prepared.model_geometry
    from agn_cli.ct.volume import image_from_xyz

    channels = [image_from_xyz(p, geometry) for p in result.probabilities]
    return sitk.JoinSeries(channels)
