"""Is one run better than another? `make compare RUNS=a,b` answers on the rows both runs predicted honestly.

Two accuracies side by side say little when they differ by a few digits: on 4,200 holdout rows one standard
error is about 4 errors at 0.996. The runs predicted the same rows, so the comparison is paired: only the
rows that one run gets right and the other wrong can tell them apart, and McNemar's exact test says how
likely a split at least that uneven would be if both runs were equally good (a fair coin for each such row).

Each run after the first is compared with the first, on
- the out-of-fold rows both runs have (every row of train.csv outside either run's holdout; one model per row);
- the holdout, when both runs held out the same rows: the fold ensemble, and with TTA when both measured it.
Nothing here trains or predicts: it reads the runs' oof.csv, folds.csv and holdout files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from digits import config as config_lib
from digits import folds as folds_lib
from digits import paths
from digits.submission import load_holdout_probs

# What each holdout comparison reads from every fold folder.
HOLDOUT_KINDS = {"fold ensemble": "holdout_probs.npy", "with TTA": "holdout_tta_probs.npy"}
# A split of the disagreeing rows this unlikely under "equally good" counts as a difference.
SIGNIFICANCE = 0.05


class CompareError(ValueError):
    """The runs cannot be compared (unfinished, other data, damaged files); the message says what to do."""


@dataclass(frozen=True)
class Paired:
    """Two runs' right/wrong on the same rows."""

    what: str
    rows: int
    errors_a: int
    errors_b: int
    only_a: int  # rows wrong in run a and right in run b
    only_b: int  # rows wrong in run b and right in run a

    @property
    def p_value(self) -> float:
        return mcnemar_p(self.only_a, self.only_b)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the chance that n = only_a + only_b fair coin flips split at least
    this unevenly. 1.0 when the runs never disagree."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be non-negative, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(what: str, labels: np.ndarray, predictions_a: np.ndarray, predictions_b: np.ndarray) -> Paired:
    wrong_a = predictions_a != labels
    wrong_b = predictions_b != labels
    return Paired(
        what,
        int(len(labels)),
        int(wrong_a.sum()),
        int(wrong_b.sum()),
        int((wrong_a & ~wrong_b).sum()),
        int((wrong_b & ~wrong_a).sum()),
    )


@dataclass(frozen=True)
class Run:
    """What a finished run predicted: OOF rows (sorted by row id) and its holdout rows and predictions."""

    run_dir: Path
    config: config_lib.Config
    oof: pd.DataFrame  # row_id, label, prediction
    holdout_rows: np.ndarray
    holdout_labels: np.ndarray
    holdout_predictions: dict[str, np.ndarray]  # "fold ensemble" / "fold ensemble with TTA" -> predicted digits

    @property
    def name(self) -> str:
        return self.run_dir.name


def load(run_dir: Path) -> Run:
    """A finished run's predictions; a CompareError says what is missing and how to get it."""
    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / "config.json").read_text())["config"]
        config = config_lib.from_dict(saved)
    except (OSError, ValueError, KeyError) as error:
        raise CompareError(f"{run_dir / 'config.json'} cannot be read ({error}); is {run_dir} a run folder?") from error
    if not (run_dir / "report.json").is_file():
        finished = sorted(p.name for p in run_dir.glob("fold_*") if (p / "report.json").is_file())
        raise CompareError(
            f"{run_dir} is not finished (finished: {', '.join(finished) or 'no fold'}); finish it with "
            f"`make train RUN={run_dir.name}` first: only whole runs are compared."
        )
    try:
        oof = pd.read_csv(run_dir / "oof.csv", usecols=["row_id", "label", "prediction"]).sort_values("row_id")
        frame = pd.read_csv(run_dir / "folds.csv", usecols=["row_id", "label", "fold"])
    except (OSError, ValueError) as error:
        raise CompareError(
            f"{run_dir}: {error}. The run's files are damaged; retrain it (a new RUN=<name>)."
        ) from error
    held_out = (frame["fold"] == folds_lib.HOLDOUT_FOLD).to_numpy()
    holdout_rows = frame.loc[held_out, "row_id"].to_numpy()
    holdout_labels = frame.loc[held_out, "label"].to_numpy()
    predictions: dict[str, np.ndarray] = {}
    if held_out.any():
        for what, file_name in HOLDOUT_KINDS.items():
            probs = _holdout_probs(run_dir, config.folds, file_name, len(holdout_rows))
            if probs is not None:
                predictions[what] = probs.argmax(axis=1)
    return Run(run_dir, config, oof.reset_index(drop=True), holdout_rows, holdout_labels, predictions)


def _holdout_probs(run_dir: Path, fold_count: int, file_name: str, rows: int) -> np.ndarray | None:
    """The mean of the fold models' holdout probabilities, or None if some fold lacks that file (TTA is
    measured only by newer runs or `make submission TTA=1`)."""
    paths_ = [run_dir / f"fold_{k}" / file_name for k in range(fold_count)]
    if not all(path.is_file() for path in paths_):
        return None
    fold_probs = [load_holdout_probs(path, run_dir, rows) for path in paths_]
    return np.mean(fold_probs, axis=0)


def setting_changes(a: config_lib.Config, b: config_lib.Config) -> list[str]:
    """`name a -> b` for every setting that defines a run (and the preset) where the two differ."""
    fields = ["preset", *a.identity()]
    return [
        f"{name} {getattr(a, name)} -> {getattr(b, name)}" for name in fields if getattr(a, name) != getattr(b, name)
    ]


