"""Submissions: blending, validation, atomic writes, the CLI end to end, and `submit` through the real client.

The pure functions and the validator run in milliseconds. The end-to-end tests train tiny runs on the bundled
sample through the command line (once per module, 2 folds, 1 epoch) and are marked slow (`make demo` has its
own file, test_demo.py). `submit` and `submissions` run the official `kaggle` client in a subprocess against the
stand-in Kaggle API (tests/kaggle_standin.py) through the proxy variables that `kaggle_env` sets: never the real Kaggle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digits.submission import (
    SubmissionError,
    agreement,
    blend,
    choose_weights,
    shift_images,
    to_submission,
    validate_submission_text,
    write_submission,
)
from helpers import assert_ok, assert_user_error, digest, run_digits, train_cli
from kaggle_standin import KaggleStandIn
from kaggle_standin import Submission as StandInSubmission

SAMPLE_TEST_ROWS = 1000
RULES_URL = "https://www.kaggle.com/competitions/digit-recognizer/rules"


# --- helpers ------------------------------------------------------------------------------------


def digits_cli(*args: str | os.PathLike, env: dict[str, str] | None = None, timeout: float = 300):
    return run_digits(*args, env=env, timeout=timeout)


def csv_text(*lines: str, newline: str = "\n") -> str:
    return newline.join(lines) + newline


VALID_LINES = ("ImageId,Label", "1,3", "2,7", "3,0", "4,9", "5,1")


def lines_with(**replace: str) -> list[str]:
    """VALID_LINES with line N (1-based, as `l3=...`) replaced; an empty value drops the line."""
    lines = list(VALID_LINES)
    for key, value in sorted(replace.items(), reverse=True):
        index = int(key[1:]) - 1
        if value:
            lines[index] = value
        else:
            del lines[index]
    return lines


def valid_submission(path: Path, rows: int = SAMPLE_TEST_ROWS, seed: int = 0) -> Path:
    labels = np.random.default_rng(seed).integers(0, 10, rows)
    path.write_text(to_submission(labels).to_csv(index=False, lineterminator="\n"))
    return path


def clear_argmax(probs: np.ndarray, margin: float = 1e-5) -> np.ndarray:
    """Rows whose top class leads the runner-up by more than `margin` (immune to float rounding)."""
    top_two = np.sort(probs, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0] > margin


def run_args(runs_dir: Path, sample_dir: Path, submissions_dir: Path) -> list[str | os.PathLike]:
    return ["--runs-dir", runs_dir, "--data-dir", sample_dir, "--submissions-dir", submissions_dir]


def with_key(env: dict[str, str], server: KaggleStandIn) -> dict[str, str]:
    return {**env, "KAGGLE_USERNAME": server.username, "KAGGLE_KEY": server.key}


def with_token(env: dict[str, str], server: KaggleStandIn) -> dict[str, str]:
    return {**env, "KAGGLE_API_TOKEN": server.token}


def uploads(server: KaggleStandIn) -> list:
    return [r for r in server.requests if r.kind == "upload"]


# --- blend, agreement, to_submission, shift_images, choose_weights ---------------------------------

P1 = np.array([[0.6, 0.4, 0.0], [0.1, 0.2, 0.7]])
P2 = np.array([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])


def test_blend_is_the_mean_with_rows_summing_to_one():
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(10), 50) for _ in range(3)]

    blended = blend(probs)

    assert blended.shape == (50, 10) and blended.dtype == np.float32
    assert np.allclose(blended.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(blended, np.mean(probs, axis=0), atol=1e-6)


def test_blend_of_a_known_example():
    blended = blend([P1, P2])

    assert np.allclose(blended, [[0.4, 0.55, 0.05], [0.1, 0.15, 0.75]], atol=1e-6)
    assert blended.argmax(axis=1).tolist() == [1, 2]


def test_blend_respects_the_weights():
    assert np.allclose(blend([P1, P2], [3, 1]), 0.75 * P1 + 0.25 * P2, atol=1e-6)  # normalised: 3:1
    assert blend([P1, P2], [3, 1]).argmax(axis=1).tolist() == [0, 2]  # P1 now outvotes P2 on row 0
    assert np.allclose(blend([P1, P2], [1, 0]), P1, atol=1e-6)
    assert np.allclose(blend([P1, P2], [0, 2]), P2, atol=1e-6)


def test_blend_renormalises_rows():
    assert np.allclose(blend([P1 * 2, P2 * 2]).sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("probs", "weights", "message"),
    [
        ([], None, "nothing to blend"),
        ([np.full((2, 10), 0.1), np.full((3, 10), 0.1)], None, "different shapes"),
        ([P1, P2], [1.0], "one non-negative number per model"),
        ([P1, P2], [1.0, 1.0, 1.0], "one non-negative number per model"),
        ([P1, P2], [1.0, -0.5], "non-negative"),
        ([P1, P2], [0.0, 0.0], "not all zero"),
        ([P1, P2], [float("nan"), 1.0], "non-negative number"),
        ([P1, P2], [float("inf"), 1.0], "non-negative number"),
    ],
    ids=["nothing", "shapes", "too few weights", "too many weights", "negative", "all zero", "nan", "inf"],
)
def test_blend_refuses_bad_input(probs, weights, message):
    with pytest.raises(SubmissionError, match=message):
        blend(probs, weights)


def test_agreement_counts_unanimous_and_pairwise():
    onehot = np.eye(4)
    models = [onehot[[0, 1, 2, 3]], onehot[[0, 1, 2, 0]], onehot[[0, 1, 1, 0]]]

    result = agreement(models)

    assert result["models"] == 3
    assert result["all_agree"] == pytest.approx(0.5)  # rows 0 and 1
    assert result["rows_disputed"] == 2
    assert result["pairwise_mean"] == pytest.approx((3 / 4 + 2 / 4 + 3 / 4) / 3)


def test_agreement_of_one_model_is_total():
    result = agreement([np.eye(3)])
    assert result == {"models": 1, "all_agree": 1.0, "pairwise_mean": 1.0, "rows_disputed": 0}


def test_to_submission_numbers_the_images_from_one():
    frame = to_submission(np.array([3, 1, 4, 1, 5]))

    assert list(frame.columns) == ["ImageId", "Label"]
    assert frame["ImageId"].tolist() == [1, 2, 3, 4, 5]
    assert frame["Label"].tolist() == [3, 1, 4, 1, 5]
    text = frame.to_csv(index=False, lineterminator="\n")
    assert text.startswith("ImageId,Label\n1,3\n")
    validate_submission_text(text, 5)


@pytest.mark.parametrize(("rows", "columns"), [(1, 0), (-1, 0), (0, 1), (0, -1), (1, -1)])
def test_shift_images_moves_by_exactly_one_pixel_with_zero_fill(rows, columns):
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (3, 28, 28, 1)).astype(np.uint8)  # no zero pixel: any zero is fill
    original = images.copy()

    shifted = shift_images(images, rows, columns)

    assert shifted.shape == images.shape and shifted.dtype == images.dtype
    assert np.array_equal(images, original)  # the input is left alone
    expected = np.zeros_like(images)
    target_r = slice(max(rows, 0), 28 + min(rows, 0))
    source_r = slice(max(-rows, 0), 28 + min(-rows, 0))
    target_c = slice(max(columns, 0), 28 + min(columns, 0))
    source_c = slice(max(-columns, 0), 28 + min(-columns, 0))
    expected[:, target_r, target_c] = images[:, source_r, source_c]
    assert np.array_equal(shifted, expected)
    filled_rows = 28 * abs(columns) + 28 * abs(rows) - abs(rows * columns)
    assert (shifted == 0).sum() == 3 * filled_rows  # exactly the uncovered border is zero


def test_shift_images_moves_a_single_pixel():
    image = np.zeros((1, 28, 28, 1), np.uint8)
    image[0, 10, 12, 0] = 255

    assert np.argwhere(shift_images(image, 1, 0)[0, :, :, 0]).tolist() == [[11, 12]]
    assert np.argwhere(shift_images(image, -1, 0)[0, :, :, 0]).tolist() == [[9, 12]]
    assert np.argwhere(shift_images(image, 0, 1)[0, :, :, 0]).tolist() == [[10, 13]]
    assert np.argwhere(shift_images(image, 0, -1)[0, :, :, 0]).tolist() == [[10, 11]]
    edge = np.zeros((1, 28, 28, 1), np.uint8)
    edge[0, 27, 0, 0] = 9
    assert not shift_images(edge, 1, 0).any()  # shifted off the image: gone, not wrapped around


def test_shift_zero_is_the_identity():
    images = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
    assert np.array_equal(shift_images(images, 0, 0), images)


def test_choose_weights_favours_the_model_that_is_perfect_out_of_fold():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 400)
    perfect = np.eye(10)[labels]
    noisy = rng.dirichlet(np.ones(10), 400)

    weights = choose_weights([noisy, perfect], labels)

    assert weights.shape == (2,)
    assert weights.sum() == pytest.approx(1.0)
    assert (weights >= 0).all()
    assert weights[1] > 0.9


def test_choose_weights_of_equal_models_is_even():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 200)
    probs = rng.dirichlet(np.ones(10), 200)

    weights = choose_weights([probs, probs, probs], labels)

    assert weights.sum() == pytest.approx(1.0)
    assert np.allclose(weights, 1 / 3, atol=0.01)


# --- validate_submission_text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rows", "expected"),
    [
        (csv_text("ImageId,Labels", *VALID_LINES[1:]), 5, ["line 1", "header is 'ImageId,Labels'", "'ImageId,Label'"]),
        (csv_text("Label,ImageId", *VALID_LINES[1:]), 5, ["line 1", "header is 'Label,ImageId'"]),
        (csv_text(*VALID_LINES[1:]), 5, ["line 1", "header is '1,3'"]),
        (csv_text(*lines_with(l4="")), 5, ["has 4 rows, expected 5", "missing ImageId 3."]),
        (csv_text(*lines_with(l4="2,0")), 5, ["line 4, column 'ImageId'", "2 appears twice"]),
        (csv_text(*VALID_LINES, "6,2"), 5, ["line 7, column 'ImageId'", "6 is outside 1..5"]),
        (csv_text(*lines_with(l2="0,3")), 5, ["line 2, column 'ImageId'", "0 is outside 1..5"]),
        (csv_text(*lines_with(l3="x,7")), 5, ["line 3, column 'ImageId'", "'x' is not a positive integer"]),
        (csv_text(*VALID_LINES), 1000, ["has 5 rows, expected 1000", "missing ImageId 6, 7, 8, 9, 10 ..."]),
        (csv_text(VALID_LINES[0]), 5, ["has 0 rows, expected 5", "missing ImageId 1, 2, 3, 4, 5."]),
        (csv_text(*lines_with(l3="2,10")), 5, ["line 3, column 'Label'", "10 is outside 0..9"]),
        (csv_text(*lines_with(l3="2,-1")), 5, ["line 3, column 'Label'", "'-1' is not an integer 0..9"]),
        (csv_text(*lines_with(l3="2,3.5")), 5, ["line 3, column 'Label'", "'3.5' is not an integer 0..9"]),
        (csv_text(*lines_with(l3="2,x")), 5, ["line 3, column 'Label'", "'x' is not an integer 0..9"]),
        (csv_text(*lines_with(l3="2,")), 5, ["line 3, column 'Label'", "'' is not an integer 0..9"]),
        (csv_text(*lines_with(l3="2,\u00b2")), 5, ["line 3, column 'Label'", "is not an integer 0..9"]),
        (csv_text(*lines_with(l3="2,7,1")), 5, ["line 3:", "expected 2 values (ImageId,Label), found 3"]),
        (csv_text(*lines_with(l3="2")), 5, ["line 3:", "expected 2 values (ImageId,Label), found 1"]),
        (csv_text(*VALID_LINES[:3], "", *VALID_LINES[3:]), 5, ["line 4: empty line between rows; delete it."]),
        ("", 5, ["the file is empty", "ImageId,Label"]),
        ("\ufeff", 5, ["the file is empty"]),
    ],
    ids=[
        "wrong header",
        "swapped header",
        "no header",
        "missing ImageId",
        "duplicate ImageId",
        "ImageId beyond N",
        "ImageId 0",
        "non-integer ImageId",
        "wrong row count",
        "header only",
        "label 10",
        "negative label",
        "label 3.5",
        "label x",
        "empty label",
        "superscript digit label",
        "three values",
        "one value",
        "blank line between rows",
        "empty file",
        "only a BOM",
    ],
)
def test_invalid_submission_is_located(text, rows, expected):
    with pytest.raises(SubmissionError) as caught:
        validate_submission_text(text, rows, name="sub.csv")
    message = str(caught.value)
    assert message.startswith("sub.csv")
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    "text",
    [
        csv_text(*VALID_LINES),
        "\ufeff" + csv_text(*VALID_LINES),
        csv_text(*VALID_LINES, newline="\r\n"),
        "\ufeff" + csv_text(*VALID_LINES, newline="\r\n"),
        "\n".join(VALID_LINES),  # no final newline
        csv_text("ImageId , Label", " 1 , 3", "2,7", "3,0", "4,9", "5,1"),  # spaces around values
        csv_text(*VALID_LINES, "", ""),  # blank lines after the last row, as an editor may leave them
        csv_text(*VALID_LINES, "", newline="\r\n"),
    ],
    ids=["plain", "BOM", "CRLF", "BOM and CRLF", "no final newline", "spaces", "blank lines at the end", "CRLF blank"],
)
def test_valid_submission_passes(text):
    validate_submission_text(text, 5)


def test_a_full_size_submission_passes():
    validate_submission_text(to_submission(np.arange(28000) % 10).to_csv(index=False), 28000)


# --- write_submission -----------------------------------------------------------------------------


def test_write_submission_writes_a_valid_file_atomically(tmp_path):
    path = tmp_path / "subs" / "run-cv0.99000.csv"
    frame = to_submission(np.array([3, 7, 0, 9, 1]))

    write_submission(frame, path, 5)

    assert path.read_text() == csv_text(*VALID_LINES)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_write_submission_never_overwrites(tmp_path):
    path = tmp_path / "run-cv0.99000.csv"
    path.write_text("precious\n")

    with pytest.raises(SubmissionError, match="already exists and is never overwritten"):
        write_submission(to_submission(np.array([3, 7, 0, 9, 1])), path, 5)

    assert path.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_submission_refuses_an_invalid_frame_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.csv"

    with pytest.raises(SubmissionError, match=r"line 3, column 'Label': 10 is outside 0\.\.9"):
        write_submission(to_submission(np.array([3, 10, 0])), path, 3)
    with pytest.raises(SubmissionError, match="has 2 rows, expected 3"):
        write_submission(to_submission(np.array([3, 1])), path, 3)

    assert list(tmp_path.iterdir()) == []


# --- the command line, end to end on tiny runs ------------------------------------------------------


@pytest.fixture(scope="module")
def runs_dir(shared_runs, tmp_path_factory) -> Path:
    """A folder holding run `a`: tiny, 2 folds, 1 epoch, a fifth of the sample held out of every fold
    (conftest's SHARED_RUNS)."""
    return shared_runs(tmp_path_factory.mktemp("runs"), "a")


@pytest.fixture(scope="module")
def second_run(runs_dir, shared_runs) -> Path:
    """Run `s7` beside `a`: another SEED (other folds, initial weights and augmentation) with `a`'s holdout rows
    (HOLDOUT_SEED=42, a's SEED), trained for 2 epochs, so the two runs predict differently."""
    shared_runs(runs_dir, "s7")
    return runs_dir / "s7"


def oof_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "report.json").read_text())["oof_accuracy"]


