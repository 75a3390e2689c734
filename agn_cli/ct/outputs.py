"""Where `agn segment` writes, decided and checked before any compute (and before torch is even imported).

- `-o` names a mask file (3D formats only), or a folder (an existing one, one ending in '/', or any `-o` for a batch).
- No output may be an input, a checkpoint or a model card, or be named twice; folders must be writable.
- Batch output names drop nnU-Net's `_0000` channel suffix, so `agn evaluate seg preds/ labelsTr/` pairs them.
- The sidecar JSON is written last and records the mask's sha256: it is the completion marker. A batch re-run skips
  a case only when its sidecar matches its mask; a mask without a matching sidecar is an interrupted case, redone
  only with --overwrite (agn never replaces a file it cannot prove it wrote).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from agn_cli.ct.volume import dicom_series, is_volume_file, list_volume_inputs, volume_stem
from agn_cli.errors import AgnError
from agn_cli.runtime.atomic import check_outputs, full_suffix, sha256_file

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
PREVIEW_SUFFIXES = (".png",)
GATE_NAMES = ("level2", "level3", "level4")
NNUNET_CHANNEL_SUFFIX = "_0000"
# suffixes that make a name look like a file, not a folder, for batch outputs
_FILE_LIKE = (*MASK_SUFFIXES, ".nhdr", ".png", ".jpg", ".json", ".csv", ".txt")


def case_name(source: Path) -> str:
    """Output name of a case: the scan's stem without nnU-Net's channel suffix (`case_0000.nii.gz` -> `case`)."""
    stem = volume_stem(source)
    if stem.endswith(NNUNET_CHANNEL_SUFFIX) and len(stem) > len(NNUNET_CHANNEL_SUFFIX):
        return stem[: -len(NNUNET_CHANNEL_SUFFIX)]
    return stem


def sidecar_path(mask: Path) -> Path:
    """mask.nii.gz -> mask.json (the sidecar beside the label map)."""
    suffix = full_suffix(mask)
    stem = mask.name[: -len(suffix)] if suffix else mask.name
    return mask.with_name(stem + ".json")


@dataclass
class CaseOutputs:
    """Where one case's files go; `attention` is a base name expanded per gate (`<stem>_<gate><suffix>`)."""

    mask: Path
    probabilities: Path | None = None
    attention: Path | None = None
    preview: Path | None = None

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.mask)

    def attention_path(self, gate: str) -> Path:
        assert self.attention is not None
        suffix = full_suffix(self.attention) or ".nii.gz"
        stem = self.attention.name[: -len(full_suffix(self.attention))] if full_suffix(self.attention) else self.attention.name
        return self.attention.with_name(f"{stem}_{gate}{suffix}")

    def planned(self, gates: Sequence[str] | None = None) -> list[Path]:
        """Every file of the case, the sidecar last (the order they are put in place)."""
        gates = GATE_NAMES if gates is None else gates
        paths = [self.mask]
        if self.attention:
            paths += [self.attention_path(g) for g in gates]
        if self.probabilities:
            paths.append(self.probabilities)
        if self.preview:
            paths.append(self.preview)
        return [*paths, self.sidecar]


@dataclass
class SegmentPlan:
    batch: bool
    cases: list[tuple[Path, CaseOutputs]]


def is_batch(inputs: Sequence[Path]) -> bool:
    """Several inputs, or one folder of scans or of DICOM series folders (a DICOM series folder is one scan)."""
    if len(inputs) > 1:
        return True
    single = inputs[0]
    if not single.is_dir() or dicom_series(single):
        return False
    # an empty folder is one (bad) input
    return any(p.is_file() and is_volume_file(p) and not p.name.startswith(".") for p in single.iterdir()) or any(
        p.is_dir() and dicom_series(p) for p in single.iterdir()
    )


def _has_suffix(path: Path, allowed: Sequence[str]) -> bool:
    return path.name.lower().endswith(tuple(s.lower() for s in allowed))


def _names_folder(text: str) -> bool:
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def _folder_option(text: str | Path | None, flag: str) -> Path | None:
    """A batch output folder: refuse an existing file or a name that looks like a file."""
    if text is None:
        return None
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise AgnError(f"{flag} {path} is a file; with several scans it must be a folder")
    if not path.exists() and _has_suffix(path, _FILE_LIKE):
        raise AgnError(f"{flag} {path} looks like a file name; with several scans give a folder (e.g. {path.parent / 'masks'}/)")
    return path


