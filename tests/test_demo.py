"""`make demo`: the whole pipeline offline on the bundled sample, as a user runs it.

The demo trains the real CNN for 12 epochs on 3 folds: about 7 minutes on 2 cores without AVX-512, the longest
single test, so that run is opt-in (`make test-long`, marker `long`). `make test` runs the same command with the
tiny model for one epoch: every step, folder and file of the demo in about a minute.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from digits.submission import validate_submission_text
from helpers import assert_ok, assert_user_error, run_digits

SAMPLE_TEST_ROWS = 1000


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`make demo` without make, so every path stays in tmp_path."""
    folders = ("--data-dir", tmp_path / "data", "--runs-dir", tmp_path / "runs", "--submissions-dir", tmp_path / "subs")
    return run_digits("demo", *folders, *args, timeout=1200)


def check_demo(result: subprocess.CompletedProcess[str], tmp_path: Path) -> float:
    """The demo's report and submission are where it says, valid, and named after its OOF accuracy (returned)."""
    assert_ok(result)
    report_paths = re.findall(r"^report:\s+(\S+)", result.stdout, re.M)
    submission_paths = re.findall(r"^submission:\s+(\S+)", result.stdout, re.M)
    assert report_paths and submission_paths, result.stdout
    report_html, path = Path(report_paths[-1]), Path(submission_paths[-1])
    assert report_html.is_file() and report_html.parent.parent == tmp_path / "runs"
    assert path.is_file() and path.parent == tmp_path / "subs"
    validate_submission_text(path.read_text(), SAMPLE_TEST_ROWS)
    accuracy = json.loads((report_html.parent / "report.json").read_text())["oof_accuracy"]
    assert path.name == f"{report_html.parent.name}-cv{accuracy:.5f}.csv"
    assert (tmp_path / "data" / "train.csv").is_file()
    assert "== 4/4 done" in result.stdout
    return accuracy


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_offline(tmp_path):
    result = run_demo(tmp_path, "--model", "tiny", "--epochs", "1")

    check_demo(result, tmp_path)
    assert "== 2/4 training: preset quick, tiny, 1 epochs" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(list(run_dir.glob("fold_*/report.json"))) == 3  # the quick preset's 3 folds


@pytest.mark.slow
@pytest.mark.long
def test_the_demo_as_users_run_it_learns_the_digits(tmp_path):
    result = run_demo(tmp_path)

    accuracy = check_demo(result, tmp_path)
    assert "== 2/4 training: preset quick, cnn, 12 epochs" in result.stdout
    assert accuracy >= 0.9, f"demo OOF accuracy {accuracy:.4f}"


def test_demo_with_a_bad_setting_stops_before_writing_anything(tmp_path):
    stderr = assert_user_error(run_demo(tmp_path, "--epochs", "0"))

    assert "EPOCHS=0: train for at least 1 epoch" in stderr
    assert not any(tmp_path.iterdir())
