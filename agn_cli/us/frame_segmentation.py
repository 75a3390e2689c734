"""2D segmentation of frames as agn runs it: the card's `preprocessing` (grey, resize to the network input, z-score)
through `preprocess_frame`, softmax at the network's input size, and probabilities resized back to each frame's own
pixels (bilinear) before any threshold or argmax.

`HeadMeasurer` (`agn measure hc`) and the validation of 2D `agn train seg` runs both call these two functions, so a
run's validation Dice is the Dice of the masks users get, at the frame's own size.
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch

from agn_cli.us.preprocess import preprocess_frame


@torch.no_grad()
def network_probabilities(
    model: torch.nn.Module, images: Sequence[np.ndarray], preprocessing: dict[str, Any], device: torch.device | str
) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Softmax probabilities (N, classes, rows, cols) at the network's input size, and the gates' attention maps
    ({} for networks without gates). Frames are taken whole (no crop); they may differ in size."""
    batch = np.stack([preprocess_frame(image, preprocessing, crop="none") for image in images])
    x = torch.from_numpy(batch)[:, None].to(device)
    logits, attention = model(x, return_attention=True)
    return torch.softmax(logits.float(), dim=1).cpu().numpy(), attention


def to_frame(probability: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(rows, cols) or (classes, rows, cols) at network size -> the same at the frame's (rows, cols), bilinear."""
    rows, cols = int(shape[0]), int(shape[1])
    if probability.ndim == 2:
        return cv2.resize(np.ascontiguousarray(probability), (cols, rows), interpolation=cv2.INTER_LINEAR)
    return np.stack([to_frame(p, (rows, cols)) for p in probability])
