"""Is one run better than another? `make compare RUNS=a,b` answers on the rows both runs predicted honestly.

Two accuracies side by side say little when they differ by a few digits: on 4,200 holdout rows one standard
error is about 4 errors at 0.996. The runs predicted the same rows, so the comparison is paired: only the
rows that one run gets right and the other wrong can tell them apart, and McNemar's exact test says how
likely a split at least that uneven would be if both runs were equally good (a fair coin for each such row).

Each run after the first is compared with the first, on
- the out-of-fold rows both runs have (every row of train.csv outside either run's holdout; one model per row);
- the holdout, when both runs held out the same rows: the fold ensemble, with TTA when both measured it, and the
  ensemble of the folds' last-epoch models when both saved their predictions (`holdout_last_epoch_probs.npy`):
  the best-epoch checkpoint is chosen on the fold's own validation rows, the last epoch is chosen by nothing.
Nothing here trains or predicts: it reads the runs' oof.csv, folds.csv and holdout files. It lists the rows
that only one run gets wrong when they are few; with `OUT=<folder>` it also writes every figure to
`compare.json` and draws those digits, one picture per pair of runs, so a user can see what a change fixed and
what it broke.

One holdout is small (a recipe that is truly better by 2 errors in 4,200 rarely shows it), so a recipe can be
trained on several seeds and the pairs pooled: `RUNS=a1+a2,b1+b2` compares b1 with a1 and b2 with a2 (each pair
sharing SEED, HOLDOUT and HOLDOUT_SEED, so the same folds and held-out rows), then adds up the rows only one run
of each pair gets wrong. Two seeds' OOF rows are nearly the same rows, and their holdouts share about a tenth: a row that one
recipe gets right and the other wrong in both pairs is one row's evidence, not two (some digits suit one recipe),
so the pooled p-value counts every row once, for the recipe that gets it right in more pairs (none on a tie).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from digits import config as config_lib
from digits import data, fileio, paths
from digits import folds as folds_lib
from digits.submission import load_holdout_probs

# What each holdout comparison reads from every fold folder.
HOLDOUT_KINDS = {
    "fold ensemble": paths.HOLDOUT_PROBS,
    "with TTA": paths.HOLDOUT_TTA_PROBS,
    "last epochs' fold ensemble": paths.HOLDOUT_LAST_EPOCH_PROBS,
}
# Why a run can lack a holdout kind other than the fold ensemble, and what to do about it.
HOLDOUT_KIND_MISSING = {
    "with TTA": "not measured for {runs} (`make submission RUN=<run> TTA=1` measures it)",
    "last epochs' fold ensemble": (
        "{runs} {lacks} a fold's holdout_last_epoch_probs.npy (trained by an older version); retrain with the same "
        "settings under a new RUN=<name> to compare the last epochs"
    ),
}
# A split of the disagreeing rows this unlikely under "equally good" counts as a difference.
SIGNIFICANCE = 0.05
# The terminal lists a comparison's disputed rows when there are at most this many; OUT=<folder> writes every one
# to compare.json and draws up to PICTURE_LIMIT per run and comparison.
LIST_AT_MOST = 12
PICTURE_LIMIT = 45


class CompareError(ValueError):
    """The runs cannot be compared (unfinished, other data, damaged files); the message says what to do."""


@dataclass(frozen=True, order=True)
class Disputed:
    """A row that exactly one of the two runs gets wrong."""

    row_id: int  # 0-based data row of train.csv
    label: int
    prediction_a: int
    prediction_b: int


@dataclass(frozen=True)
class Paired:
    """Two runs' right/wrong on the same rows."""

    what: str
    rows: int
    errors_a: int
    errors_b: int
    only_a: int  # rows wrong in run a and right in run b
    only_b: int  # rows wrong in run b and right in run a
    disputed: tuple[Disputed, ...] = ()  # those only_a + only_b rows, by row id
    kind: str = ""  # what is pooled with what across pairs of runs ("OOF", "holdout, fold ensemble", ...)
    row_ids: np.ndarray | None = field(default=None, repr=False, compare=False)  # the rows compared
    # pooled over pairs: rows (with repeats), distinct rows, and only_a / only_b with every row counted once
    distinct_rows: int | None = None
    once: tuple[int, int] | None = None

    @property
    def p_value(self) -> float:
        """McNemar's exact p; when pooled, on the counts with every disputed row counted once."""
        return mcnemar_p(*(self.once or (self.only_a, self.only_b)))


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


