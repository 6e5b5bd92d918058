"""Validation reports: numbers (JSON) and pictures (PNG), per fold and per run, and one HTML page.

Per fold (`fold_<k>/`): report.json (accuracy, loss, per-class precision/recall/F1, confusion
matrix, best epoch, seconds, images/s, peak RSS), curves.png, confusion.png, errors.png.
Per run: oof.csv (row id, fold, label, prediction, 10 probabilities), report.json (fold table,
mean and std, OOF accuracy over all rows, OOF confusion matrix, the most confused pairs; when there is a
holdout, the fold ensemble's accuracy on it and its mistakes, row by row, also drawn in holdout_errors.png)
and report.html, a self-contained page (pictures embedded) with every fold side by side.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from digits import data, fileio, folds, paths  # noqa: E402

CLASSES = list(range(data.NUM_CLASSES))
ERROR_GRID = 36  # misclassified digits shown per fold
HOLDOUT_ERROR_GRID = 54  # misclassified holdout digits shown for the run's fold ensemble
HOLDOUT_MISTAKES_LISTED = 12  # and listed by `make report`


def classification_summary(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, log loss, per-class precision / recall / F1 / support and the confusion matrix (rows: label,
    columns: prediction) of `probs` (rows of class probabilities) against `labels`. In numpy: scikit-learn's
    metrics give the same figures (tests/test_report.py checks it) but took 1.3 s to import, in every
    `make report`, `make submission` and `make compare`."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES) or labels.dtype.kind not in "iu"):
        raise ValueError(f"labels must be integers 0-9; got {labels.dtype} values {labels.min()} to {labels.max()}")
    labels = labels.astype(np.int64)
    predictions = probs.argmax(axis=1)
    matrix = np.bincount(labels * len(CLASSES) + predictions, minlength=len(CLASSES) ** 2)
    matrix = matrix.reshape(len(CLASSES), len(CLASSES))
    hits = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)  # 0 where undefined
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    f1 = np.divide(2 * hits, support + predicted, out=np.zeros_like(hits), where=support + predicted > 0)
    # the probability given to the true class, floored at 1e-7 (or at the dtype's eps if larger, as scikit-learn did)
    true_class = probs[np.arange(len(labels)), labels]
    eps = np.finfo(true_class.dtype).eps
    loss = -np.log(np.clip(true_class, max(1e-7, eps), 1 - eps).astype(np.float64)).mean()
    return {
        "rows": int(len(labels)),
        "accuracy": float((predictions == labels).mean()),
        "loss": float(loss),
        "errors": int((predictions != labels).sum()),
        "per_class": {
            str(c): {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in CLASSES
        },
        "confusion_matrix": matrix.tolist(),
    }


def fold_report(
    fold: int,
    labels: np.ndarray,
    probs: np.ndarray,
    history: list[dict],
    best_epoch: int,
    train_images: int,
    train_seconds: float,
    predict_images_per_second: float,
    peak_rss_mb: float,
    parameters: int,
    model: str,
) -> dict:
    epochs_run = len(history)
    summary = classification_summary(labels, probs)
    return {
        "fold": fold,
        **summary,
        "best_epoch": best_epoch,
        "epochs": epochs_run,
        # The best epoch is chosen on these same rows, so `accuracy` flatters the model a little; the last
        # epoch's accuracy is free of that choice (the holdout, when there is one, is free of it too).
        "last_epoch_accuracy": float(history[-1]["val_accuracy"])
        if history and "val_accuracy" in history[-1]
        else None,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(train_seconds / max(epochs_run, 1), 2),
        "train_images_per_second": round(train_images * epochs_run / max(train_seconds, 1e-9), 1),
        "predict_images_per_second": round(predict_images_per_second, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "parameters": int(parameters),
        "model": model,
    }


# --- pictures ----------------------------------------------------------------------------------------


def save_figure(figure, path: Path) -> None:
    """Write a figure as PNG, atomically, and free it."""
    with fileio.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_curves(history: list[dict], best_epoch: int, path: Path, title: str) -> None:
    frame = pd.DataFrame(history)
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    for axis, metric in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        if metric in frame:
            axis.plot(frame["epoch"], frame[metric], label=f"train {metric}")
        if f"val_{metric}" in frame:
            axis.plot(frame["epoch"], frame[f"val_{metric}"], label=f"val {metric}")
        if best_epoch:
            axis.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        if metric == "loss":
            axis.set_yscale("log")  # the first epoch's loss would otherwise flatten the rest
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    if "val_accuracy" in frame and len(frame) > 1:
        tail = frame["val_accuracy"].iloc[len(frame) // 3 :]
        acc_axis.set_ylim(max(0.0, tail.min() - 0.01), 1.0)
    figure.suptitle(title)
    save_figure(figure, path)


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
    matrix = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(4.6, 4.2))
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    # Colour the mistakes (the diagonal would swamp the scale); print every count.
    axis.imshow(off_diagonal, cmap="Reds", vmin=0, vmax=max(off_diagonal.max(), 1))
    for (row, col), count in np.ndenumerate(matrix):
        axis.text(
            col, row, str(count), ha="center", va="center", fontsize=6.5, color="black" if row != col else "tab:blue"
        )
    axis.set_xticks(CLASSES)
    axis.set_yticks(CLASSES)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    save_figure(figure, path)


def plot_errors(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    row_ids: np.ndarray,
    path: Path,
    title: str,
    limit: int = ERROR_GRID,
    notes: np.ndarray | None = None,
) -> None:
    """The most confident mistakes first: true label, prediction, confidence and train.csv row (and the row's
    entry of `notes`, when given, after it)."""
    predictions = probs.argmax(axis=1)
    wrong = most_confident_mistakes(probs, labels)[:limit]
    columns = 9
    rows = max(int(np.ceil(len(wrong) / columns)), 1)
    figure = plt.figure(figsize=(columns * 1.1, rows * 1.35 + 0.4))
    axis = figure.add_axes((0, 0, 1, rows * 1.35 / (rows * 1.35 + 0.4)))
    captions = [
        f"{labels[i]}→{predictions[i]} {probs[i, predictions[i]]:.2f}\nrow {row_ids[i]}"
        + (f" {notes[i]}" if notes is not None else "")
        for i in wrong
    ]
    draw_digits(axis, images[wrong], captions, columns, rows, empty="no misclassified digits")
    figure.suptitle(
        f"{title}: {len(np.flatnonzero(predictions != labels))} mistakes "
        f"(true→predicted confidence, most confident first)",
        fontsize=9,
    )
    save_figure(figure, path)


def draw_digits(
    axis, images: np.ndarray, captions: list[str], columns: int, rows: int, empty: str, fontsize: float = 6.5
) -> None:
    """Draw digits (n x 28 x 28, or n x 28 x 28 x 1; pixels 0-255) row by row into a grid of `columns` x `rows`
    cells on one axes, each cell with its caption above the digit (`empty` is written instead when there are
    none). One axes and one image draw about 6x faster than an axes per digit, which matters for every fold's
    errors.png. A cell is 32 x 40 pixels of the digits: give the axes that aspect for square pixels."""
    size, gap, caption = 28, 4, 12  # in pixels of the digits
    if len(captions) > rows * columns:
        raise ValueError(f"{len(captions)} digits do not fit in {rows} x {columns} cells")
    if len(images) != len(captions) or np.shape(images)[1:3] not in ((size, size), ()):
        raise ValueError(f"need one 28x28 image per caption, got images of shape {np.shape(images)}")
    cell_width, cell_height = size + gap, size + caption
    mosaic = np.zeros((rows * cell_height, columns * cell_width), dtype=np.float32)
    for position, (image, text) in enumerate(zip(images, captions, strict=True)):
        top, left = (position // columns) * cell_height + caption, (position % columns) * cell_width + gap // 2
        mosaic[top : top + size, left : left + size] = np.asarray(image).reshape(size, size)
        axis.text(left + size / 2, top - 1, text, fontsize=fontsize, ha="center", va="bottom")
    axis.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    axis.axis("off")
    if not len(captions):
        axis.text(gap, cell_height / 2, empty, fontsize=fontsize + 2, va="center")


def most_confident_mistakes(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Positions of the rows whose argmax is not the label, the most confident prediction first (ties in row
    order), so a picture and a list of the same mistakes agree."""
    predictions = probs.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    return wrong[np.argsort(-probs[wrong, predictions[wrong]], kind="stable")]