@pytest.mark.slow
def test_submission_blends_the_folds_of_a_run(runs_dir, sample_dir, tmp_path):
    run_dir = runs_dir / "a"
    submissions = tmp_path / "subs"

    result = digits_cli("submission", "--run", "a", *run_args(runs_dir, sample_dir, submissions))

    assert_ok(result)
    path = submissions / f"a-cv{oof_accuracy(run_dir):.5f}.csv"
    assert [p.name for p in submissions.iterdir()] == [path.name]
    text = path.read_text()
    assert text.splitlines()[0] == "ImageId,Label"
    validate_submission_text(text, SAMPLE_TEST_ROWS)
    frame = pd.read_csv(path)
    assert len(frame) == SAMPLE_TEST_ROWS
    assert frame["ImageId"].tolist() == list(range(1, SAMPLE_TEST_ROWS + 1))

    fold_probs = [np.load(run_dir / f"fold_{k}" / "test_probs.npy") for k in (0, 1)]
    mean = np.mean(fold_probs, axis=0)
    saved = np.load(run_dir / "blend_test_probs.npy")
    assert saved.shape == (SAMPLE_TEST_ROWS, 10)
    assert np.allclose(saved, mean, atol=1e-6)
    labels = frame["Label"].to_numpy()
    assert np.array_equal(labels, saved.argmax(axis=1))
    clear = clear_argmax(mean)
    assert clear.mean() > 0.98
    assert np.array_equal(labels[clear], mean.argmax(axis=1)[clear])

    folds_agree = agreement(fold_probs)
    assert f"folds agree on {folds_agree['all_agree']:.4%} of test images" in result.stdout
    assert f"({folds_agree['rows_disputed']} disputed" in result.stdout
    assert f"submission: {path}" in result.stdout
    assert not list(run_dir.rglob(".*.tmp*"))

    before = (digest(path), path.stat().st_mtime_ns)
    again = digits_cli("submission", "--run", "a", *run_args(runs_dir, sample_dir, submissions))
    assert_ok(again)
    assert f"{path} already exists; not overwritten." in again.stdout
    assert (digest(path), path.stat().st_mtime_ns) == before
    assert [p.name for p in submissions.iterdir()] == [path.name]