def paired(
    what: str,
    labels: np.ndarray,
    predictions_a: np.ndarray,
    predictions_b: np.ndarray,
    row_ids: np.ndarray | None = None,
    kind: str | None = None,
) -> Paired:
    """Compare two runs' predictions of the same rows (`row_ids`, by default 0..n-1); `kind` (by default `what`)
    names the comparison for pooling."""
    row_ids = np.arange(len(labels)) if row_ids is None else np.asarray(row_ids)
    wrong_a = predictions_a != labels
    wrong_b = predictions_b != labels
    disputed = sorted(
        Disputed(int(row_ids[i]), int(labels[i]), int(predictions_a[i]), int(predictions_b[i]))
        for i in np.flatnonzero(wrong_a != wrong_b)
    )
    return Paired(
        what,
        int(len(labels)),
        int(wrong_a.sum()),
        int(wrong_b.sum()),
        int((wrong_a & ~wrong_b).sum()),
        int((wrong_b & ~wrong_a).sum()),
        tuple(disputed),
        what if kind is None else kind,
        row_ids,
    )


@dataclass(frozen=True)
class Run:
    """What a finished run predicted: OOF rows (sorted by row id) and its holdout rows and predictions."""

    run_dir: Path
    config: config_lib.Config
    data_dir: Path | None  # where its train.csv was (config.json), for pictures of its rows
    oof: pd.DataFrame  # row_id, label, prediction
    holdout_rows: np.ndarray
    holdout_labels: np.ndarray
    holdout_predictions: dict[str, np.ndarray]  # a key of HOLDOUT_KINDS -> the ensemble's predicted digits

    @property
    def name(self) -> str:
        return self.run_dir.name


def load(run_dir: Path) -> Run:
    """A finished run's predictions; a CompareError says what is missing and how to get it."""
    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        config = config_lib.from_dict(saved["config"])
        data_dir = Path(saved["data_dir"]) if saved.get("data_dir") else None
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
    return Run(run_dir, config, data_dir, oof.reset_index(drop=True), holdout_rows, holdout_labels, predictions)


def _holdout_probs(run_dir: Path, fold_count: int, file_name: str, rows: int) -> np.ndarray | None:
    """The mean of the fold models' holdout probabilities, or None if some fold lacks that file (TTA is
    measured only by newer runs or `make submission TTA=1`; the last epochs' predictions are saved by newer
    runs only)."""
    paths_ = [run_dir / f"fold_{k}" / file_name for k in range(fold_count)]
    if not all(path.is_file() for path in paths_):
        return None
    fold_probs = [load_holdout_probs(path, run_dir, rows) for path in paths_]
    return np.mean(fold_probs, axis=0)


def setting_changes(a: config_lib.Config, b: config_lib.Config) -> list[str]:
    """`name a -> b` for every setting that defines a run (and the preset) where the two differ."""
    before, after = {"preset": a.preset, **a.identity()}, {"preset": b.preset, **b.identity()}
    return [f"{name} {before[name]} -> {after[name]}" for name in before if before[name] != after[name]]


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
        comparisons.append(
            paired(
                what,
                labels,
                common["prediction_a"].to_numpy(),
                common["prediction_b"].to_numpy(),
                common["row_id"].to_numpy(),
                kind="OOF",
            )
        )
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
                if lacking[what]:  # TTA or the last epochs here
                    names = lacking[what]
                    reason = HOLDOUT_KIND_MISSING[what].format(
                        runs=" and ".join(names), lacks="lacks" if len(names) == 1 else "lack"
                    )
                    notes.append(f"holdout, {what} not compared: {reason}")
                else:
                    comparisons.append(
                        paired(
                            f"holdout, {what}",
                            a.holdout_labels,
                            a.holdout_predictions[what],
                            b.holdout_predictions[what],
                            a.holdout_rows,
                        )
                    )  # kind = what: "holdout, fold ensemble", "holdout, with TTA", ...
    elif len(a.holdout_rows) or len(b.holdout_rows):
        notes.append(
            f"holdout not compared: the runs hold out different rows (HOLDOUT {a.config.holdout} and "
            f"{b.config.holdout}, holdout seed {a.config.holdout_rows_seed()} and {b.config.holdout_rows_seed()}); "
            f"train both with the same HOLDOUT and HOLDOUT_SEED (by default SEED)"
        )
    return {
        "baseline": a.name,
        "run": b.name,
        "baseline_dir": str(a.run_dir),
        "run_dir": str(b.run_dir),
        "changes": setting_changes(a.config, b.config),
        "comparisons": comparisons,
        "notes": notes,
    }