def plot_samples(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 8, seed: int = 0) -> None:
    """`per_class` random digits of each class, a row per class labelled on the left; one image on one axes (an
    axes per digit, as until session 20, took about 1.5 s of every run's end)."""
    rng = np.random.default_rng(seed)
    size, gap = 28, 2
    mosaic = np.zeros((len(CLASSES) * (size + gap) - gap, per_class * (size + gap) - gap), dtype=np.float32)
    for digit in CLASSES:
        rows = np.flatnonzero(labels == digit)
        chosen = rng.choice(rows, size=min(per_class, len(rows)), replace=False) if len(rows) else []
        top = digit * (size + gap)
        for column, row in enumerate(chosen):
            left = column * (size + gap)
            mosaic[top : top + size, left : left + size] = images[row].reshape(size, size)
    figure, axis = plt.subplots(figsize=(per_class * 0.7, len(CLASSES) * 0.7))
    axis.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([digit * (size + gap) + size / 2 for digit in CLASSES], [str(digit) for digit in CLASSES])
    axis.tick_params(length=0, labelsize=8)
    for spine in axis.spines.values():
        spine.set_visible(False)
    figure.suptitle("sample digits per class (rows 0-9)", fontsize=9)
    save_figure(figure, path)


def fold_pictures(
    fold_dir: Path,
    history: list[dict],
    fold_report: dict,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    row_ids: np.ndarray,
) -> None:
    title = f"fold {fold_report['fold']}"
    plot_curves(history, fold_report["best_epoch"], fold_dir / "curves.png", f"{title}: learning curves")
    plot_confusion(
        np.array(fold_report["confusion_matrix"]),
        fold_dir / "confusion.png",
        f"{title}: confusion (val acc {fold_report['accuracy']:.4f})",
    )
    plot_errors(images, labels, probs, row_ids, fold_dir / "errors.png", title)