def _single_file(text: str | Path | None, flag: str, allowed: Sequence[str], what: str) -> Path | None:
    if text is None:
        return None
    path = Path(text)
    if not _has_suffix(path, allowed):
        raise AgnError(
            f"{flag} {path}: {what} must be a {', '.join(allowed)} file"
            + (" (or a folder: end the name with '/')" if flag == "-o" else "")
        )
    return path


def plan_segmentation(
    inputs: Sequence[Path],
    output: str,
    probabilities: str | Path | None = None,
    attention: str | Path | None = None,
    preview: str | Path | None = None,
    overwrite: bool = False,
    weights: Path | None = None,
) -> SegmentPlan:
    """Decide every output path and check it (format, not an input or model file, writable; for one scan: new
    unless --overwrite) before anything is computed."""
    if not inputs:
        raise AgnError("no input: give CT scans as arguments (or with -i)")
    inputs = [Path(p).expanduser() for p in inputs]
    protected: list[Path] = list(inputs)
    if weights is not None:
        protected += [Path(weights), Path(weights).with_suffix(".json")]
    batch = is_batch(inputs)
    if not batch:
        source = inputs[0]
        if _names_folder(output):
            mask = Path(output) / f"{case_name(source)}.nii.gz"
        else:
            mask = _single_file(output, "-o", MASK_SUFFIXES, "the mask is a 3D label map and")
        attention_path = Path(attention) if attention is not None else None
        if attention_path is not None and full_suffix(attention_path) and not _has_suffix(attention_path, MASK_SUFFIXES):
            raise AgnError(f"--attention {attention_path}: attention maps are 3D volumes; use a {', '.join(MASK_SUFFIXES)} base name")
        outputs = CaseOutputs(
            mask,  # type: ignore[arg-type]
            _single_file(probabilities, "--probabilities", MASK_SUFFIXES, "probabilities are a 4D volume and"),
            attention_path,
            _single_file(preview, "--preview", PREVIEW_SUFFIXES, "the preview is an image and"),
        )
        check_outputs(outputs.planned(GATE_NAMES if attention_path else []), overwrite, protected)
        return SegmentPlan(False, [(source, outputs)])

    cases = list_volume_inputs(inputs)
    if not cases:
        raise AgnError(f"no scans found in {', '.join(map(str, inputs))}")
    folder = _folder_option(output, "-o")
    if folder is not None and folder.is_dir() and any(folder.samefile(p) for p in inputs if p.is_dir()):
        raise AgnError(f"-o {folder} is an input folder; write the masks elsewhere (a re-run would take them for scans)")
    extras = {flag: _folder_option(value, flag) for flag, value in
              (("--probabilities", probabilities), ("--attention", attention), ("--preview", preview))}
    planned: list[tuple[Path, CaseOutputs]] = []
    owners: dict[Path, Path] = {}
    for source in cases:
        name = case_name(source)
        outputs = CaseOutputs(
            folder / f"{name}.nii.gz",  # type: ignore[operator]
            extras["--probabilities"] / f"{name}_probabilities.nii.gz" if extras["--probabilities"] else None,
            extras["--attention"] / f"{name}_attention.nii.gz" if extras["--attention"] else None,
            extras["--preview"] / f"{name}_preview.png" if extras["--preview"] else None,
        )
        if outputs.mask in owners:
            raise AgnError(f"{owners[outputs.mask]} and {source} would both be written to {outputs.mask}; rename one of them")
        owners[outputs.mask] = source
        planned.append((source, outputs))
    # identities, model files and writable folders now; whether each case is done is decided case by case
    check_outputs([p for _, o in planned for p in o.planned(GATE_NAMES if o.attention else [])], True, [*protected, *cases])
    return SegmentPlan(True, planned)


def case_state(outputs: CaseOutputs) -> str:
    """'done' (the sidecar matches the mask: skip), 'incomplete' (files of an interrupted or foreign run), 'new'."""
    mask, sidecar = outputs.mask, outputs.sidecar
    if mask.is_file() and sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return "incomplete"
        if isinstance(record, dict) and Path(str(record.get("output", ""))).name == mask.name:
            expected = record.get("output_sha256")
            if expected is None or expected == sha256_file(mask):  # sidecars before 0.1.0 carry no checksum
                return "done"
        return "incomplete"
    if any(p.exists() for p in outputs.planned()):
        return "incomplete"
    return "new"