def pool(pair_results: Sequence[dict]) -> dict:
    """One recipe against another over several pairs of runs (the results of `compare_pair`): each kind of
    comparison that every pair made, with the pairs' counts added up, and the rows disputed in several pairs
    also counted once each (`Paired.once`, which the p-value uses)."""
    kinds: dict[str, list[Paired]] = {}
    for result in pair_results:
        for comparison in result["comparisons"]:
            kinds.setdefault(comparison.kind, []).append(comparison)
    comparisons: list[Paired] = []
    notes: list[str] = []
    for kind, items in kinds.items():
        if len(items) < len(pair_results):
            lacking = [
                f"{result['run']} against {result['baseline']}"
                for result in pair_results
                if kind not in {comparison.kind for comparison in result["comparisons"]}
            ]
            notes.append(f"{kind} not pooled: {', '.join(lacking)} made no such comparison (see its block above)")
            continue
        # per disputed row: in how many pairs the baseline alone got it wrong, minus those the other run alone did
        score = Counter()
        appearances = Counter()
        for comparison in items:
            for row in comparison.disputed:
                score[row.row_id] += 1 if row.prediction_a != row.label else -1
                appearances[row.row_id] += 1
        once = (sum(1 for v in score.values() if v > 0), sum(1 for v in score.values() if v < 0))
        comparisons.append(
            Paired(
                f"{kind}, {len(items)} pairs pooled",
                sum(c.rows for c in items),
                sum(c.errors_a for c in items),
                sum(c.errors_b for c in items),
                sum(c.only_a for c in items),
                sum(c.only_b for c in items),
                kind=kind,
                distinct_rows=len(np.unique(np.concatenate([c.row_ids for c in items]))),
                once=once,
            )
        )
        repeated = sum(1 for times in appearances.values() if times > 1)
        if repeated:
            notes.append(
                f"{kind}: {repeated} of the {len(appearances)} disputed rows are disputed in more than one pair; "
                f"p counts each of them once, for the recipe that gets it right in more pairs (none on a tie)"
            )
    changes = {" and ".join(result["changes"]) or "nothing" for result in pair_results}
    if len(changes) > 1:
        notes.append(
            "the pairs do not change the same settings: "
            + "; ".join(
                f"{r['run']} against {r['baseline']}: {', '.join(r['changes']) or 'nothing'}" for r in pair_results
            )
        )
    return {
        "baseline": "+".join(result["baseline"] for result in pair_results),
        "run": "+".join(result["run"] for result in pair_results),
        "pairs": [[result["baseline"], result["run"]] for result in pair_results],
        "changes": list(dict.fromkeys(change for result in pair_results for change in result["changes"])),
        "comparisons": comparisons,
        "notes": notes,
    }


def verdict(comparison: Paired, name_a: str, name_b: str) -> str:
    p = comparison.p_value
    only_a, only_b = comparison.once or (comparison.only_a, comparison.only_b)
    if only_a == only_b or p >= SIGNIFICANCE:
        return f"p = {p:.2g}: within noise"
    fewer = name_b if only_a > only_b else name_a
    return f"p = {p:.2g}: {fewer} has fewer errors here"


def format_pair(result: dict, drawn: bool = False) -> str:
    """The terminal block of one pair; `drawn` says the disputed rows were drawn (so a long list is not printed)."""
    a, b = result["baseline"], result["run"]
    changes = "; ".join(result["changes"]) or "none, the same recipe again"
    pooled = f", {len(result['pairs'])} pairs of runs pooled" if "pairs" in result else ""
    lines = [f"{b} against {a}{pooled} (settings that differ: {changes})"]
    for comparison in result["comparisons"]:
        difference = comparison.errors_b - comparison.errors_a
        rows = f"{comparison.rows:,} rows"
        if comparison.distinct_rows is not None:
            rows += f" over the pairs, {comparison.distinct_rows:,} distinct"
        lines.append(
            f"  {comparison.what} ({rows}): {comparison.errors_b} errors against "
            f"{comparison.errors_a} ({difference:+d}); accuracy {1 - comparison.errors_b / comparison.rows:.5f} "
            f"against {1 - comparison.errors_a / comparison.rows:.5f}"
        )
        once = ""
        if comparison.once is not None and comparison.once != (comparison.only_a, comparison.only_b):
            once = f" (each row once: {comparison.once[1]} and {comparison.once[0]})"
        lines.append(
            f"    wrong only in {b}: {comparison.only_b}, only in {a}: {comparison.only_a}{once}; "
            f"{verdict(comparison, a, b)}"
        )
        if len(comparison.disputed) <= LIST_AT_MOST:
            lines.extend(
                f"      train.csv row {row.row_id}, labelled {row.label}: {a} says {row.prediction_a}, "
                f"{b} says {row.prediction_b}"
                for row in comparison.disputed
            )
        elif not drawn:
            lines.append(
                f"      ({len(comparison.disputed)} rows: OUT=<folder> writes them all to compare.json and draws up to "
                f"{PICTURE_LIMIT} per run)"
            )
    lines.extend(f"  {note}" for note in result["notes"])
    return "\n".join(lines)


