"""agn train cls on tiny generated frames: folder layout, FETAL_PLANES_DB table, FT from a deep-sup run, sampling."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from agn_cli.cli.app import app
from agn_cli.runtime.checkpoint import load_checkpoint
from agn_cli.train.cls_data import load_cls_dataset, sampling_weights, split_items
from agn_cli.train.toy import write_fetal_planes_db, write_frame_folders

SMALL = ["--size", "48x64", "--crop-size", "40x56", "--base-filters", "4", "--batch-size", "6", "--device", "cpu", "--no-progress"]


def test_train_cls_folder_writes_loadable_checkpoint(tmp_path):
    data = write_frame_folders(tmp_path / "frames", per_class=5)
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "cls", str(data), "-o", str(run), "--model", "ag-sononet-8", "--aggregation", "deep-sup",
              "--epochs", "2", "--lr", "0.05", "--warmup-epochs", "1", *SMALL], catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    model, card = load_checkpoint(run)
    assert card.task == "classification" and card.architecture == "ag-sononet-8"
    assert card.labels == {0: "Other", 1: "disc", 2: "hbar"}
    assert card.preprocessing["size"] == [48, 64] and card.preprocessing["zscore"] is True
    assert card.model_kwargs["aggregation"] == "deep-sup" and card.model_kwargs["base_filters"] == 4
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 48, 64)).shape == (1, 3)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"val_accuracy", "val_macro_precision", "val_macro_recall", "val_macro_f1", "val_f1_disc"} <= set(rows[0])
    assert float(rows[0]["lr"]) == pytest.approx(0.01)  # warm start at --warmup-lr (paper: 0.01)
    assert float(rows[1]["lr"]) == pytest.approx(0.05)

    # the paper's FT step: per-scale heads from that run, concatenated head fine-tuned
    ft = tmp_path / "ft"
    result = CliRunner().invoke(
        app, ["train", "cls", str(data), "-o", str(ft), "--model", "ag-sononet-8", "--aggregation", "ft",
              "--init", str(run), "--epochs", "1", "--lr", "0.01", "--warmup-epochs", "0", *SMALL], catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    ft_model, ft_card = load_checkpoint(ft)
    assert ft_card.model_kwargs["aggregation"] == "ft"
    torch.testing.assert_close(ft_model.features.state_dict(), model.features.state_dict())  # frozen backbone
    assert ft_model.classifier.weight.shape == (3, 9)


def test_fetal_planes_db_uses_official_train_flag(tmp_path):
    root = write_fetal_planes_db(tmp_path / "FETAL", per_class=3)
    ds = load_cls_dataset(root / "FETAL_PLANES_DB_data.csv")
    assert ds.kind == "fetal_planes_db" and ds.classes == ["Fetal brain", "Fetal femur", "Other"]
    train, val = split_items(ds, 0.5, 0)
    assert len(train) == 6 and len(val) == 3  # Train=0 rows are held out regardless of --val-fraction
    run = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "cls", str(root), "-o", str(run), "--model", "sononet-8", "--epochs", "1", *SMALL],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    _, card = load_checkpoint(run)
    assert "official Train flag" in card.training_data


def test_sampling_weights_balance_classes_and_background():
    labels = [0] * 80 + [1] * 10 + [2] * 30  # class 0 = background
    w = sampling_weights(labels, 3, background=0, background_weight=None)
    per_class = [w[np.asarray(labels) == c].sum() for c in range(3)]
    np.testing.assert_allclose(per_class, [0.5, 0.25, 0.25])  # background as likely as both planes together
    w = sampling_weights(labels, 3, background=0, background_weight=1.0)
    np.testing.assert_allclose([w[np.asarray(labels) == c].sum() for c in range(3)], [1 / 3] * 3)


def test_train_cls_bad_input_is_one_line_error(tmp_path):
    (tmp_path / "only").mkdir()
    bad = tmp_path / "list.csv"
    bad.write_text("path,label\nmissing.png,a\n")
    result = CliRunner().invoke(app, ["train", "cls", str(bad), "-o", str(tmp_path / "r"), "--device", "cpu"])
    assert result.exit_code != 0
    assert "missing.png" in str(result.exception) or "missing.png" in result.output
    assert not (tmp_path / "r" / "best.safetensors").exists()