def compare_pair(a: Run, b: Run) -> dict:
    """The paired comparisons of run b against run a, and notes on what could not be compared."""
    common = a.oof.merge(b.oof, on="row_id", suffixes=("_a", "_b"))
    if (common["label_a"] != common["label_b"]).any():
        row = int(common.loc[common["label_a"] != common["label_b"], "row_id"].iloc[0])
        raise CompareError(
            f"{a.name} and {b.name} disagree on the label of train row {row}: they were trained on different "
            f"train.csv files. Compare runs trained on the same data."
        )
    comparisons: list[Paired] = []
    notes: list[str] = []
    if len(common):
        labels = common["label_a"].to_numpy()
        what = (
            "OOF" + ("" if len(common) == len(a.oof) == len(b.oof) else ", rows both runs have") + ", one model per row"
        )
        comparisons.append(paired(what, labels, common["prediction_a"].to_numpy(), common["prediction_b"].to_numpy()))
    else:
        notes.append("no train row is out-of-fold in both runs")
    if len(a.holdout_rows) and np.array_equal(a.holdout_rows, b.holdout_rows):
        if not np.array_equal(a.holdout_labels, b.holdout_labels):
            raise CompareError(
                f"{a.name} and {b.name} hold out the same rows with different labels: they were trained on "
                f"different train.csv files. Compare runs trained on the same data."
            )
        lacking = {what: [run.name for run in (a, b) if what not in run.holdout_predictions] for what in HOLDOUT_KINDS}
        if lacking["fold ensemble"]:
            names = lacking["fold ensemble"]
            notes.append(
                f"holdout not compared: {' and '.join(names)} {'lacks' if len(names) == 1 else 'lack'} a fold's "
                f"holdout_probs.npy (trained before holdout predictions were saved); retrain it to compare on "
                f"the holdout"
            )
        else:
            for what in HOLDOUT_KINDS:
                if lacking[what]:  # only TTA can be missing here
                    notes.append(
                        f"holdout with TTA not compared: not measured for {', '.join(lacking[what])} "
                        f"(`make submission RUN=<run> TTA=1` measures it)"
                    )
                else:
                    comparisons.append(
                        paired(
                            f"holdout, {what}",
                            a.holdout_labels,
                            a.holdout_predictions[what],
                            b.holdout_predictions[what],
                        )
                    )
    elif len(a.holdout_rows) or len(b.holdout_rows):
        notes.append(
            f"holdout not compared: the runs hold out different rows (HOLDOUT {a.config.holdout} and "
            f"{b.config.holdout}, SEED {a.config.seed} and {b.config.seed}); train both with the same HOLDOUT and SEED"
        )
    return {
        "baseline": a.name,
        "run": b.name,
        "changes": setting_changes(a.config, b.config),
        "comparisons": comparisons,
        "notes": notes,
    }


def verdict(comparison: Paired, name_a: str, name_b: str) -> str:
    p = comparison.p_value
    if comparison.only_a == comparison.only_b or p >= SIGNIFICANCE:
        return f"p = {p:.2g}: within noise"
    fewer = name_b if comparison.only_a > comparison.only_b else name_a
    return f"p = {p:.2g}: {fewer} has fewer errors here"


def format_pair(result: dict) -> str:
    a, b = result["baseline"], result["run"]
    changes = "; ".join(result["changes"]) or "none, the same recipe again"
    lines = [f"{b} against {a} (settings that differ: {changes})"]
    for comparison in result["comparisons"]:
        difference = comparison.errors_b - comparison.errors_a
        lines.append(
            f"  {comparison.what} ({comparison.rows:,} rows): {comparison.errors_b} errors against "
            f"{comparison.errors_a} ({difference:+d}); accuracy {1 - comparison.errors_b / comparison.rows:.5f} "
            f"against {1 - comparison.errors_a / comparison.rows:.5f}"
        )
        lines.append(
            f"    wrong only in {b}: {comparison.only_b}, only in {a}: {comparison.only_a}; {verdict(comparison, a, b)}"
        )
    lines.extend(f"  {note}" for note in result["notes"])
    return "\n".join(lines)


def compare_runs(run_dirs: Sequence[Path], log: Callable[[str], None] = print) -> list[dict]:
    """Compare every run after the first with the first; prints one block per run and returns the results."""
    if len(run_dirs) < 2:
        raise CompareError("a comparison needs at least two runs: RUNS=a,b (each later run is compared with a)")
    runs = [load(run_dir) for run_dir in run_dirs]
    results = [compare_pair(runs[0], run) for run in runs[1:]]
    for result in results:
        log(format_pair(result))
    log(
        f"p: the chance of a split of the disagreeing rows at least this uneven if both runs were equally good "
        f"(McNemar's exact test); below {SIGNIFICANCE} counts as a difference. Comparing many recipes on one "
        f"holdout makes some p small by luck: confirm a winner with another SEED."
    )
    return results


def _cmd_compare(args) -> int:
    from digits.train import resolve_run_dir

    names = [name.strip() for name in (args.runs or "").split(",") if name.strip()]
    compare_runs([resolve_run_dir(name, Path(args.runs_dir)) for name in names])
    return 0


def register_commands(commands) -> None:
    parser = commands.add_parser("compare", help="is one run better than another? paired tests on shared rows")
    parser.add_argument("--runs", required=True, help="run names separated by commas; each is compared with the first")
    parser.add_argument("--runs-dir", default=str(paths.RUNS_DIR))
    parser.set_defaults(handler=_cmd_compare)
