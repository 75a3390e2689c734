"""Network inference on volumes: whole volume or sliding window with Gaussian blending, mirroring TTA."""

from agn_cli.inference.sliding_window import (
    VolumePrediction,
    gaussian_importance,
    mirror_axes,
    predict_volume,
    window_starts,
)

__all__ = ["VolumePrediction", "gaussian_importance", "mirror_axes", "predict_volume", "window_starts"]