def to_json(results: Sequence[dict]) -> list[dict]:
    """The results as plain JSON values: every figure printed, and every disputed row (a pooled result has
    `pairs` and no disputed rows of its own: its pairs list them)."""
    return [
        {
            "baseline": result["baseline"],
            "run": result["run"],
            **{key: result[key] for key in ("baseline_dir", "run_dir", "pairs") if key in result},
            "changes": result["changes"],
            "notes": result["notes"],
            "comparisons": [
                {
                    "what": c.what,
                    "rows": c.rows,
                    "baseline_errors": c.errors_a,
                    "run_errors": c.errors_b,
                    "wrong_only_in_baseline": c.only_a,
                    "wrong_only_in_run": c.only_b,
                    **(
                        {
                            "distinct_rows": c.distinct_rows,
                            "each_row_once": {"wrong_only_in_baseline": c.once[0], "wrong_only_in_run": c.once[1]},
                        }
                        if c.once is not None
                        else {}
                    ),
                    "p_value": c.p_value,
                    "verdict": verdict(c, result["baseline"], result["run"]),
                    "disputed": [
                        {
                            "row_id": row.row_id,
                            "label": row.label,
                            "baseline_predicts": row.prediction_a,
                            "run_predicts": row.prediction_b,
                        }
                        for row in c.disputed
                    ],
                }
                for c in result["comparisons"]
            ],
        }
        for result in results
    ]


def disputed_images(runs: Sequence[Run], results: Sequence[dict]) -> dict[int, np.ndarray]:
    """The pixels of every disputed row (row id -> (28, 28, 1) image), from the train.csv the runs were trained
    on: the first of the runs' data folders (config.json) and data/raw/ whose labels agree with every label the
    first run saw (OOF and holdout rows)."""
    wanted = sorted({row.row_id for result in results for c in result["comparisons"] for row in c.disputed})
    if not wanted:
        return {}
    first = runs[0]
    known_rows = np.concatenate([first.oof["row_id"].to_numpy(), first.holdout_rows]).astype(np.int64)
    known_labels = np.concatenate([first.oof["label"].to_numpy(), first.holdout_labels])
    folders = list(dict.fromkeys([*(run.data_dir for run in runs if run.data_dir is not None), paths.RAW_DIR]))
    tried = []
    for folder in folders:
        if not (folder / "train.csv").is_file():
            tried.append(f"{folder} has no train.csv")
            continue
        train = data.load_train(folder / "train.csv")
        if known_rows.max() < len(train.labels) and np.array_equal(train.labels[known_rows], known_labels):
            return dict(zip(wanted, train.images[wanted], strict=True))
        tried.append(f"{folder / 'train.csv'} holds other labels than {first.name} was trained on")
    raise CompareError(
        f"the pictures need the train.csv that {first.name} was trained on: {'; '.join(tried)}. Put that train.csv "
        f"back (`make download` fetches the competition's), or drop OUT to compare without pictures."
    )


def picture_sections(result: dict) -> list[tuple[str, list[tuple[Disputed, int]]]]:
    """What the picture of a pair shows: per comparison, the rows only the baseline gets wrong, then those only
    the other run gets wrong, each as (section title, [(row, the wrong prediction)]), at most PICTURE_LIMIT."""
    sections = []
    for comparison in result["comparisons"]:
        for loser, wrong in (
            (result["baseline"], lambda row: row.prediction_a),
            (result["run"], lambda row: row.prediction_b),
        ):
            rows = [row for row in comparison.disputed if wrong(row) != row.label]
            title = f"{comparison.what}: wrong only in {loser} ({len(rows)})"
            if len(rows) > PICTURE_LIMIT:
                title += f", the first {PICTURE_LIMIT} by row"
            sections.append((title, [(row, wrong(row)) for row in rows[:PICTURE_LIMIT]]))
    return sections


