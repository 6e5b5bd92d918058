"""`compare`: paired comparisons of runs on the rows they share.

The statistics are checked against hand-computed values and scipy's binomial test; the command line runs on
tiny runs trained on the bundled sample (once for the module) and its figures are checked against the runs'
own files and reports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digits import config as config_lib
from digits import data
from digits.compare import (
    HOLDOUT_KINDS,
    PICTURE_LIMIT,
    Disputed,
    Paired,
    compare_pair,
    compare_runs,
    disputed_images,
    load,
    mcnemar_p,
    paired,
    picture_sections,
    setting_changes,
    verdict,
)
from helpers import assert_ok, assert_user_error, run_digits

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


def test_paired_lists_the_disputed_rows_by_row_id():
    labels = np.array([0, 1, 2, 3, 4, 5])
    a = np.array([0, 7, 2, 9, 4, 8])  # wrong on rows 1, 3, 5
    b = np.array([0, 1, 2, 8, 6, 5])  # wrong on rows 3, 4
    result = paired("test", labels, a, b, row_ids=np.array([50, 40, 30, 20, 10, 0]))
    # row 3 (id 20) is wrong in both: not disputed
    assert result.disputed == (Disputed(0, 5, 8, 5), Disputed(10, 4, 4, 6), Disputed(40, 1, 7, 1))
    assert (result.only_a, result.only_b) == (2, 1)


def test_verdict_names_the_better_run_only_when_the_split_is_unlikely():
    assert verdict(Paired("x", 4200, 18, 12, 6, 0), "a", "b") == "p = 0.031: b has fewer errors here"
    assert verdict(Paired("x", 4200, 12, 18, 0, 6), "a", "b") == "p = 0.031: a has fewer errors here"
    assert verdict(Paired("x", 4200, 18, 14, 5, 1), "a", "b") == "p = 0.22: within noise"
    assert verdict(Paired("x", 4200, 18, 18, 4, 4), "a", "b") == "p = 1: within noise"


def test_setting_changes_lists_what_defines_the_runs():
    a = config_lib.resolve("default", {"holdout": "0.1"})
    b = config_lib.resolve("max", {"holdout": "0.1", "dropout_scale": "0.5", "only": "0,1"})
    assert setting_changes(a, b) == ["preset default -> max", "folds 5 -> 10", "dropout_scale 0.0 -> 0.5"]
    assert setting_changes(a, a) == []


# --- hand-built runs: known predictions of real sample rows ----------------------------------------------

TTA = HOLDOUT_KINDS["with TTA"]

HOLDOUT_ROWS = np.arange(150, 200)


def hand_built_run(
    runs_dir: Path,
    name: str,
    data_dir: Path,
    wrong: dict[int, int],
    last_epoch_wrong: dict[int, int] | None = None,
    **settings: str,
) -> Path:
    """A finished run on the sample's first 200 rows (rows 150-199 held out, two folds) that predicts every
    label right except `wrong` (row id -> predicted digit): OOF rows through oof.csv, holdout rows through
    each fold's holdout_probs.npy (both folds agree). With `last_epoch_wrong`, its holdout rows wrong at the
    last epoch instead (holdout_last_epoch_probs.npy)."""
    labels = data.load_train(data_dir / "train.csv").labels[:200]
    run = runs_dir / name
    run.mkdir(parents=True)
    config = config_lib.resolve("default", {"holdout": "0.25", "folds": "2", **settings})
    (run / "config.json").write_text(json.dumps({"config": config.to_dict(), "data_dir": str(data_dir)}))
    (run / "report.json").write_text("{}")
    fold = np.where(np.arange(200) < 150, np.arange(200) % 2, -1)
    pd.DataFrame({"row_id": np.arange(200), "label": labels, "fold": fold}).to_csv(run / "folds.csv", index=False)
    predictions = labels.copy()
    for row, digit in wrong.items():
        predictions[row] = digit
    oof = pd.DataFrame({"row_id": np.arange(150), "label": labels[:150], "prediction": predictions[:150]})
    oof.sample(frac=1, random_state=0).to_csv(run / "oof.csv", index=False)  # any row order
    probs = np.full((len(HOLDOUT_ROWS), 10), 0.01)
    probs[np.arange(len(HOLDOUT_ROWS)), predictions[HOLDOUT_ROWS]] = 0.91
    for k in range(2):
        (run / f"fold_{k}").mkdir()
        np.save(run / f"fold_{k}" / "holdout_probs.npy", probs)
    if last_epoch_wrong is not None:
        last = labels.copy()
        for row, digit in last_epoch_wrong.items():
            last[row] = digit
        probs = np.full((len(HOLDOUT_ROWS), 10), 0.01)
        probs[np.arange(len(HOLDOUT_ROWS)), last[HOLDOUT_ROWS]] = 0.91
        for k in range(2):
            np.save(run / f"fold_{k}" / HOLDOUT_KINDS["last epochs' fold ensemble"], probs)
    return run


def test_setting_changes_name_the_holdout_seed_only_where_it_picks_other_rows():
    plain = config_lib.resolve("default", {"holdout": "0.1"})  # seed 42, its own holdout
    bagged = config_lib.resolve("default", {"holdout": "0.1", "seed": "7", "holdout_seed": "42"})
    assert setting_changes(plain, bagged) == ["seed 42 -> 7"]  # the same holdout rows
    own = config_lib.resolve("default", {"holdout": "0.1", "seed": "7"})
    assert setting_changes(own, bagged) == ["holdout_seed 7 -> 42"]
    explicit = config_lib.resolve("default", {"holdout": "0.1", "holdout_seed": "42"})
    assert setting_changes(plain, explicit) == []


def other_digit(label: int) -> int:
    return (label + 1) % 10


@pytest.fixture(scope="module")
def sample_labels(sample_dir) -> np.ndarray:
    return data.load_train(sample_dir / "train.csv").labels


def test_compare_lists_the_few_disputed_rows_and_counts_the_many(sample_dir, sample_labels, tmp_path):
    # OOF: a alone wrong on 20 rows, b alone on 2, both on row 7. Holdout: a alone wrong on 160 and 171, b on 199.
    wrong_a = {row: other_digit(sample_labels[row]) for row in [7, *range(100, 120), 160, 171]}
    wrong_b = {row: (sample_labels[row] + 2) % 10 for row in (7, 3, 4, 199)}
    a = hand_built_run(tmp_path, "a", sample_dir, wrong_a)
    b = hand_built_run(tmp_path, "b", sample_dir, wrong_b, epochs="30")
    lines: list[str] = []

    [result] = compare_runs([a, b], log=lines.append)

    text = "\n".join(lines)
    oof, holdout = result["comparisons"]
    assert (oof.rows, oof.errors_a, oof.errors_b, oof.only_a, oof.only_b) == (150, 21, 3, 20, 2)
    assert (holdout.rows, holdout.errors_a, holdout.errors_b, holdout.only_a, holdout.only_b) == (50, 2, 1, 2, 1)
    assert "b against a (settings that differ: epochs 24 -> 30)" in text
    assert f"wrong only in b: 2, only in a: 20; p = {mcnemar_p(20, 2):.2g}: b has fewer errors here" in text
    assert f"(22 rows: OUT=<folder> writes them all to compare.json and draws up to {PICTURE_LIMIT} per run)" in text
    assert "train.csv row 100," not in text
    listed = [line.strip() for line in lines[0].splitlines() if line.strip().startswith("train.csv row")]
    assert listed == [
        f"train.csv row {row}, labelled {sample_labels[row]}: a says {wrong_a.get(row, sample_labels[row])}, "
        f"b says {wrong_b.get(row, sample_labels[row])}"
        for row in (160, 171, 199)
    ]


def test_compare_out_writes_every_figure_and_draws_the_disputed_digits(sample_dir, sample_labels, tmp_path):
    import matplotlib.image

    many = list(range(0, 2 * PICTURE_LIMIT + 10))  # more than one picture section holds
    a = hand_built_run(tmp_path / "runs", "a", sample_dir, {row: other_digit(sample_labels[row]) for row in many})
    b = hand_built_run(tmp_path / "runs", "b", sample_dir, {155: other_digit(sample_labels[155])})
    c = hand_built_run(tmp_path / "runs", "c", sample_dir, {}, seed="7")
    out = tmp_path / "out"

    result = run_digits("compare", "--runs", "a,b,c", "--runs-dir", tmp_path / "runs", "--out", out)

    assert_ok(result)
    assert f"wrote {out / 'b-vs-a.png'}" in result.stdout
    assert "OUT=<folder>" not in result.stdout  # the rows are drawn: no hint
    saved = json.loads((out / "compare.json").read_text())
    assert [(pair["baseline"], pair["run"]) for pair in saved] == [("a", "b"), ("a", "c")]
    oof, holdout = saved[0]["comparisons"]
    assert (oof["wrong_only_in_baseline"], oof["wrong_only_in_run"], oof["rows"]) == (len(many), 0, 150)
    assert oof["p_value"] == pytest.approx(mcnemar_p(len(many), 0))
    assert oof["verdict"] == f"p = {mcnemar_p(len(many), 0):.2g}: b has fewer errors here"
    assert oof["disputed"][0] == {
        "row_id": 0,
        "label": int(sample_labels[0]),
        "baseline_predicts": other_digit(sample_labels[0]),
        "run_predicts": int(sample_labels[0]),
    }
    assert [row["row_id"] for row in oof["disputed"]] == many
    assert holdout["disputed"] == [
        {
            "row_id": 155,
            "label": int(sample_labels[155]),
            "baseline_predicts": int(sample_labels[155]),
            "run_predicts": other_digit(sample_labels[155]),
        }
    ]
    assert saved[1]["changes"] == ["seed 42 -> 7", "holdout_seed 42 -> 7"]  # hand-built: the same rows held out
    [b_result, _] = compare_runs([a, b, c], log=lambda line: None)
    sections = picture_sections(b_result)
    assert [title for title, _ in sections] == [
        f"OOF, one model per row: wrong only in a ({len(many)}), the first {PICTURE_LIMIT} by row",
        "OOF, one model per row: wrong only in b (0)",
        "holdout, fold ensemble: wrong only in a (0)",
        "holdout, fold ensemble: wrong only in b (1)",
    ]
    assert [(row.row_id, shown) for row, shown in sections[0][1]] == [
        (row, other_digit(sample_labels[row])) for row in many[:PICTURE_LIMIT]
    ]
    assert [(row.row_id, shown) for row, shown in sections[3][1]] == [(155, other_digit(sample_labels[155]))]
    for picture in ("b-vs-a.png", "c-vs-a.png"):
        pixels = matplotlib.image.imread(out / picture)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600  # a grid of digits, not an empty canvas
        assert pixels[..., :3].std() > 0.1


def compare_in(root: Path, *args: str | Path):
    """`digits compare` with DIGITS_ROOT=root, so its data/raw/ is root/data/raw (the fallback for pictures)."""
    return run_digits("compare", *args, env={**os.environ, "DIGITS_ROOT": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_compare_out_needs_the_train_csv_the_runs_were_trained_on(sample_dir, sample_labels, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(sample_dir / "train.csv", data_dir / "train.csv")
    runs_dir = tmp_path / "runs"
    hand_built_run(runs_dir, "a", data_dir, {3: other_digit(sample_labels[3])})
    hand_built_run(runs_dir, "b", data_dir, {})
    root, out = tmp_path / "root", tmp_path / "out"
    args = ("--runs", "a,b", "--runs-dir", runs_dir, "--out", out)

    # another train.csv under the same name: its labels differ from the runs'
    table = pd.read_csv(data_dir / "train.csv")
    table.loc[3, "label"] = other_digit(table.loc[3, "label"])
    table.to_csv(data_dir / "train.csv", index=False)
    result = compare_in(root, *args)
    stderr = assert_user_error(result)
    assert f"{data_dir / 'train.csv'} holds other labels than a was trained on" in stderr
    assert f"{root / 'data' / 'raw'} has no train.csv" in stderr and "drop OUT" in stderr
    # the comparison itself was printed and saved before the pictures failed
    assert f"train.csv row 3, labelled {sample_labels[3]}: a says {other_digit(sample_labels[3])}" in result.stdout
    assert json.loads((out / "compare.json").read_text())[0]["comparisons"][0]["wrong_only_in_baseline"] == 1
    assert not (out / "b-vs-a.png").exists()

    (data_dir / "train.csv").unlink()
    stderr = assert_user_error(compare_in(root, *args))
    assert f"the pictures need the train.csv that a was trained on: {data_dir} has no train.csv" in stderr
    assert "make download" in stderr

    # data/raw/ of the checkout is the last place looked in, e.g. after moving the repository
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy(sample_dir / "train.csv", root / "data" / "raw" / "train.csv")
    assert_ok(compare_in(root, *args))
    assert (out / "b-vs-a.png").is_file()


def test_the_pictures_show_each_disputed_rows_own_digit(sample_dir, sample_train, tmp_path):
    wrong = {row: other_digit(sample_train.labels[row]) for row in (5, 60, 157)}
    runs = [load(hand_built_run(tmp_path, name, sample_dir, w)) for name, w in (("a", wrong), ("b", {}))]
    results = [compare_pair(runs[0], runs[1])]

    images = disputed_images(runs, results)

    assert sorted(images) == [5, 60, 157]
    for row, image in images.items():
        np.testing.assert_array_equal(image, sample_train.images[row])


def test_compare_out_refuses_a_run_named_twice(sample_dir, tmp_path):
    for name in ("a", "b"):
        hand_built_run(tmp_path / "runs", name, sample_dir, {})
    args = ("--runs", "a,b,b", "--runs-dir", tmp_path / "runs")
    stderr = assert_user_error(run_digits("compare", *args, "--out", tmp_path / "out"))
    assert "RUNS compares the same two runs more than once (b-vs-a.png)" in stderr
    assert_ok(run_digits("compare", *args))  # without OUT nothing collides


# --- several seeds pooled: RUNS=a1+a2,b1+b2 -----------------------------------------------------------------


def wrong_in(labels: np.ndarray, rows) -> dict[int, int]:
    return {row: other_digit(labels[row]) for row in rows}


def test_compare_pools_the_pairs_of_two_seeds(sample_dir, sample_labels, tmp_path):
    runs_dir = tmp_path / "runs"
    # seed 42: a1 alone wrong on OOF rows 1-4 and holdout rows 160-162; b1 alone on OOF row 5. Both on row 9.
    hand_built_run(runs_dir, "a1", sample_dir, wrong_in(sample_labels, [1, 2, 3, 4, 9, 160, 161, 162]))
    hand_built_run(runs_dir, "b1", sample_dir, wrong_in(sample_labels, [5, 9]), epochs="30")
    # seed 7: a2 alone wrong on OOF rows 1, 6, 7 and holdout rows 160, 170; b2 alone on OOF row 5, holdout row 199
    hand_built_run(runs_dir, "a2", sample_dir, wrong_in(sample_labels, [1, 6, 7, 160, 170]), seed="7")
    hand_built_run(runs_dir, "b2", sample_dir, wrong_in(sample_labels, [5, 199]), seed="7", epochs="30")
    out = tmp_path / "out"

    result = run_digits("compare", "--runs", "a1+a2,b1+b2", "--runs-dir", runs_dir, "--out", out)

    assert_ok(result)
    text = result.stdout
    assert "b1 against a1 (settings that differ: epochs 24 -> 30)" in text  # each pair first, as for two runs
    assert "b2 against a2 (settings that differ: epochs 24 -> 30)" in text
    pooled = block(text, re.escape("b1+b2"))
    assert pooled.startswith("b1+b2 against a1+a2, 2 pairs of runs pooled (settings that differ: epochs 24 -> 30)")
    assert "OOF, 2 pairs pooled (300 rows over the pairs, 150 distinct): 3 errors against 8 (-5)" in pooled
    # Rows disputed in both pairs count once for p: OOF row 1 (only a wrong, twice) once for a, row 5 (only b
    # wrong, twice) once for b; holdout row 160 (only a wrong, twice) once for a.
    oof_p, holdout_p = mcnemar_p(6, 1), mcnemar_p(4, 1)
    assert f"wrong only in b1+b2: 2, only in a1+a2: 7 (each row once: 1 and 6); p = {oof_p:.2g}: within noise" in pooled
    assert "holdout, fold ensemble, 2 pairs pooled (100 rows over the pairs, 50 distinct): 1 errors against 5" in pooled
    assert f"wrong only in b1+b2: 1, only in a1+a2: 5 (each row once: 1 and 4); p = {holdout_p:.2g}" in pooled
    assert "OOF: 2 of the 7 disputed rows are disputed in more than one pair; p counts each of them once" in pooled
    assert "holdout, fold ensemble: 1 of the 5 disputed rows are disputed in more than one pair" in pooled
    assert "do not change the same settings" not in pooled
    saved = json.loads((out / "compare.json").read_text())
    assert [(entry["baseline"], entry["run"]) for entry in saved] == [("a1", "b1"), ("a2", "b2"), ("a1+a2", "b1+b2")]
    assert saved[1]["baseline_dir"] == str(runs_dir / "a2") and saved[1]["run_dir"] == str(runs_dir / "b2")
    assert saved[2]["pairs"] == [["a1", "b1"], ["a2", "b2"]]
    oof = saved[2]["comparisons"][0]
    assert (oof["wrong_only_in_baseline"], oof["wrong_only_in_run"], oof["disputed"]) == (7, 2, [])
    assert oof["each_row_once"] == {"wrong_only_in_baseline": 6, "wrong_only_in_run": 1}
    assert oof["distinct_rows"] == 150 and oof["p_value"] == pytest.approx(oof_p)
    assert sorted(path.name for path in out.glob("*.png")) == ["b1-vs-a1.png", "b2-vs-a2.png"]  # one per pair


def test_pooled_pairs_can_name_a_winner_that_no_single_pair_can(sample_dir, sample_labels, tmp_path):
    runs_dir = tmp_path / "runs"
    a_rows = ([10, 11, 12, 13, 14], [20, 21, 22, 23, 24])  # 5 against 0 in each pair: p = 0.0625 alone
    for k, (seed, rows) in enumerate((("42", a_rows[0]), ("7", a_rows[1])), start=1):
        hand_built_run(runs_dir, f"a{k}", sample_dir, wrong_in(sample_labels, rows), seed=seed)
        hand_built_run(runs_dir, f"b{k}", sample_dir, {}, seed=seed, dropout_scale="1")
    lines: list[str] = []

    results = compare_runs([[runs_dir / "a1", runs_dir / "a2"], [runs_dir / "b1", runs_dir / "b2"]], log=lines.append)

    assert [verdict(r["comparisons"][0], r["baseline"], r["run"]) for r in results[:2]] == [
        f"p = {mcnemar_p(5, 0):.2g}: within noise"
    ] * 2
    pooled_oof = results[2]["comparisons"][0]
    assert (pooled_oof.only_a, pooled_oof.only_b, pooled_oof.once) == (10, 0, (10, 0))
    assert f"p = {mcnemar_p(10, 0):.2g}: b1+b2 has fewer errors here" in "\n".join(lines)


def test_compare_pairs_the_last_epochs_holdout_predictions_apart_from_the_best_epochs(
    sample_dir, sample_labels, tmp_path
):
    """The last epochs' fold ensemble is compared from holdout_last_epoch_probs.npy, not from the best epochs'
    files; TTA, which neither run measured, gets a note."""
    runs_dir = tmp_path / "runs"
    # best epochs: a wrong on holdout row 160, b on none; last epochs: a wrong on 170 and 171, b on 180
    hand_built_run(runs_dir, "a", sample_dir, wrong_in(sample_labels, [160]), wrong_in(sample_labels, [170, 171]))
    hand_built_run(runs_dir, "b", sample_dir, {}, wrong_in(sample_labels, [180]))

    result = compare_runs([runs_dir / "a", runs_dir / "b"], log=lambda _: None)[0]

    found = {c.what: c for c in result["comparisons"]}
    assert list(found) == ["OOF, one model per row", "holdout, fold ensemble", "holdout, last epochs' fold ensemble"]
    best, last = found["holdout, fold ensemble"], found["holdout, last epochs' fold ensemble"]
    assert (best.only_a, best.only_b) == (1, 0)
    assert (last.only_a, last.only_b) == (2, 1) and last.kind == "holdout, last epochs' fold ensemble"
    assert result["notes"] == [
        "holdout, with TTA not compared: not measured for a and b (`make submission RUN=<run> TTA=1` measures it)"
    ]


def test_compare_pools_only_what_every_pair_compared(sample_dir, tmp_path):
    runs_dir = tmp_path / "runs"
    for name, seed in (("a1", "42"), ("b1", "42"), ("a2", "7"), ("b2", "7")):
        hand_built_run(runs_dir, name, sample_dir, {}, seed=seed)
    for k in range(2):
        (runs_dir / "b2" / f"fold_{k}" / "holdout_probs.npy").unlink()  # that pair compares OOF only
        for name in ("a1", "b1"):  # only the first pair measured TTA
            shutil.copy(runs_dir / name / f"fold_{k}" / "holdout_probs.npy", runs_dir / name / f"fold_{k}" / TTA)

    results = compare_runs([[runs_dir / "a1", runs_dir / "a2"], [runs_dir / "b1", runs_dir / "b2"]], log=print)

    assert [c.what for c in results[0]["comparisons"]] == [
        "OOF, one model per row",
        "holdout, fold ensemble",
        "holdout, with TTA",
    ]
    assert [c.what for c in results[2]["comparisons"]] == ["OOF, 2 pairs pooled"]
    assert results[2]["notes"] == [
        "holdout, fold ensemble not pooled: b2 against a2 made no such comparison (see its block above)",
        "holdout, with TTA not pooled: b2 against a2 made no such comparison (see its block above)",
    ]


def test_compare_notes_pairs_that_change_different_settings(sample_dir, tmp_path):
    runs_dir = tmp_path / "runs"
    for name, seed, settings in (("a1", "42", {}), ("b1", "42", {"epochs": "30"}), ("a2", "7", {}), ("b2", "7", {})):
        hand_built_run(runs_dir, name, sample_dir, {}, seed=seed, **settings)

    [*_, pooled] = compare_runs([[runs_dir / "a1", runs_dir / "a2"], [runs_dir / "b1", runs_dir / "b2"]], log=print)

    assert pooled["notes"] == [
        "the pairs do not change the same settings: b1 against a1: epochs 24 -> 30; b2 against a2: nothing"
    ]


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ("a1+a2,b1", "RUNS=a1+a2,b1: every recipe after the first needs as many runs as the first (2)"),
        ("a1+a1,b1+b2", "RUNS=a1+a1,b1+b2 names a1 more than once: pooled pairs must be runs trained apart"),
        ("a1+a2,a1+b2", "RUNS=a1+a2,a1+b2 names a1 more than once"),
        (
            "a1+a2,b2+b1",
            "RUNS=a1+a2,b2+b1 pairs b2 (SEED 7, HOLDOUT 0.25, holdout seed 7) with a1 (SEED 42, HOLDOUT 0.25, holdout ",
        ),
        (
            "a1+a2,b1+d2",
            "pairs d2 (SEED 7, HOLDOUT 0.25, holdout seed 42) with a2 (SEED 7, HOLDOUT 0.25, holdout seed 7)",
        ),
        ("a1+a2,b1+c2", "a1 and c2 disagree on the label of train row 3: they were trained on different train.csv"),
    ],
)
def test_compare_refuses_pairs_that_cannot_be_pooled(sample_dir, sample_labels, tmp_path, runs, message):
    runs_dir = tmp_path / "runs"
    for name, seed in (("a1", "42"), ("b1", "42"), ("a2", "7"), ("b2", "7")):
        hand_built_run(runs_dir, name, sample_dir, {}, seed=seed)
    hand_built_run(runs_dir, "d2", sample_dir, {}, seed="7", holdout_seed="42")  # seed 7's folds, seed 42's holdout
    other = tmp_path / "other"  # c2: trained on a train.csv whose row 3 has another label
    other.mkdir()
    table = pd.read_csv(sample_dir / "train.csv")
    table.loc[3, "label"] = other_digit(table.loc[3, "label"])
    table.to_csv(other / "train.csv", index=False)
    hand_built_run(runs_dir, "c2", other, {}, seed="7")

    stderr = assert_user_error(run_digits("compare", "--runs", runs, "--runs-dir", runs_dir))

    assert message in stderr


# --- the command line on tiny runs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(shared_runs, tmp_path_factory) -> Path:
    """Runs `a` (tiny, 2 folds, 1 epoch, a fifth of the sample held out), `b` (the same folds and holdout, 2
    epochs) and `c` (another seed, so other folds and another holdout): conftest's SHARED_RUNS."""
    return shared_runs(tmp_path_factory.mktemp("runs"), "a", "b", "c")


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

    for what, key in (
        ("fold ensemble", "ensemble_accuracy"),
        ("with TTA", "tta_ensemble_accuracy"),
        ("last epochs' fold ensemble", "last_epoch_ensemble_accuracy"),
    ):
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
    assert (
        "holdout not compared: the runs hold out different rows (HOLDOUT 0.2 and 0.2, holdout seed 42 and 5); train "
        "both with the same HOLDOUT and HOLDOUT_SEED (by default SEED)" in text
    )
    assert "holdout, fold ensemble" not in text


