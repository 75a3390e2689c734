"""Evaluation metrics: segmentation (Dice, surface distances in mm) and classification (precision, recall, F1)."""

from agn_cli.metrics.classification import classification_metrics
from agn_cli.metrics.segmentation import evaluate_folders, evaluate_segmentation, surface_distances

__all__ = ["classification_metrics", "evaluate_folders", "evaluate_segmentation", "surface_distances"]