# --- the run ------------------------------------------------------------------------------------------


def most_confused(matrix: np.ndarray, top: int = 5) -> list[dict]:
    matrix = np.asarray(matrix)
    pairs = []
    for a in CLASSES:
        for b in CLASSES:
            if a < b and matrix[a, b] + matrix[b, a] > 0:
                pairs.append(
                    {
                        "classes": [a, b],
                        "count": int(matrix[a, b] + matrix[b, a]),
                        f"{a}_as_{b}": int(matrix[a, b]),
                        f"{b}_as_{a}": int(matrix[b, a]),
                    }
                )
    return sorted(pairs, key=lambda pair: -pair["count"])[:top]


def load_oof(run_dir: Path, fold_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ids, fold ids and probabilities of every fold's validation rows, sorted by row id."""
    row_ids, fold_ids, probs = [], [], []
    for fold in range(fold_count):
        oof = np.load(run_dir / f"fold_{fold}" / "oof.npy")
        row_ids.append(oof["row_id"])
        fold_ids.append(np.full(len(oof), fold))
        probs.append(oof["probs"])
    row_ids, fold_ids, probs = np.concatenate(row_ids), np.concatenate(fold_ids), np.concatenate(probs)
    order = np.argsort(row_ids)
    return row_ids[order], fold_ids[order], probs[order]


def run_report(run_dir: Path, train: data.TrainData, fold_ids: np.ndarray) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    fold_count = int(config["config"]["folds"])
    fold_reports = [json.loads((run_dir / f"fold_{k}" / "report.json").read_text()) for k in range(fold_count)]
    row_ids, oof_folds, probs = load_oof(run_dir, fold_count)
    labels = train.labels[row_ids]
    expected_rows = np.flatnonzero(fold_ids != folds.HOLDOUT_FOLD)
    if not np.array_equal(row_ids, expected_rows):
        raise ValueError(f"{run_dir}: the folds' oof.npy files do not cover the training rows exactly once")
    frame = pd.DataFrame({"row_id": row_ids, "fold": oof_folds, "label": labels, "prediction": probs.argmax(axis=1)})
    for c in CLASSES:
        frame[f"prob_{c}"] = probs[:, c]
    with fileio.atomic_open(run_dir / "oof.csv", "w", newline="") as handle:
        # 9 significant digits round-trip float32 exactly, so the argmax read back from oof.csv is the
        # prediction column (6 digits could flip near-ties of an unsure model).
        frame.to_csv(handle, index=False, float_format="%.9g")

    oof = classification_summary(labels, probs)
    accuracies = np.array([r["accuracy"] for r in fold_reports])
    losses = np.array([r["loss"] for r in fold_reports])
    report = {
        "run": run_dir.name,
        "config": config["config"],
        "folds": [
            {
                "model": r.get("model", config["config"]["model"]),  # runs before mixed models lack the key
                **{
                    key: r[key]
                    for key in (
                        "fold",
                        "rows",
                        "accuracy",
                        "loss",
                        "errors",
                        "best_epoch",
                        "epochs",
                        "train_seconds",
                        "seconds_per_epoch",
                        "train_images_per_second",
                        "peak_rss_mb",
                    )
                },
                "last_epoch_accuracy": r.get("last_epoch_accuracy"),  # None for folds trained before it existed
            }
            for r in fold_reports
        ],
        "fold_accuracy_mean": float(accuracies.mean()),
        "fold_accuracy_std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
        "fold_loss_mean": float(losses.mean()),
        "oof_accuracy": oof["accuracy"],
        "oof_loss": oof["loss"],
        "oof_errors": oof["errors"],
        "oof_rows": oof["rows"],
        "oof_per_class": oof["per_class"],
        "oof_confusion_matrix": oof["confusion_matrix"],
        "most_confused": most_confused(np.array(oof["confusion_matrix"])),
        "train_seconds_total": round(sum(r["train_seconds"] for r in fold_reports), 1),
        "class_balance": class_balance(train.labels, fold_ids),
    }
    with_last_epoch(run_dir, report)
    holdout = fold_ids == folds.HOLDOUT_FOLD
    if holdout.any():
        rows = np.flatnonzero(holdout)
        report["holdout"] = holdout_summary(run_dir, fold_count, train.labels[rows], rows)
        plot_holdout_errors(run_dir, fold_count, train.images[rows], train.labels[rows], rows)
    plot_confusion(
        np.array(oof["confusion_matrix"]),
        run_dir / "oof_confusion.png",
        f"out-of-fold confusion (acc {oof['accuracy']:.4f})",
    )
    plot_samples(train.images, train.labels, run_dir / "samples.png")
    fileio.write_text(run_dir / "report.html", render_html(run_dir, report))
    # Last: a run with a report.json is finished and never rewritten (train.train_run), so it must not exist
    # before report.html does (a kill in between would leave a run without its HTML report for good).
    fileio.write_json(run_dir / "report.json", report)
    return report


def _mean_or_none(values: list[float | None]) -> float | None:
    return float(np.mean(values)) if values and None not in values else None


def last_epoch_accuracy(run_dir: Path, fold_report: dict) -> float | None:
    """The fold's val accuracy at its last epoch: from its report, or for a fold trained before reports
    had it, from its history.csv (None if neither has it)."""
    if fold_report.get("last_epoch_accuracy") is not None:
        return fold_report["last_epoch_accuracy"]
    try:
        history = pd.read_csv(run_dir / f"fold_{fold_report['fold']}" / "history.csv", usecols=["val_accuracy"])
    except (OSError, ValueError):
        return None
    return float(history["val_accuracy"].iloc[-1]) if len(history) else None


def with_last_epoch(run_dir: Path, report: dict) -> dict:
    """A run report with every fold's last-epoch val accuracy and their mean: from its own rows, or (a fold
    trained before reports had it) from the fold's history.csv."""
    for row in report["folds"]:
        row["last_epoch_accuracy"] = last_epoch_accuracy(run_dir, row)
    report["last_epoch_accuracy_mean"] = _mean_or_none([row["last_epoch_accuracy"] for row in report["folds"]])
    return report


def read_run_report(run_dir: Path) -> dict:
    """A finished run's report.json as `make report` shows it: with the last-epoch figures (`with_last_epoch`)
    and the holdout figures recomputed from the fold files, since TTA may have been measured after the report
    was written (`make submission TTA=1`); if a fold's holdout file has gone since, the report's own stand."""
    run_report = with_last_epoch(run_dir, json.loads((run_dir / "report.json").read_text()))
    if "holdout" in run_report:
        with contextlib.suppress(OSError, ValueError):
            run_report["holdout"] = run_holdout_summary(run_dir)
    return run_report


# The holdout's predictions in every fold folder, by the prefix of their figures in the report: the best epoch's
# (the fold's model), with TTA (measured at the end of every fold, or by `make submission TTA=1`), and the last
# epoch's (saved since session 8, so older runs lack it).
HOLDOUT_FILES = (
    ("", paths.HOLDOUT_PROBS),
    ("tta_", paths.HOLDOUT_TTA_PROBS),
    ("last_epoch_", paths.HOLDOUT_LAST_EPOCH_PROBS),
)


def holdout_summary(run_dir: Path, fold_count: int, labels: np.ndarray, row_ids: np.ndarray) -> dict:
    """Accuracy and errors on the holdout rows of each fold model and of their mean, and with TTA and at the
    last epoch when every fold has those predictions; and the fold ensemble's mistakes, row by row
    (`holdout_mistakes`). `row_ids` are the holdout rows' 0-based data rows of train.csv."""
    summary: dict = {"rows": int(len(labels))}
    for prefix, name in HOLDOUT_FILES:
        paths_ = [run_dir / f"fold_{k}" / name for k in range(fold_count)]
        if prefix and not all(p.is_file() for p in paths_):
            continue
        fold_probs = [np.load(p) for p in paths_]
        predictions = np.mean(fold_probs, axis=0).argmax(axis=1)
        summary[f"{prefix}ensemble_accuracy"] = float((predictions == labels).mean())
        summary[f"{prefix}ensemble_errors"] = int((predictions != labels).sum())
        summary[f"{prefix}fold_accuracy"] = [float((p.argmax(axis=1) == labels).mean()) for p in fold_probs]
        if not prefix:
            summary["ensemble_mistakes"] = holdout_mistakes(fold_probs, labels, row_ids)
    return summary


def holdout_mistakes(fold_probs: list[np.ndarray], labels: np.ndarray, row_ids: np.ndarray) -> list[dict]:
    """The holdout rows the fold ensemble gets wrong, most confident first: train.csv row, label, the
    ensemble's prediction and confidence, and how many of the fold models get the row wrong on their own (a
    row every model gets wrong with confidence is often mislabelled; look at it in holdout_errors.png)."""
    probs = np.mean(fold_probs, axis=0)
    predictions = probs.argmax(axis=1)
    folds_wrong = _folds_wrong(fold_probs, labels)
    return [
        {
            "row_id": int(row_ids[i]),
            "label": int(labels[i]),
            "prediction": int(predictions[i]),
            "confidence": round(float(probs[i, predictions[i]]), 4),
            "folds_wrong": int(folds_wrong[i]),
        }
        for i in most_confident_mistakes(probs, labels)
    ]


def _folds_wrong(fold_probs: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Per row, how many of the fold models get it wrong on their own."""
    return np.sum([p.argmax(axis=1) != labels for p in fold_probs], axis=0)


def plot_holdout_errors(
    run_dir: Path, fold_count: int, images: np.ndarray, labels: np.ndarray, row_ids: np.ndarray
) -> None:
    """holdout_errors.png: the holdout digits the fold ensemble gets wrong, each with how many fold models
    get it wrong alone (e.g. `5/5`)."""
    fold_probs = [np.load(run_dir / f"fold_{k}" / paths.HOLDOUT_PROBS) for k in range(fold_count)]
    folds_wrong = _folds_wrong(fold_probs, labels)
    plot_errors(
        images,
        labels,
        np.mean(fold_probs, axis=0),
        row_ids,
        run_dir / "holdout_errors.png",
        f"holdout, fold ensemble of {fold_count} (n/{fold_count}: fold models wrong alone)",
        limit=HOLDOUT_ERROR_GRID,
        notes=np.array([f"{n}/{fold_count}" for n in folds_wrong]),
    )


def run_holdout_summary(run_dir: Path) -> dict | None:
    """`holdout_summary` of a finished run from its own folds.csv (None when the run has no holdout)."""
    frame = pd.read_csv(run_dir / "folds.csv")
    holdout = frame["fold"] == folds.HOLDOUT_FOLD
    if not holdout.any():
        return None
    return holdout_summary(
        run_dir,
        int(frame.loc[~holdout, "fold"].max()) + 1,
        frame.loc[holdout, "label"].to_numpy(),
        frame.loc[holdout, "row_id"].to_numpy(),
    )


def class_balance(labels: np.ndarray, fold_ids: np.ndarray) -> dict:
    """Rows per class in each fold (and the holdout), as {fold name: [count per class]}."""
    balance = {"all": np.bincount(labels, minlength=len(CLASSES)).tolist()}
    for fold in sorted(set(fold_ids.tolist())):
        name = "holdout" if fold == folds.HOLDOUT_FOLD else f"fold {fold}"
        balance[name] = np.bincount(labels[fold_ids == fold], minlength=len(CLASSES)).tolist()
    return balance


def format_fold_table(report: dict) -> str:
    mixed = len({row.get("model") for row in report["folds"]}) > 1  # several architectures: say which fold has which
    model_head = f"  {'model':<10}" if mixed else ""
    lines = [
        f"run {report['run']}  ({report['config']['model']}, {report['config']['epochs']} epochs, "
        f"preset {report['config']['preset']})",
        f"{'fold':>4}{model_head}  {'val acc':>8}  {'val loss':>8}  {'errors':>6}  {'best epoch':>10}  "
        f"{'last-epoch acc':>14}  {'time':>8}  {'img/s':>7}",
    ]
    for row in report["folds"]:
        model = f"  {row['model']:<10}" if mixed else ""
        lines.append(
            f"{row['fold']:>4}{model}  {row['accuracy']:>8.4f}  {row['loss']:>8.4f}  {row['errors']:>6}  "
            f"{row['best_epoch']:>5}/{row['epochs']:<4}  {_accuracy(row.get('last_epoch_accuracy')):>14}  "
            f"{row['train_seconds']:>7.0f}s  {row['train_images_per_second']:>7.0f}"
        )
    lines.append(
        f"mean{' ' * len(model_head)}  {report['fold_accuracy_mean']:>8.4f}  {report['fold_loss_mean']:>8.4f}   "
        f"(std {report['fold_accuracy_std']:.4f})"
        + (
            f"{'':>7}{_accuracy(report['last_epoch_accuracy_mean']):>14}"
            if report.get("last_epoch_accuracy_mean") is not None
            else ""
        )
    )
    if report.get("last_epoch_accuracy_mean") is not None:
        lines.append(
            "val acc is at the best epoch, picked on these same validation rows, so it is slightly optimistic; "
            "last-epoch acc is not" + (", nor is the holdout" if "holdout" in report else "")
        )
    lines.append(
        f"OOF accuracy {report['oof_accuracy']:.4f} over {report['oof_rows']:,} rows ({report['oof_errors']} errors)"
    )
    if "holdout" in report:
        h = report["holdout"]
        tta = f", with TTA {h['tta_ensemble_accuracy']:.4f}" if "tta_ensemble_accuracy" in h else ""
        singles: dict[str, list[float]] = {}
        for row, accuracy in zip(report["folds"], h["fold_accuracy"], strict=True):
            singles.setdefault(row.get("model") if mixed else "folds", []).append(accuracy)
        ranges = "; ".join(f"single {name} {min(a):.4f}-{max(a):.4f}" for name, a in singles.items())
        errors = f" ({h['ensemble_errors']} errors)" if "ensemble_errors" in h else ""
        lines.append(
            f"holdout ({h['rows']:,} rows): fold ensemble accuracy {h['ensemble_accuracy']:.4f}{errors}{tta}; {ranges}"
        )
        mistakes = h.get("ensemble_mistakes") or []
        if mistakes:
            items = [
                f"{m['row_id']} {m['label']}→{m['prediction']} {m['confidence']:.2f} "
                f"{m['folds_wrong']}/{len(h['fold_accuracy'])}"
                for m in mistakes[:HOLDOUT_MISTAKES_LISTED]
            ]
            lines.append(
                "  the ensemble's mistakes, most confident first (train.csv row, label→prediction, confidence, "
                "fold models wrong alone):"
            )
            lines.extend("    " + ",  ".join(items[i : i + 6]) for i in range(0, len(items), 6))
            if len(mistakes) > len(items):
                lines[-1] += f";  {len(mistakes) - len(items)} more, less confident"
        if "last_epoch_ensemble_accuracy" in h:
            lines.append(
                f"  the last epochs' models instead of the best: fold ensemble {h['last_epoch_ensemble_accuracy']:.4f}, "
                f"single folds {min(h['last_epoch_fold_accuracy']):.4f}-{max(h['last_epoch_fold_accuracy']):.4f}"
            )
    confused = ", ".join(f"{p['classes'][0]}↔{p['classes'][1]} ({p['count']})" for p in report["most_confused"][:3])
    if confused:
        lines.append(f"most confused: {confused}")
    return "\n".join(lines)


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# --- HTML ---------------------------------------------------------------------------------------------


def _image_tag(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p class='missing'>({html.escape(path.name)} missing)</p>"
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{encoded}' alt='{html.escape(alt)}'>"


def _table(header: list[str], rows: list[list], classes: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{classes}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(run_dir: Path, report: dict) -> str:
    config = report["config"]
    fold_rows = [
        [
            r["fold"],
            r.get("model", config["model"]),
            f"{r['accuracy']:.4f}",
            f"{r['loss']:.4f}",
            r["errors"],
            f"{r['best_epoch']}/{r['epochs']}",
            _accuracy(r.get("last_epoch_accuracy")),
            f"{r['train_seconds']:.0f}",
            f"{r['seconds_per_epoch']:.1f}",
            f"{r['train_images_per_second']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        for r in report["folds"]
    ]
    fold_rows.append(
        [
            "mean ± std",
            "",
            f"{report['fold_accuracy_mean']:.4f} ± {report['fold_accuracy_std']:.4f}",
            f"{report['fold_loss_mean']:.4f}",
            sum(r["errors"] for r in report["folds"]),
            "",
            _accuracy(report.get("last_epoch_accuracy_mean")),
            "",
            "",
            "",
            "",
        ]
    )
    balance_rows = [[name, *counts, sum(counts)] for name, counts in report["class_balance"].items()]
    confused_rows = [[f"{p['classes'][0]} ↔ {p['classes'][1]}", p["count"]] for p in report["most_confused"]]
    per_class_rows = [
        [c, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", v["support"]]
        for c, v in report["oof_per_class"].items()
    ]
    columns = "".join(
        f"<div class='fold'><h3>fold {r['fold']} · val acc {r['accuracy']:.4f}</h3>"
        + _image_tag(run_dir / f"fold_{r['fold']}" / "curves.png", f"fold {r['fold']} learning curves")
        + _image_tag(run_dir / f"fold_{r['fold']}" / "confusion.png", f"fold {r['fold']} confusion matrix")
        + _image_tag(run_dir / f"fold_{r['fold']}" / "errors.png", f"fold {r['fold']} misclassified digits")
        + "</div>"
        for r in report["folds"]
    )
    holdout = ""
    if "holdout" in report:
        h = report["holdout"]
        holdout = (
            f"<h2>Holdout</h2><p>{h['rows']:,} rows kept out of every fold. Fold ensemble accuracy "
            f"<b>{h['ensemble_accuracy']:.4f}</b> ({h['ensemble_errors']} errors); single folds: "
            f"{', '.join(f'{a:.4f}' for a in h['fold_accuracy'])}."
            + (
                f" With TTA ({len(h['tta_fold_accuracy'])} models, one-pixel shifts averaged): ensemble "
                f"<b>{h['tta_ensemble_accuracy']:.4f}</b>; single folds "
                f"{', '.join(f'{a:.4f}' for a in h['tta_fold_accuracy'])}."
                if "tta_ensemble_accuracy" in h
                else ""
            )
            + (
                f" The last epochs' models instead of the best epochs' (the checkpoint chosen on each fold's "
                f"validation rows): ensemble <b>{h['last_epoch_ensemble_accuracy']:.4f}</b>; single folds "
                f"{', '.join(f'{a:.4f}' for a in h['last_epoch_fold_accuracy'])}."
                if "last_epoch_ensemble_accuracy" in h
                else ""
            )
            + "</p>"
            + (
                "<p>The digits the fold ensemble gets wrong (true→predicted, confidence, train.csv row, how many "
                "fold models get it wrong alone). Digits that every model gets wrong with confidence are often "
                "mislabelled or ambiguous: no recipe will fix those.</p>"
                + _image_tag(run_dir / "holdout_errors.png", "the holdout digits the fold ensemble gets wrong")
                if h.get("ensemble_errors") and (run_dir / "holdout_errors.png").is_file()
                else ""
            )
        )
    settings = ", ".join(f"{k}={v}" for k, v in config.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Run {html.escape(report["run"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }}
.folds {{ display: flex; gap: 12px; overflow-x: auto; align-items: flex-start; }}
.fold {{ flex: 0 0 auto; width: 460px; border: 1px solid #ddd; padding: 6px; }}
.fold img {{ width: 100%; display: block; margin-bottom: 6px; }}
.summary img {{ max-width: 420px; }}
code {{ font-size: 12px; }}
</style></head><body>
<h1>Run {html.escape(report["run"])}</h1>
<p><b>OOF accuracy {report["oof_accuracy"]:.4f}</b> over {report["oof_rows"]:,} rows ({report["oof_errors"]} errors),
OOF log loss {report["oof_loss"]:.4f}; fold accuracy {report["fold_accuracy_mean"]:.4f} ± {report["fold_accuracy_std"]:.4f};
training time {report["train_seconds_total"]:.0f} s.</p>
<p><code>{html.escape(settings)}</code></p>
<h2>Data</h2>
<p>Rows per class in train.csv and in each fold's validation part.</p>
{_table(["", *CLASSES, "total"], balance_rows)}
<div class="summary">{_image_tag(run_dir / "samples.png", "sample digits per class")}</div>
<h2>Folds</h2>
{_table(["fold", "model", "val acc", "val loss", "errors", "best epoch", "val acc, last epoch", "train s", "s/epoch", "images/s", "peak RSS MB"], fold_rows)}
<p>The checkpoint kept is the epoch with the best val acc, chosen on the fold's own validation rows, so its val acc
(and the OOF accuracy) is slightly optimistic; the last epoch's val acc is free of that choice{", and so is the holdout" if "holdout" in report else ""}.</p>
{holdout}
<h2>Out-of-fold predictions</h2>
<div class="summary">{_image_tag(run_dir / "oof_confusion.png", "out-of-fold confusion matrix")}</div>
<h3>Most confused pairs</h3>
{_table(["pair", "mistakes"], confused_rows)}
<h3>Per class</h3>
{_table(["class", "precision", "recall", "F1", "support"], per_class_rows)}
<h2>Every fold side by side</h2>
<div class="folds">{columns}</div>
</body></html>
"""
