"""Synthetic data engine: CT phantoms with organ labels and ultrasound-like plane frames, for tests, demos and training."""

from agn_cli.synth.ct_phantom import (
    LABELS,
    VOLUME_RANGES_ML,
    CaseInfo,
    generate_ct_case,
    generate_ct_case_with_info,
    label_volumes_ml,
    phantom_scan,
    write_ct_dataset,
)
from agn_cli.synth.us_frames import US_CLASSES, generate_us_frame, write_us_dataset

__all__ = [
    "LABELS",
    "VOLUME_RANGES_ML",
    "CaseInfo",
    "generate_ct_case",
    "generate_ct_case_with_info",
    "label_volumes_ml",
    "phantom_scan",
    "write_ct_dataset",
    "US_CLASSES",
    "generate_us_frame",
    "write_us_dataset",
]