@pytest.mark.slow
def test_compare_puts_every_later_run_against_the_first(runs):
    result = compare(runs, "a,b,c")

    assert_ok(result)
    assert [line.split(" against ")[0] for line in result.stdout.splitlines() if " against a (" in line] == ["b", "c"]
    assert "McNemar's exact test" in result.stdout


@pytest.mark.slow
def test_compare_refuses_an_unfinished_run_and_says_how_to_finish_it(runs, tmp_path):
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
    for run in ("a", "b", "c"):
        shutil.copytree(runs / run, tmp_path / run)
    shutil.copytree(runs / "b", tmp_path / "old")  # as if trained before holdout predictions were saved
    (tmp_path / "old" / "fold_1" / "holdout_probs.npy").unlink()
    shutil.copytree(runs / "b", tmp_path / "older")  # as if trained before last-epoch predictions were saved
    (tmp_path / "older" / "fold_1" / "holdout_last_epoch_probs.npy").unlink()
    (tmp_path / "b" / "fold_0" / "holdout_tta_probs.npy").unlink()  # TTA not measured for one fold

    result = compare(tmp_path, "a,b,old,older")

    assert_ok(result)
    text_b, text_old, text_older = (block(result.stdout, name) for name in ("b", "old", "older"))
    assert "holdout, fold ensemble (600 rows)" in text_b
    assert "holdout, with TTA (" not in text_b
    assert (
        "holdout, with TTA not compared: not measured for b (`make submission RUN=<run> TTA=1` measures it)" in text_b
    )
    assert "holdout, last epochs' fold ensemble (600 rows)" in text_b  # a and b saved them
    assert "holdout, fold ensemble (600 rows)" in text_older and "holdout, with TTA (600 rows)" in text_older
    assert "holdout, last epochs' fold ensemble (" not in text_older
    assert (
        "holdout, last epochs' fold ensemble not compared: older lacks a fold's holdout_last_epoch_probs.npy "
        "(trained by an older version); retrain with the same settings under a new RUN=<name> to compare the last "
        "epochs" in text_older
    )
    assert "holdout, " not in text_old
    assert "holdout not compared: old lacks a fold's holdout_probs.npy" in text_old
    assert "  OOF, one model per row" in text_old  # the OOF rows are still compared