@pytest.mark.slow
def test_submission_with_tta_reports_oof_accuracy_with_and_without(runs_dir, sample_dir, tmp_path):
    run_dir = runs_dir / "a"
    submissions = tmp_path / "subs"

    result = digits_cli("submission", "--run", "a", "--tta", *run_args(runs_dir, sample_dir, submissions))

    assert_ok(result)
    measured = re.search(r"TTA on OOF rows: accuracy (\d\.\d{5}) without, (\d\.\d{5}) with", result.stdout)
    assert measured, result.stdout
    without, with_tta = measured.groups()
    assert without == f"{oof_accuracy(run_dir):.5f}"
    path = submissions / f"a-cv{with_tta}-tta.csv"
    assert [p.name for p in submissions.iterdir()] == [path.name]
    validate_submission_text(path.read_text(), SAMPLE_TEST_ROWS)
    blended = np.load(run_dir / "blend_test_probs-tta.npy")
    assert np.array_equal(pd.read_csv(path)["Label"].to_numpy(), blended.argmax(axis=1))
    assert "TTA: fold 0 done" in result.stdout and "TTA: fold 1 done" in result.stdout


@pytest.mark.slow
def test_submission_of_an_unfinished_run_names_the_missing_fold(runs_dir, sample_dir, tmp_path):
    assert_ok(train_cli(sample_dir, runs_dir, "--folds", "2", "--epochs", "1", "--run", "half", "--only", "0"))
    submissions = tmp_path / "subs"

    stderr = assert_user_error(digits_cli("submission", "--run", "half", *run_args(runs_dir, sample_dir, submissions)))

    assert "fold(s) 1 are not finished" in stderr
    assert "make train RUN=half" in stderr
    assert not submissions.exists() or not list(submissions.iterdir())
    assert not (runs_dir / "half" / "blend_test_probs.npy").exists()


