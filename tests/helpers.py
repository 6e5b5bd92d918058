"""Helpers shared by the test modules: running the command line as a user would."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def digits_command(*args: str | os.PathLike) -> list[str]:
    """The argv of `python -m digits <args>` with this interpreter."""
    return [sys.executable, "-m", "digits", *map(str, args)]


def run_digits(
    *args: str | os.PathLike, env: dict[str, str] | None = None, timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess[str]:
    """Run `python -m digits <args>` and capture its output (TensorFlow's C++ chatter silenced)."""
    return subprocess.run(
        digits_command(*args),
        env=env or {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=False,
        **kwargs,
    )


def tiny_train_args(data_dir: Path, runs_dir: Path, *args: str | os.PathLike) -> list[str]:
    """`train` arguments for a quick run of the tiny model: seconds on the bundled sample."""
    return [
        "train",
        "--data-dir",
        str(data_dir),
        "--runs-dir",
        str(runs_dir),
        "--preset",
        "quick",
        "--model",
        "tiny",
        *map(str, args),
    ]


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_user_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 with one `error:` message and no traceback; returns stderr."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "error: " in result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


# What a finished tiny run holds: in every fold folder, and in the run folder.
FOLD_FILES = {
    "model.keras",
    "history.csv",
    "oof.npy",
    "test_probs.npy",
    "report.json",
    "curves.png",
    "confusion.png",
    "errors.png",
}
RUN_FILES = {"config.json", "folds.csv", "oof.csv", "report.json", "report.html", "oof_confusion.png", "samples.png"}


def train_cli(sample_dir: Path, runs_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m digits train` of the tiny model (`tiny_train_args`) with `args`."""
    return run_digits(*tiny_train_args(sample_dir, runs_dir, *args), timeout=timeout)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
