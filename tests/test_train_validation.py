"""Training validation logs what the inference and evaluation code report: segmentation Dice from `predict_volume`
(Gaussian-blended windows, as `agn segment`) and `metrics.segmentation`; classification macro F1 from
`metrics.classification` (the `agn evaluate cls` convention: macro over classes present in the reference)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from agn_cli.metrics.classification import classification_metrics, evaluate_classification
from agn_cli.metrics.segmentation import evaluate_arrays
from agn_cli.runtime.checkpoint import load_checkpoint
from agn_cli.train.run_state import read_metrics_csv
from agn_cli.train.toy import write_frame_folders, write_msd_dataset


def test_seg_validation_dice_is_predict_volume_plus_metrics(tmp_path):
    from agn_cli.ct.sliding_window import predict_volume
    from agn_cli.train.cache import load_cached
    from agn_cli.train.datasets import load_dataset, split_cases
    from agn_cli.train.seg_trainer import SegTrainConfig, case_probabilities, train_seg

    data = write_msd_dataset(tmp_path / "msd", n_cases=3, seed=2)  # 32^3 at 2 mm: 16^3 at 4 mm
    run = tmp_path / "run"
    patch = (16, 16, 8)  # 3 windows along z: the Gaussian blending differs from a plain mean there
    cfg = SegTrainConfig(dataset=str(data), output=str(run), model="unet3d", base_filters=4, epochs=1, steps_per_epoch=3,
                         batch_size=2, patch=patch, spacing=(4.0, 4.0, 4.0), lr=3e-3, val_fraction=0.34, device="cpu")
    train_seg(cfg, progress=False)
    row = read_metrics_csv(run / "metrics.csv")[-1]
    model, card = load_checkpoint(run / "latest.safetensors")  # the weights validated after the last epoch

    ds = load_dataset(data)
    (val_id,) = split_cases([c.case_id for c in ds.cases], 0.34, seed=0)[1]
    case = load_cached(next(c for c in ds.cases if c.case_id == val_id), run / "cache", card.spacing)
    from agn_cli.ct.preprocess import normalise_ct

    volume = normalise_ct(np.asarray(case.image()), card.normalisation)  # 16^3 >= the patch: no padding
    probs = predict_volume(model, volume, patch, overlap=0.5).probabilities
    assert predict_volume(model, volume, patch, overlap=0.5).windows == 3
    torch.testing.assert_close(case_probabilities(model, case.image(), card.normalisation, patch, torch.device("cpu")), probs)
    rows = evaluate_arrays(probs.argmax(0).numpy(), np.asarray(case.label()), card.spacing, labels=[1, 2])
    for r in rows:
        assert row[f"val_dice_{card.labels[r['label']]}"] == pytest.approx(r["dice"], rel=1e-5, abs=1e-6, nan_ok=True)
    assert row["val_dice_mean"] == pytest.approx(np.nanmean([r["dice"] for r in rows]), rel=1e-5, abs=1e-6)


def test_cls_validation_macro_f1_is_what_evaluate_cls_reports(tmp_path):
    from agn_cli.train.cls_data import cache_frames, load_cls_dataset, split_items
    from agn_cli.train.cls_trainer import ClsTrainConfig, preprocessing_for, train_cls

    data = write_frame_folders(tmp_path / "frames", per_class=5)
    run = tmp_path / "run"
    cfg = ClsTrainConfig(dataset=str(data), output=str(run), model="sononet-8", base_filters=4, epochs=1, batch_size=6,
                         size=(48, 64), crop_size=(40, 56), lr=0.05, warmup_epochs=0, device="cpu")
    train_cls(cfg, progress=False)
    logged = read_metrics_csv(run / "metrics.csv")[-1]
    model, card = load_checkpoint(run / "latest.safetensors")

    ds = load_cls_dataset(data)
    _, val = split_items(ds, cfg.val_fraction, cfg.seed)
    frames = np.load(cache_frames(ds.paths, preprocessing_for(cfg), run / "cache"))
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(frames[val].astype(np.float32))[:, None]).argmax(1).numpy()
    y_true = [ds.labels[i] for i in val]
    y_pred = [card.labels[int(p)] for p in pred]
    expected = classification_metrics(y_true, y_pred)
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert logged[f"val_{key}"] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key

    # and through the files `agn evaluate cls` reads
    pred_csv, gt_csv = tmp_path / "pred.csv", tmp_path / "gt.csv"
    for path, labels in ((pred_csv, y_pred), (gt_csv, y_true)):
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([("path", "label"), *((ds.paths[i].name, lab) for i, lab in zip(val, labels))])
    assert evaluate_classification(pred_csv, gt_csv)["macro_f1"] == pytest.approx(logged["val_macro_f1"], rel=1e-5, abs=1e-6)


def test_cls_validation_row_uses_the_evaluate_cls_macro_convention():
    from agn_cli.train.cls_trainer import validation_metrics

    classes = ["a", "b", "c"]
    # reference holds a and b only; c is predicted once: evaluate cls leaves c out of the macro averages
    y_true = ["a", "a", "a", "b", "b", "b"]
    y_pred = ["a", "a", "c", "b", "b", "a"]
    confusion = np.zeros((3, 3), np.int64)
    for t, p in zip(y_true, y_pred):
        confusion[classes.index(t), classes.index(p)] += 1
    row = validation_metrics(confusion, classes)
    expected = classification_metrics(y_true, y_pred, classes)
    assert row["val_macro_f1"] == pytest.approx(expected["macro_f1"]) == pytest.approx((2 / 3 + 0.8) / 2)  # F1 of a, b; with c as 0: 0.49
    assert row["val_macro_precision"] == pytest.approx(expected["macro_precision"])
    assert row["val_accuracy"] == pytest.approx(4 / 6)
    assert np.isnan(row["val_f1_c"]) and np.isnan(row["val_recall_c"])  # no support: not a 0 in the average