@pytest.mark.slow
def test_submission_of_a_run_without_its_report_writes_it_first(runs_dir, sample_dir, tmp_path):
    """Every fold finished but no run report: folds gathered from several machines (DESIGN.md: the ensemble step
    reads whatever folds a run directory holds), or a stop between the last fold and the report. The submission
    writes the report as `make train RUN=<run>` would (training nothing), then blends as usual."""
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / "a", runs / "a")
    expected_report = json.loads((runs / "a" / "report.json").read_text())
    expected_oof = (runs / "a" / "oof.csv").read_bytes()
    for name in ("report.json", "report.html", "oof.csv"):
        (runs / "a" / name).unlink()
    folds_before = {p: digest(p) for p in sorted((runs / "a").glob("fold_*/*")) if p.is_file()}
    submissions = tmp_path / "subs"

    result = digits_cli("submission", "--run", "a", *run_args(runs, sample_dir, submissions))

    assert_ok(result)
    assert "every fold is finished; writing the run report (oof.csv, report.json) first" in result.stdout
    assert re.search(r"epoch +\d+/\d+ +loss", result.stdout) is None  # no epoch's progress line: nothing trained
    assert {p: digest(p) for p in sorted((runs / "a").glob("fold_*/*")) if p.is_file()} == folds_before
    assert (runs / "a" / "oof.csv").read_bytes() == expected_oof
    written = json.loads((runs / "a" / "report.json").read_text())
    assert written["oof_accuracy"] == expected_report["oof_accuracy"]
    assert written["holdout"]["ensemble_accuracy"] == expected_report["holdout"]["ensemble_accuracy"]
    assert (runs / "a" / "report.html").is_file()
    assert [p.name for p in submissions.iterdir()] == [f"a-cv{expected_report['oof_accuracy']:.5f}.csv"]


