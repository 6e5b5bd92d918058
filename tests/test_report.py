"""`report`: the fold report's figures and the terminal fold table, on hand-made inputs (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from digits import report


def test_fold_report_keeps_the_last_epochs_val_accuracy_not_the_best():
    labels = np.arange(10)
    probs = np.full((10, 10), 0.01, dtype=np.float32)
    probs[labels, labels] = 0.91
    history = [{"val_accuracy": 0.90}, {"val_accuracy": 0.95}, {"val_accuracy": 0.93}]  # best is epoch 2

    fold = report.fold_report(0, labels, probs, history, 2, 100, 1.0, 10.0, 500.0, 1234, "cnn")

    assert fold["best_epoch"] == 2 and fold["epochs"] == 3
    assert fold["last_epoch_accuracy"] == pytest.approx(0.93)
    assert (
        report.fold_report(0, labels, probs, [], 0, 100, 1.0, 10.0, 500.0, 1234, "cnn")["last_epoch_accuracy"] is None
    )


def run_report(last: list[float | None], models: list[str]) -> dict:
    rows = [
        {
            "fold": k,
            "model": model,
            "accuracy": 0.995 + k / 1000,
            "loss": 0.02,
            "errors": 30 + k,
            "best_epoch": 20 + k,
            "epochs": 24,
            "train_seconds": 600.0,
            "train_images_per_second": 1500.0,
            "last_epoch_accuracy": value,
        }
        for k, (value, model) in enumerate(zip(last, models, strict=True))
    ]
    known = [value for value in last if value is not None]
    return {
        "run": "r",
        "config": {"model": models[0], "epochs": 24, "preset": "default"},
        "folds": rows,
        "fold_accuracy_mean": 0.996,
        "fold_loss_mean": 0.02,
        "fold_accuracy_std": 0.001,
        "last_epoch_accuracy_mean": float(np.mean(known)) if len(known) == len(last) else None,
        "oof_accuracy": 0.996,
        "oof_rows": 1000,
        "oof_errors": 4,
        "most_confused": [],
    }


@pytest.mark.parametrize("models", [["cnn", "cnn", "cnn"], ["cnn", "cnn_pool", "cnn"]])
def test_fold_table_puts_the_last_epoch_beside_the_best_in_one_column(models):
    lines = report.format_fold_table(run_report([0.9912, 0.9934, 0.9956], models)).splitlines()

    end = lines[1].index("last-epoch acc") + len("last-epoch acc")
    for line, value in zip(lines[2:5], ("0.9912", "0.9934", "0.9956"), strict=True):
        assert line[end - len(value) : end] == value, line
    assert lines[5].startswith("mean") and lines[5][end - 6 : end] == "0.9934", lines[5]
    assert "picked on these same validation rows, so it is slightly optimistic; last-epoch acc is not" in lines[6]


def test_fold_table_shows_an_unknown_last_epoch_as_a_dash_and_no_mean():
    lines = report.format_fold_table(run_report([0.9912, None], ["cnn", "cnn"])).splitlines()

    end = lines[1].index("last-epoch acc") + len("last-epoch acc")
    assert lines[3][end - 1 : end] == "-" and lines[3][end - 2] == " ", lines[3]
    assert "(std 0.0010)" in lines[4] and lines[4].rstrip().endswith("(std 0.0010)")
    assert not any("optimistic" in line for line in lines)
