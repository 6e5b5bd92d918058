"""Folds are data: a seeded stratified k-fold assignment, written once and read by every fold.

In:  the labels of train.csv, k, a seed and an optional holdout fraction (with its own seed, by default the same).
Out: `folds.csv` with `row_id,label,fold`; `row_id` is the 0-based data row of train.csv and fold
     -1 marks the holdout rows, which no fold trains or validates on (they score the ensemble).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from digits import fileio
from digits.config import ConfigError

HOLDOUT_FOLD = -1


def assign_folds(
    labels: np.ndarray, k: int, seed: int, holdout: float = 0.0, holdout_seed: int | None = None
) -> np.ndarray:
    """Return a fold id per row: 0..k-1, or HOLDOUT_FOLD for the stratified holdout.

    `holdout_seed` (default `seed`) picks the holdout rows and `seed` splits the rest into folds, so runs
    with one holdout seed and different seeds hold out the same rows in differently split folds."""
    from sklearn.model_selection import StratifiedKFold, train_test_split  # slow import: only when needed

    labels = np.asarray(labels)
    folds = np.full(len(labels), HOLDOUT_FOLD, dtype=np.int64)
    rows = np.arange(len(labels))
    if holdout > 0:
        rows, _ = train_test_split(
            rows, test_size=holdout, stratify=labels, random_state=seed if holdout_seed is None else holdout_seed
        )
        rows = np.sort(rows)
    present = np.unique(labels[rows])
    smallest = min(int((labels[rows] == c).sum()) for c in present) if len(present) else 0
    if k > smallest:
        raise ConfigError(
            f"FOLDS={k} is larger than the smallest class ({smallest} rows) of the training rows: "
            f"every fold needs at least one row of every class. Use FOLDS<={smallest} or more data."
        )
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, val_index) in enumerate(splitter.split(rows, labels[rows])):
        folds[rows[val_index]] = fold
    return folds


def write_folds(path: Path, labels: np.ndarray, folds: np.ndarray) -> None:
    frame = pd.DataFrame({"row_id": np.arange(len(labels)), "label": labels, "fold": folds})
    with fileio.atomic_open(path, "w", newline="") as handle:
        frame.to_csv(handle, index=False)


def read_folds(path: Path, labels: np.ndarray) -> np.ndarray:
    """Read folds.csv and check that it belongs to this train.csv."""
    frame = pd.read_csv(path)
    if list(frame.columns) != ["row_id", "label", "fold"]:
        raise ConfigError(f"{path}: expected columns row_id,label,fold, found {','.join(frame.columns)}")
    if len(frame) != len(labels) or not np.array_equal(frame["label"].to_numpy(), labels):
        raise ConfigError(
            f"{path} was made for a different train.csv ({len(frame)} rows, this one has {len(labels)}). "
            f"Start a new run (another RUN=name) for this data."
        )
    return frame["fold"].to_numpy(dtype=np.int64)