@pytest.mark.slow
def test_ensemble_of_two_runs(runs_dir, second_run, sample_dir, tmp_path):
    submissions = tmp_path / "subs"
    run_probs = [
        np.mean([np.load(runs_dir / r / f"fold_{k}" / "test_probs.npy") for k in (0, 1)], 0) for r in ("a", "s7")
    ]

    equal = digits_cli("ensemble", "--runs", "a,s7", *run_args(runs_dir, sample_dir, submissions))

    assert_ok(equal)
    for run in ("a", "s7"):
        assert re.search(
            rf"^  {run}: OOF accuracy {oof_accuracy(runs_dir / run):.5f}, holdout \d\.\d{{5}}, weight 0\.500$",
            equal.stdout,
            re.M,
        )
    assert "(equal weights)" in equal.stdout
    assert "holdout accuracy not measured" not in equal.stdout
    (path,) = submissions.glob("ensemble-a+s7-cv*.csv")
    assert re.fullmatch(r"ensemble-a\+s7-cv\d\.\d{5}\.csv", path.name)
    validate_submission_text(path.read_text(), SAMPLE_TEST_ROWS)
    labels = pd.read_csv(path)["Label"].to_numpy()
    expected = np.mean(run_probs, axis=0)
    clear = clear_argmax(expected)
    assert clear.mean() > 0.98
    assert np.array_equal(labels[clear], expected.argmax(axis=1)[clear])

    weighted = digits_cli(
        "ensemble", "--runs", "a,s7", "--weights", "oof", *run_args(runs_dir, sample_dir, submissions)
    )

    assert_ok(weighted)
    weights = [
        float(w)
        for w in re.findall(
            r"^  (?:a|s7): OOF accuracy \d\.\d{5}, holdout \d\.\d{5}, weight (\d\.\d{3})$", weighted.stdout, re.M
        )
    ]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=0.002)
    assert "(oof weights)" in weighted.stdout
    (oof_path,) = submissions.glob("ensemble-a+s7-cv*-oof.csv")
    assert oof_path != path and path.read_text()  # the equal-weight file is still there
    validate_submission_text(oof_path.read_text(), SAMPLE_TEST_ROWS)
    assert f"submission: {oof_path}" in weighted.stdout


