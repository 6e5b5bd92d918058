"""`report`: the fold report's figures and the terminal fold table, on hand-made inputs (no training)."""

from __future__ import annotations

import warnings

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


@pytest.mark.parametrize(("dtype", "label_dtype"), [(np.float32, np.int64), (np.float64, np.uint8)])
def test_classification_summary_gives_scikit_learns_figures(dtype, label_dtype):
    """The summary is numpy (scikit-learn's metrics took 1.3 s to import in every command): the same figures as
    scikit-learn's, on predictions that leave a class never predicted and a class absent from the labels (their
    precision / recall / F1 are 0, not NaN), with probabilities of exactly 0 for the true class (floored)."""
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

    generator = np.random.default_rng(3)
    labels = generator.integers(0, 9, size=500)  # no 9 among the labels
    probs = generator.dirichlet(np.full(10, 0.3), size=500).astype(dtype)
    probs[:, 8] = 0.0  # 8 is never predicted; its rows give the true class a probability of 0
    probs /= probs.sum(axis=1, keepdims=True)
    probs[labels == 3, 3] += 1.0  # many 3s predicted right
    probs /= probs.sum(axis=1, keepdims=True)

    summary = report.classification_summary(labels.astype(label_dtype), probs)  # any integer labels

    classes = list(range(10))
    predictions = probs.argmax(axis=1)
    assert 8 not in predictions and 9 not in labels and (predictions == labels).mean() > 0.1
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    assert summary["confusion_matrix"] == confusion_matrix(labels, predictions, labels=classes).tolist()
    for c in classes:
        row = summary["per_class"][str(c)]
        assert row["precision"] == pytest.approx(precision[c], abs=1e-12)
        assert row["recall"] == pytest.approx(recall[c], abs=1e-12)
        assert row["f1"] == pytest.approx(f1[c], abs=1e-12)
        assert row["support"] == support[c]
    with warnings.catch_warnings():  # "do not sum to one": the floor adds a little, as it did before
        warnings.simplefilter("ignore", UserWarning)
        expected_loss = log_loss(labels, np.clip(probs, 1e-7, 1.0), labels=classes)  # as report.py called it
    assert summary["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert summary["accuracy"] == pytest.approx((predictions == labels).mean())
    assert summary["errors"] == int((predictions != labels).sum()) and summary["rows"] == 500


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


def hand_built_holdout(run_dir, labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, wrong_in: list):
    """Fold folders of holdout predictions: fold k says `predicted[i]` with `confidence[i]` (the rest on the label)
    for each row i in `wrong_in[k]` and for the rows it gets right anyway; for a row the ensemble gets wrong
    but fold k does not (i not in `wrong_in[k]`), fold k says the label with 0.6 and `predicted[i]` with 0.4."""
    fold_probs = []
    for k, wrong in enumerate(wrong_in):
        probs = np.zeros((len(labels), 10), dtype=np.float32)
        for i, (label, guess, conf) in enumerate(zip(labels, predicted, confidence, strict=True)):
            if guess == label:
                probs[i, label], probs[i, (label + 1) % 10] = conf, 1 - conf
            elif i in wrong:
                probs[i, guess], probs[i, label] = conf, 1 - conf
            else:
                probs[i, label], probs[i, guess] = 0.6, 0.4
        fold_dir = run_dir / f"fold_{k}"
        fold_dir.mkdir(parents=True)
        np.save(fold_dir / "holdout_probs.npy", probs)
        fold_probs.append(probs)
    return fold_probs


def test_holdout_summary_lists_the_ensembles_mistakes_most_confident_first(tmp_path, sample_train):
    rows = 16
    row_ids = np.arange(100, 100 + rows) * 7  # train.csv rows of the holdout
    labels = sample_train.labels[row_ids]
    predicted = (labels + 1) % 10  # the ensemble gets the first 14 rows wrong, the last 2 right
    predicted[14:] = labels[14:]
    confidence = np.linspace(0.95, 0.96, rows).astype(np.float32)  # the later the row, the more confident
    wrong_in = [set(range(14)), set(range(14)), set(range(0, 14, 2))]  # fold 2 alone gets odd rows right
    fold_probs = hand_built_holdout(tmp_path, labels, predicted, confidence, wrong_in)
    ensemble = np.mean(fold_probs, axis=0)
    assert (ensemble.argmax(axis=1) == predicted).all()  # the construction does what it says

    summary = report.holdout_summary(tmp_path, 3, labels, row_ids)

    assert summary["ensemble_errors"] == 14 and summary["ensemble_accuracy"] == pytest.approx(2 / 16)
    mistakes = summary["ensemble_mistakes"]
    # most confident first: the rows all three folds get wrong (even), then those fold 2 gets right (odd; the
    # ensemble says (2 x 0.95 + 0.4) / 3), each group by falling confidence
    assert [m["row_id"] for m in mistakes] == row_ids[[12, 10, 8, 6, 4, 2, 0, 13, 11, 9, 7, 5, 3, 1]].tolist()
    for m in mistakes:
        i = int(np.flatnonzero(row_ids == m["row_id"])[0])
        assert (m["label"], m["prediction"]) == (labels[i], predicted[i])
        assert m["confidence"] == pytest.approx(ensemble[i].max(), abs=1e-4)
        assert m["folds_wrong"] == (3 if i % 2 == 0 else 2)

    table = run_report([0.99, 0.99, 0.99], ["cnn"] * 3)
    table["holdout"] = {**summary, "fold_accuracy": [0.5, 0.5, 0.5]}
    lines = report.format_fold_table(table).splitlines()
    start = next(i for i, line in enumerate(lines) if "the ensemble's mistakes, most confident first" in line)
    listed = [item.strip() for line in lines[start + 1 : start + 3] for item in line.split(";")[0].split(",  ")]
    assert listed == [
        f"{m['row_id']} {m['label']}→{m['prediction']} {m['confidence']:.2f} {m['folds_wrong']}/3"
        for m in mistakes[: report.HOLDOUT_MISTAKES_LISTED]
    ]
    assert lines[start + 2].endswith(f";  {14 - report.HOLDOUT_MISTAKES_LISTED} more, less confident")
    assert "(14 errors)" in lines[start - 1]
    # a report written before these figures existed (make report recomputes them when it can): no count, no list
    table["holdout"] = {k: v for k, v in table["holdout"].items() if k not in ("ensemble_errors", "ensemble_mistakes")}
    old = report.format_fold_table(table)
    assert "errors)" not in old.split("holdout (")[1] and "mistakes" not in old

    report.plot_holdout_errors(tmp_path, 3, sample_train.images[row_ids], labels, row_ids)
    assert (tmp_path / "holdout_errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_picture_draws_each_mistake_in_its_cell_and_nothing_when_there_is_none(tmp_path):
    """errors.png is one mosaic: the one misclassified digit (all ink) shows as a dark square of about its
    28x28 pixels times the picture's scale, in the first cell; a fold without mistakes draws no digit."""
    import matplotlib.image

    labels = np.array([3, 1, 4, 1, 5])
    probs = np.eye(10, dtype=np.float32)[labels]
    images = np.zeros((5, 28, 28, 1), dtype=np.uint8)
    images[2] = 255
    probs[2] = np.eye(10, dtype=np.float32)[9] * 0.8 + 0.02  # row 2 (a 4) read as a 9

    def dark_pixels(path) -> tuple[np.ndarray, int]:
        picture = matplotlib.image.imread(path)[..., :3].mean(axis=2)
        return np.argwhere(picture < 0.2), picture.shape[1]

    report.plot_errors(images, labels, probs, np.arange(100, 105), tmp_path / "errors.png", "fold 0")
    report.plot_errors(images, labels, np.eye(10)[labels], np.arange(5), tmp_path / "none.png", "fold 1")

    (dark, width), (none, _) = dark_pixels(tmp_path / "errors.png"), dark_pixels(tmp_path / "none.png")
    # the digit's square: at 1.1 inches per 32-pixel cell and 100 dpi, 28 pixels are about 96 picture pixels
    first_cell = dark[dark[:, 1] < width / 9]  # the first of 9 columns; the title is centred, above the cells
    assert len(dark[(dark[:, 1] >= width / 9) & (dark[:, 0] > 30)]) == 0  # nothing else below the title
    per_row = np.bincount(first_cell[:, 0])
    square = first_cell[per_row[first_cell[:, 0]] > 60]  # the caption's rows hold fewer dark pixels than that
    rows, columns = np.ptp(square, axis=0) + 1
    assert 85 <= rows <= 100 and 85 <= columns <= 100
    assert len(square) >= 0.95 * rows * columns  # filled: the digit's pixels, not text
    assert len(none) < len(dark) / 10  # text only: the title and "no misclassified digits"


def test_draw_digits_refuses_what_it_cannot_lay_out():
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    try:
        with pytest.raises(ValueError, match="3 digits do not fit in 1 x 2 cells"):
            report.draw_digits(axis, np.zeros((3, 28, 28)), ["a", "b", "c"], columns=2, rows=1, empty="none")
        with pytest.raises(ValueError, match=r"one 28x28 image per caption, got images of shape \(2, 32, 32\)"):
            report.draw_digits(axis, np.zeros((2, 32, 32)), ["a", "b"], columns=2, rows=1, empty="none")
        report.draw_digits(axis, np.zeros((0, 28, 28)), [], columns=2, rows=1, empty="none")  # nothing to draw
        assert [text.get_text() for text in axis.texts] == ["none"]
    finally:
        plt.close(figure)


@pytest.mark.parametrize("labels", [[0, 10], [-1, 3], [1.0, 2.0]])
def test_classification_summary_refuses_labels_that_are_not_digits(labels):
    with pytest.raises(ValueError, match="labels must be integers 0-9"):
        report.classification_summary(np.array(labels), np.full((2, 10), 0.1))