def plot_disputed(result: dict, images: dict[int, np.ndarray], path: Path) -> None:
    """One picture per pair of runs: the digits of `picture_sections` (true -> predicted, train.csv row)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from digits.report import draw_digits, save_figure

    a, b = result["baseline"], result["run"]
    sections = picture_sections(result)
    columns = 15
    grid_rows = [max(1, -(-len(digits) // columns)) for _, digits in sections]
    heights = [rows + 0.45 for rows in grid_rows]  # a digit row is about an inch, plus the section's title
    height = max(sum(heights), 1.0)
    figure = plt.figure(figsize=(columns * 0.8, height))  # square pixels: 0.8 inch per 32-pixel cell, 1 per 40
    subfigures = np.atleast_1d(figure.subfigures(len(sections), 1, height_ratios=heights))
    for subfigure, rows, (title, digits) in zip(subfigures, grid_rows, sections, strict=True):
        axis = subfigure.add_axes((0, 0, 1, rows / (rows + 0.45)))
        draw_digits(
            axis,
            np.array([images[row.row_id] for row, _ in digits]).reshape(-1, 28, 28),
            [f"{row.label}→{prediction}\n{row.row_id}" for row, prediction in digits],
            columns,
            rows,
            empty="none",
        )
        subfigure.suptitle(title, fontsize=9, x=0.01, ha="left")
    figure.suptitle(
        f"{b} against {a}: the rows only one run gets wrong (true→predicted, train.csv row)",
        fontsize=10,
        y=1 + 0.4 / height,  # above the first section's title
    )
    save_figure(figure, path)


def picture_name(result: dict) -> str:
    return f"{result['run']}-vs-{result['baseline']}.png"


def write_outputs(runs: Sequence[Run], results: Sequence[dict], out_dir: Path, log: Callable[[str], None]) -> None:
    """compare.json (every figure and disputed row), then one picture per pair of runs, in `out_dir` (`runs`:
    every run compared, the first baseline first)."""
    out_dir = Path(out_dir)
    fileio.write_json(out_dir / "compare.json", to_json(results))
    log(f"wrote {out_dir / 'compare.json'}")
    pairs = [result for result in results if "pairs" not in result]  # pooled results have no rows of their own
    images = disputed_images(runs, pairs)
    for result in pairs:
        path = out_dir / picture_name(result)
        if not result["comparisons"]:
            path.unlink(missing_ok=True)  # not one left from an earlier comparison: the notes say why there is none
            continue
        plot_disputed(result, images, path)
        log(f"wrote {path}")


def compare_runs(
    run_dirs: Sequence[Path | Sequence[Path]], log: Callable[[str], None] = print, out_dir: Path | None = None
) -> list[dict]:
    """Compare every run after the first with the first; prints one block per pair and returns the results.

    An item of `run_dirs` may be a list of runs (one recipe trained on several seeds, `RUNS=a1+a2,b1+b2`): then
    every later list must be as long as the first, its runs are compared with the first list's in order (each
    pair sharing SEED, HOLDOUT and HOLDOUT_SEED), and a pooled result (with `pairs`) follows each later list's
    pair results.
    With `out_dir`, then writes compare.json and a picture of the disputed digits per pair there."""
    groups = [[Path(item)] if isinstance(item, (str, Path)) else [Path(path) for path in item] for item in run_dirs]
    if len(groups) < 2 or not all(groups):
        raise CompareError("a comparison needs at least two runs: RUNS=a,b (each later run is compared with a)")
    spelled = ",".join("+".join(path.name for path in group) for group in groups)
    if any(len(group) != len(groups[0]) for group in groups):
        raise CompareError(
            f"RUNS={spelled}: every recipe after the first needs as many runs as the first ({len(groups[0])}), one "
            f"per seed in the same order, so that each is compared with the first recipe's run of the same seed."
        )
    pooling = len(groups[0]) > 1
    if pooling:
        counts = Counter(path.name for group in groups for path in group)
        twice = sorted(name for name, times in counts.items() if times > 1)
        if twice:
            raise CompareError(
                f"RUNS={spelled} names {', '.join(twice)} more than once: pooled pairs must be runs trained apart, "
                f"each in one recipe only. Name each run once."
            )
    loaded: dict[Path, Run] = {}
    for path in (path for group in groups for path in group):
        if path not in loaded:
            loaded[path] = load(path)
    check_same_data(list(loaded.values()))
    pairs = [list(zip(groups[0], group, strict=True)) for group in groups[1:]]  # per later recipe
    if pooling:
        for a, b in (pair for group in pairs for pair in group):
            ca, cb = loaded[a].config, loaded[b].config
            if (ca.seed, ca.holdout, ca.holdout_rows_seed()) != (cb.seed, cb.holdout, cb.holdout_rows_seed()):
                raise CompareError(
                    f"RUNS={spelled} pairs {b.name} (SEED {cb.seed}, HOLDOUT {cb.holdout}, holdout seed "
                    f"{cb.holdout_rows_seed()}) with {a.name} (SEED {ca.seed}, HOLDOUT {ca.holdout}, holdout seed "
                    f"{ca.holdout_rows_seed()}): the runs of a pooled pair must share SEED, HOLDOUT and HOLDOUT_SEED "
                    f"(the same folds and held-out rows). List each recipe's runs in the same order of seeds."
                )
    if out_dir is not None:
        pictures = Counter(picture_name({"baseline": a.name, "run": b.name}) for group in pairs for a, b in group)
        twice = sorted(name for name, times in pictures.items() if times > 1)
        if twice:
            raise CompareError(
                f"RUNS compares the same two runs more than once ({', '.join(twice)}): with OUT their pictures "
                f"would overwrite each other. Name each run once."
            )
    pair_results: list[dict] = []
    pooled: list[dict] = []
    for group in pairs:
        results = [compare_pair(loaded[a], loaded[b]) for a, b in group]
        pair_results.extend(results)
        if pooling:
            pooled.append(pool(results))
    for result in [*pair_results, *pooled]:
        log(format_pair(result, drawn=out_dir is not None))
    log(
        f"p: the chance of a split of the disagreeing rows at least this uneven if both runs (or recipes) were "
        f"equally good (McNemar's exact test); below {SIGNIFICANCE} counts as a difference. Comparing many recipes "
        f"on one holdout makes some p small by luck: confirm a winner with another SEED"
        + ("." if pooled else " (RUNS=a1+a2,b1+b2 pools two seeds' pairs).")
    )
    if out_dir is not None:
        write_outputs(list(loaded.values()), [*pair_results, *pooled], out_dir, log)
    return [*pair_results, *pooled]


def check_same_data(runs: Sequence[Run]) -> None:
    """Refuse runs that disagree on the label of a train row they both saw (OOF or holdout): they were trained
    on different train.csv files, and pooling or drawing their rows would mix the two."""
    seen: dict[int, tuple[int, str]] = {}
    for run in runs:
        rows = np.concatenate([run.oof["row_id"].to_numpy(), run.holdout_rows]).astype(np.int64)
        labels = np.concatenate([run.oof["label"].to_numpy(), run.holdout_labels]).astype(np.int64)
        for row, label in zip(rows.tolist(), labels.tolist(), strict=True):
            known = seen.setdefault(row, (label, run.name))
            if known[0] != label:
                raise CompareError(
                    f"{known[1]} and {run.name} disagree on the label of train row {row}: they were trained on "
                    f"different train.csv files. Compare runs trained on the same data."
                )


def _cmd_compare(args) -> int:
    from digits.train import resolve_run_dir

    runs_dir = Path(args.runs_dir)
    groups = []
    for item in (args.runs or "").split(","):
        names = [name.strip() for name in item.split("+") if name.strip()]
        if names:
            groups.append([resolve_run_dir(name, runs_dir) for name in names])
    out_dir = Path(args.out) if args.out else None
    compare_runs(groups, out_dir=out_dir)
    return 0


def register_commands(commands) -> None:
    parser = commands.add_parser("compare", help="is one run better than another? paired tests on shared rows")
    parser.add_argument(
        "--runs",
        required=True,
        help="run names separated by commas; each is compared with the first. a1+a2,b1+b2: one recipe per comma, "
        "trained on several seeds; b1 is compared with a1, b2 with a2, and the pairs are pooled",
    )
    parser.add_argument("--runs-dir", default=str(paths.RUNS_DIR))
    parser.add_argument(
        "--out", help="folder for compare.json and a picture of the rows only one run gets wrong (per pair of runs)"
    )
    parser.set_defaults(handler=_cmd_compare)