def holdout_mean_probs(run_dir: Path) -> np.ndarray:
    return np.mean([np.load(run_dir / f"fold_{k}" / "holdout_probs.npy") for k in (0, 1)], axis=0)


@pytest.mark.slow
def test_ensemble_reports_its_accuracy_on_the_common_holdout(runs_dir, second_run, sample_dir, tmp_path):
    folds = pd.read_csv(runs_dir / "a" / "folds.csv")
    labels = folds.loc[folds["fold"] == -1, "label"].to_numpy()
    blended = (holdout_mean_probs(runs_dir / "a") + holdout_mean_probs(runs_dir / "s7")) / 2
    # The tiny models' probabilities are close to uniform, so a row whose top two classes are within float
    # rounding of each other may go either way in the CLI's own sum: such rows may count as right or wrong.
    clear = clear_argmax(blended)
    wrong = blended.argmax(axis=1) != labels
    fewest, most = int((wrong & clear).sum()), int((wrong | ~clear).sum())
    # nearly every row is decided (5 of 600 were near-ties for models trained in bfloat16, 3 at most in float32),
    # so the check below stays tight
    assert most - fewest <= 10

    result = digits_cli("ensemble", "--runs", "a,s7", *run_args(runs_dir, sample_dir, tmp_path / "subs"))

    assert_ok(result)
    assert len(labels) == 600  # a fifth of the sample's 3,000 rows
    printed = re.search(
        r"ensemble holdout accuracy (\d\.\d{5}) on the 600 rows that no fold of any run trained on \((\d+) errors\)",
        result.stdout,
    )
    assert printed, result.stdout
    errors = int(printed[2])
    assert fewest <= errors <= most
    assert printed[1] == f"{1 - errors / len(labels):.5f}"
    for run in ("a", "s7"):  # each run alone, as its own training report measured it
        alone = json.loads((runs_dir / run / "report.json").read_text())["holdout"]["ensemble_accuracy"]
        assert re.search(
            rf"^  {run}: OOF accuracy \d\.\d{{5}}, holdout {alone:.5f}, weight 0\.500$", result.stdout, re.M
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "is missing, so the ensemble's holdout accuracy cannot be measured"),
        ("truncated", "cannot be read"),
        ("other shape", "holds predictions of shape (7, 10), not one row per holdout row"),
    ],
)
def test_ensemble_with_a_damaged_holdout_file_says_so_and_still_writes_the_blend(
    runs_dir, second_run, sample_dir, tmp_path, damage, message
):
    import shutil

    runs = tmp_path / "runs"
    for run in ("a", "s7"):
        shutil.copytree(runs_dir / run, runs / run)
    damaged = runs / "s7" / "fold_1" / "holdout_probs.npy"
    if damage == "missing":
        damaged.unlink()
    elif damage == "truncated":
        damaged.write_bytes(damaged.read_bytes()[:100])
    else:
        np.save(damaged, np.full((7, 10), 0.1, np.float32))
    submissions = tmp_path / "subs"

    result = digits_cli("ensemble", "--runs", "a,s7", *run_args(runs, sample_dir, submissions))

    assert_ok(result)
    assert f"holdout accuracy not measured: {damaged} {message}" in result.stdout
    assert "ensemble holdout accuracy" not in result.stdout
    (path,) = submissions.glob("ensemble-a+s7-cv*.csv")
    validate_submission_text(path.read_text(), SAMPLE_TEST_ROWS)


@pytest.mark.slow
def test_runs_sharing_a_holdout_seed_hold_out_the_same_rows_in_other_folds(runs_dir, second_run):
    a, s7 = (pd.read_csv(runs_dir / run / "folds.csv") for run in ("a", "s7"))
    held_out = a["fold"] == -1
    assert held_out.sum() == 600
    assert held_out.equals(s7["fold"] == -1)  # s7 (SEED=7 HOLDOUT_SEED=42) holds out a's (SEED=42) rows
    assert not a.loc[~held_out, "fold"].equals(s7.loc[~held_out, "fold"])  # in folds split by its own seed
    saved = json.loads((runs_dir / "s7" / "config.json").read_text())["config"]
    assert (saved["seed"], saved["holdout_seed"]) == (7, 42)


@pytest.mark.slow
def test_ensemble_of_runs_with_different_holdouts_is_refused_and_says_how_to_share_one(
    runs_dir, shared_runs, sample_dir, tmp_path
):
    shared_runs(runs_dir, "c")  # SEED=5, so its own holdout
    submissions = tmp_path / "subs"

    stderr = assert_user_error(digits_cli("ensemble", "--runs", "a,c", *run_args(runs_dir, sample_dir, submissions)))

    assert "hold OOF predictions for different train rows" in stderr
    assert "a has HOLDOUT=0.2 HOLDOUT_SEED=42, so train the others with the same (and any SEED)" in stderr
    assert not submissions.exists()


