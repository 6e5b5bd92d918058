"""`compare`: paired comparisons of runs on the rows they share.

The statistics are checked against hand-computed values and scipy's binomial test; the command line runs on
tiny runs trained on the bundled sample (once for the module) and its figures are checked against the runs'
own files and reports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digits import config as config_lib
from digits.compare import Paired, mcnemar_p, paired, setting_changes, verdict
from helpers import assert_ok, assert_user_error, run_digits, tiny_train_args

# --- the statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (0, 0, 1.0),  # never disagree: nothing tells them apart
        (3, 3, 1.0),
        (0, 6, 2 / 2**6),  # six coins, all heads: 1/64 each way
        (5, 1, 2 * (1 + 6) / 2**6),
        (0, 1, 1.0),
        (7, 2, 2 * (1 + 9 + 36) / 2**9),
    ],
)
def test_mcnemar_p_matches_hand_computed_values(only_a, only_b, expected):
    assert mcnemar_p(only_a, only_b) == pytest.approx(expected)
    assert mcnemar_p(only_b, only_a) == pytest.approx(expected)  # symmetric


def test_mcnemar_p_matches_scipys_exact_binomial_test():
    from scipy.stats import binomtest

    for only_a in range(0, 40, 3):
        for only_b in range(0, 70, 7):
            if only_a + only_b:
                expected = binomtest(only_a, only_a + only_b, 0.5).pvalue
                assert mcnemar_p(only_a, only_b) == pytest.approx(expected, rel=1e-9), (only_a, only_b)


def test_mcnemar_p_refuses_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_p(-1, 3)


def test_paired_counts_the_rows_each_run_alone_gets_wrong():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    a = np.array([0, 1, 2, 3, 9, 9, 9, 7])  # wrong on rows 4, 5, 6
    b = np.array([0, 9, 2, 3, 4, 9, 6, 7])  # wrong on rows 1, 5
    result = paired("test", labels, a, b)
    assert (result.rows, result.errors_a, result.errors_b, result.only_a, result.only_b) == (8, 3, 2, 2, 1)


def test_verdict_names_the_better_run_only_when_the_split_is_unlikely():
    assert verdict(Paired("x", 4200, 18, 12, 6, 0), "a", "b") == "p = 0.031: b has fewer errors here"
    assert verdict(Paired("x", 4200, 12, 18, 0, 6), "a", "b") == "p = 0.031: a has fewer errors here"
    assert verdict(Paired("x", 4200, 18, 14, 5, 1), "a", "b") == "p = 0.22: within noise"
    assert verdict(Paired("x", 4200, 18, 18, 4, 4), "a", "b") == "p = 1: within noise"


def test_setting_changes_lists_what_defines_the_runs():
    a = config_lib.resolve("default", {"holdout": "0.1"})
    b = config_lib.resolve("max", {"holdout": "0.1", "dropout_scale": "0.5", "only": "0,1"})
    assert setting_changes(a, b) == ["preset default -> max", "epochs 24 -> 40", "dropout_scale 0.0 -> 0.5"]
    assert setting_changes(a, a) == []


# --- the command line on tiny runs -------------------------------------------------------------------


def train(sample_dir: Path, runs_dir: Path, run: str, *args: str) -> Path:
    result = run_digits(
        *tiny_train_args(sample_dir, runs_dir, "--folds", "2", "--epochs", "1", "--run", run, *args), timeout=600
    )
    assert_ok(result)
    return runs_dir / run


@pytest.fixture(scope="module")
def runs(sample_dir, tmp_path_factory) -> Path:
    """Runs `a` (tiny, 2 folds, 1 epoch, a fifth of the sample held out), `b` (the same folds and holdout, 2
    epochs) and `c` (another seed, so other folds and another holdout)."""
    folder = tmp_path_factory.mktemp("runs")
    train(sample_dir, folder, "a", "--holdout", "0.2")
    train(sample_dir, folder, "b", "--holdout", "0.2", "--epochs", "2")
    train(sample_dir, folder, "c", "--holdout", "0.2", "--seed", "5")
    return folder


def compare(runs_dir: Path, names: str):
    return run_digits("compare", "--runs", names, "--runs-dir", runs_dir)


def wrong_rows(run_dir: Path) -> set[int]:
    oof = pd.read_csv(run_dir / "oof.csv")
    return set(oof.loc[oof["prediction"] != oof["label"], "row_id"])


def block(stdout: str, run: str) -> str:
    """The lines that compare `run` with the first run."""
    match = re.search(rf"^{run} against .*?(?=^\S|\Z)", stdout, flags=re.M | re.S)
    assert match, stdout
    return match[0]


@pytest.mark.slow
def test_compare_pairs_the_oof_rows_and_the_holdout_of_runs_with_the_same_folds(runs):
    result = compare(runs, "a,b")

    assert_ok(result)
    text = block(result.stdout, "b")
    assert text.startswith("b against a (settings that differ: epochs 1 -> 2)")
    reports = {run: json.loads((runs / run / "report.json").read_text()) for run in ("a", "b")}

    rows = reports["a"]["oof_rows"]
    errors = {run: reports[run]["oof_errors"] for run in ("a", "b")}
    only_a = len(wrong_rows(runs / "a") - wrong_rows(runs / "b"))
    only_b = len(wrong_rows(runs / "b") - wrong_rows(runs / "a"))
    assert f"  OOF, one model per row ({rows:,} rows): {errors['b']} errors against {errors['a']}" in text
    assert f"    wrong only in b: {only_b}, only in a: {only_a}; p = {mcnemar_p(only_a, only_b):.2g}" in text
    assert errors["b"] - errors["a"] == only_b - only_a  # the rows both get wrong cancel

    for what, key in (("fold ensemble", "ensemble_accuracy"), ("with TTA", "tta_ensemble_accuracy")):
        holdout = {run: reports[run]["holdout"] for run in ("a", "b")}
        wrong = {run: round((1 - holdout[run][key]) * holdout[run]["rows"]) for run in ("a", "b")}
        assert f"  holdout, {what} (600 rows): {wrong['b']} errors against {wrong['a']} " in text
    assert "not compared" not in text


@pytest.mark.slow
def test_compare_uses_only_the_oof_rows_both_runs_have_and_skips_another_holdout(runs):
    result = compare(runs, "a,c")

    assert_ok(result)
    text = block(result.stdout, "c")
    assert "settings that differ: seed 42 -> 5" in text
    rows = {run: set(pd.read_csv(runs / run / "oof.csv")["row_id"]) for run in ("a", "c")}
    shared = len(rows["a"] & rows["c"])
    assert 0 < shared < len(rows["a"])  # the two holdouts overlap by chance only
    assert f"  OOF, rows both runs have, one model per row ({shared:,} rows): " in text
    assert "holdout not compared: the runs hold out different rows (HOLDOUT 0.2 and 0.2, SEED 42 and 5)" in text
    assert "holdout, fold ensemble" not in text


@pytest.mark.slow
def test_compare_puts_every_later_run_against_the_first(runs):
    result = compare(runs, "a,b,c")

    assert_ok(result)
    assert [line.split(" against ")[0] for line in result.stdout.splitlines() if " against a (" in line] == ["b", "c"]
    assert "McNemar's exact test" in result.stdout


@pytest.mark.slow
def test_compare_refuses_an_unfinished_run_and_says_how_to_finish_it(runs, tmp_path):
    import shutil

    # What a run interrupted during its last fold holds: fold 0 finished, no fold 1 report, no run report.
    shutil.copytree(runs / "a", tmp_path / "a")
    shutil.copytree(runs / "b", tmp_path / "half")
    (tmp_path / "half" / "fold_1" / "report.json").unlink()
    (tmp_path / "half" / "report.json").unlink()

    stderr = assert_user_error(compare(tmp_path, "a,half"))
    assert "half is not finished (finished: fold_0)" in stderr
    assert "make train RUN=half" in stderr


@pytest.mark.slow
def test_compare_needs_two_known_runs(runs):
    assert "at least two runs: RUNS=a,b" in assert_user_error(compare(runs, "a"))
    assert "no run 'nope'" in assert_user_error(compare(runs, "a,nope"))


@pytest.mark.slow
def test_compare_refuses_runs_trained_on_different_data(runs, tmp_path):
    import shutil

    other = tmp_path / "runs"
    for run in ("a", "b"):
        shutil.copytree(runs / run, other / run)
    oof = pd.read_csv(other / "b" / "oof.csv")
    oof.loc[0, "label"] = (oof.loc[0, "label"] + 1) % 10
    oof.to_csv(other / "b" / "oof.csv", index=False)

    stderr = assert_user_error(compare(other, "a,b"))
    assert f"disagree on the label of train row {oof.loc[0, 'row_id']}" in stderr
    assert "different train.csv files" in stderr


@pytest.mark.slow
def test_compare_says_which_holdout_figures_it_could_not_compare(runs, tmp_path):
    import shutil

    for run in ("a", "b", "c"):
        shutil.copytree(runs / run, tmp_path / run)
    shutil.copytree(runs / "b", tmp_path / "old")  # as if trained before holdout predictions were saved
    (tmp_path / "old" / "fold_1" / "holdout_probs.npy").unlink()
    (tmp_path / "b" / "fold_0" / "holdout_tta_probs.npy").unlink()  # TTA not measured for one fold

    result = compare(tmp_path, "a,b,old")

    assert_ok(result)
    text_b, text_old = block(result.stdout, "b"), block(result.stdout, "old")
    assert "holdout, fold ensemble (600 rows)" in text_b
    assert "holdout, with TTA" not in text_b
    assert "holdout with TTA not compared: not measured for b (`make submission RUN=<run> TTA=1` measures it)" in text_b
    assert "holdout, " not in text_old
    assert "holdout not compared: old lacks a fold's holdout_probs.npy" in text_old
    assert "  OOF, one model per row" in text_old  # the OOF rows are still compared