@pytest.mark.slow
def test_ensemble_of_one_run_is_refused(runs_dir, sample_dir, tmp_path):
    submissions = tmp_path / "subs"

    stderr = assert_user_error(digits_cli("ensemble", "--runs", "a", *run_args(runs_dir, sample_dir, submissions)))

    assert "an ensemble needs at least two runs" in stderr
    assert not submissions.exists()


# --- submit and submissions through the real kaggle client, against the stand-in ----------------------


def submit_cli(env: dict[str, str], sample_dir: Path, *args: str | os.PathLike):
    return digits_cli("submit", "--data-dir", sample_dir, "--poll-interval", "0.1", *args, env=env, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("credentials", ["key pair", "token"])
def test_submit_uploads_the_runs_submission_and_prints_its_score(
    runs_dir, sample_dir, kaggle_server, kaggle_env, tmp_path, credentials
):
    kaggle_server.submission_score = "0.98765"
    kaggle_server.pending_lists = 2  # scored on the third look: the command polls
    env = with_key(kaggle_env, kaggle_server) if credentials == "key pair" else with_token(kaggle_env, kaggle_server)
    submissions = tmp_path / "subs"

    result = submit_cli(env, sample_dir, "--run", "a", "--runs-dir", runs_dir, "--submissions-dir", submissions)

    assert_ok(result)
    cv = f"{oof_accuracy(runs_dir / 'a'):.5f}"
    path = submissions / f"a-cv{cv}.csv"
    validate_submission_text(path.read_text(), SAMPLE_TEST_ROWS)
    (stored,) = kaggle_server.submissions
    assert stored.content == path.read_bytes()
    assert stored.file_name == path.name
    assert "run a" in stored.description and cv in stored.description
    (upload,) = uploads(kaggle_server)
    assert upload.method == "PUT" and upload.body == path.read_bytes()
    assert len(kaggle_server.api_calls("ListSubmissions")) == 3
    assert "public score: 0.98765" in result.stdout
    assert kaggle_server.key not in result.stdout + result.stderr
    assert kaggle_server.token not in result.stdout + result.stderr


@pytest.mark.parametrize("message", ["my best blend", None])
def test_submit_a_given_file(sample_dir, kaggle_server, kaggle_env, tmp_path, message):
    kaggle_server.submission_score = "0.97531"
    path = valid_submission(tmp_path / "mine.csv")
    extra = ["--message", message] if message else []

    result = submit_cli(with_key(kaggle_env, kaggle_server), sample_dir, "--file", path, *extra)

    assert_ok(result)
    (stored,) = kaggle_server.submissions
    assert stored.content == path.read_bytes() and stored.file_name == "mine.csv"
    assert stored.description == (message or "mine")
    assert "public score: 0.97531" in result.stdout
    assert "submitted: Successfully submitted" in result.stdout


def test_submit_reports_the_new_submissions_score_not_an_earlier_one_of_the_same_file(
    sample_dir, kaggle_server, kaggle_env, tmp_path
):
    """Kaggle's listing may show an earlier upload of the same file name before the new one: the score printed
    is the new submission's (matched by the ref Kaggle's reply gives), never the earlier one's."""
    path = valid_submission(tmp_path / "mine.csv")
    kaggle_server.submissions.append(
        StandInSubmission(
            ref=900,
            file_name="mine.csv",
            content=b"an earlier upload",
            description="yesterday",
            date=datetime(2024, 5, 6, 7, 8, 9),
            public_score="0.11111",
        )
    )
    kaggle_server.submission_score = "0.97531"
    kaggle_server.listing_lag = 2  # the first two listings show only yesterday's upload

    result = submit_cli(with_key(kaggle_env, kaggle_server), sample_dir, "--file", path)

    assert_ok(result)
    assert "public score: 0.97531" in result.stdout
    assert "0.11111" not in result.stdout
    assert len(kaggle_server.api_calls("ListSubmissions")) == 3


def test_submit_without_credentials_names_the_ways_to_give_them(sample_dir, kaggle_server, kaggle_env, tmp_path):
    path = valid_submission(tmp_path / "mine.csv")

    stderr = assert_user_error(submit_cli(kaggle_env, sample_dir, "--file", path))

    for way in (
        "kaggle auth login",
        "KAGGLE_API_TOKEN",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "kaggle.json",
        kaggle_env["KAGGLE_CONFIG_DIR"],
    ):
        assert way in stderr
    # what to do without the API when submitting (not the download's SOURCE=)
    assert "upload the file by hand at https://www.kaggle.com/competitions/digit-recognizer/submissions" in stderr
    assert "SOURCE=" not in stderr
    assert kaggle_server.requests == []


def test_submit_refused_403_names_the_rules_page(sample_dir, kaggle_server, kaggle_env, tmp_path):
    kaggle_server.fail("StartSubmissionUpload", 403)
    path = valid_submission(tmp_path / "mine.csv")

    stderr = assert_user_error(submit_cli(with_key(kaggle_env, kaggle_server), sample_dir, "--file", path))

    assert "403" in stderr and RULES_URL in stderr
    assert uploads(kaggle_server) == [] and kaggle_server.submissions == []


def test_submit_refused_400_explains_the_usual_causes(sample_dir, kaggle_server, kaggle_env, tmp_path):
    kaggle_server.fail("CreateSubmission", 400, "Submission limit reached")
    path = valid_submission(tmp_path / "mine.csv")

    stderr = assert_user_error(submit_cli(with_key(kaggle_env, kaggle_server), sample_dir, "--file", path))

    assert "400 Bad Request" in stderr
    assert "daily submission limit" in stderr
    assert "not joined the competition" in stderr and RULES_URL in stderr
    assert "not a valid submission" in stderr
    assert kaggle_server.submissions == []


def test_submit_reports_a_scoring_error(sample_dir, kaggle_server, kaggle_env, tmp_path):
    kaggle_server.submission_status = "ERROR"
    kaggle_server.submission_error = "Evaluation Exception: ImageId 17 is missing"
    path = valid_submission(tmp_path / "mine.csv")

    stderr = assert_user_error(submit_cli(with_key(kaggle_env, kaggle_server), sample_dir, "--file", path))

    assert "Kaggle could not score mine.csv: Evaluation Exception: ImageId 17 is missing" in stderr


def test_submit_stops_polling_when_the_score_is_late(sample_dir, kaggle_server, kaggle_env, tmp_path):
    kaggle_server.pending_lists = 10_000
    path = valid_submission(tmp_path / "mine.csv")

    result = submit_cli(with_key(kaggle_env, kaggle_server), sample_dir, "--file", path, "--poll-seconds", "0.3")

    assert_ok(result)
    assert "has not scored it yet" in result.stdout and "make submissions" in result.stdout
    assert "public score" not in result.stdout
    assert len(kaggle_server.submissions) == 1
    assert 2 <= len(kaggle_server.api_calls("ListSubmissions")) < 20


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("ImageId,Label\n1,3\n2,10\n", "line 3, column 'Label': 10 is outside 0..9"),
        ("ImageId,Label\n1,3\n2,7\n", "has 2 rows, expected 1000"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe", "not a UTF-8 text CSV"),
        (None, "no such submission file"),
    ],
    ids=["label 10", "short", "binary", "missing"],
)
def test_submit_refuses_an_invalid_file_before_any_upload(
    sample_dir, kaggle_server, kaggle_env, tmp_path, content, expected
):
    path = tmp_path / "mine.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)

    stderr = assert_user_error(submit_cli(with_key(kaggle_env, kaggle_server), sample_dir, "--file", path))

    assert expected in stderr
    assert str(path) in stderr
    assert kaggle_server.requests == []  # refused before the client was even started


def test_submissions_prints_a_table_with_message_and_score(kaggle_server, kaggle_env):
    kaggle_server.submissions.extend(
        [
            StandInSubmission(
                ref=1000,
                file_name="a-cv0.97000.csv",
                content=b"x",
                description="run a, CV accuracy 0.97000",
                date=datetime(2024, 5, 6, 7, 8, 9),
                public_score="0.96914",
            ),
            StandInSubmission(
                ref=1001,
                file_name="ensemble-a+b-cv0.98000.csv",
                content=b"y",
                description="my best blend",
                date=datetime(2024, 5, 7, 7, 8, 9),
                public_score="0.98123",
            ),
        ]
    )

    result = digits_cli("submissions", env=with_key(kaggle_env, kaggle_server), timeout=120)

    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["date", "file", "message", "status", "public_score"]
    assert "2024-05-07 07:08:09" in lines[1] and "my best blend" in lines[1] and "0.98123" in lines[1]
    assert "a-cv0.97000.csv" in lines[2] and "run a, CV accuracy 0.97000" in lines[2] and "0.96914" in lines[2]
    assert "COMPLETE" in lines[1] and "COMPLETE" in lines[2]
    assert kaggle_server.key not in result.stdout + result.stderr


def test_submissions_when_there_are_none(kaggle_server, kaggle_env):
    result = digits_cli("submissions", env=with_token(kaggle_env, kaggle_server), timeout=120)

    assert_ok(result)
    assert "no submissions yet for 'digit-recognizer'" in result.stdout


def test_submissions_without_credentials(kaggle_server, kaggle_env):
    stderr = assert_user_error(digits_cli("submissions", env=kaggle_env, timeout=120))

    assert "KAGGLE_API_TOKEN" in stderr and "kaggle.json" in stderr
    assert kaggle_server.requests == []
