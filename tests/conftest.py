"""Shared fixtures: the bundled sample, a stand-in Kaggle API that the real `kaggle` client talks to, and tiny
runs trained once per test session for the modules that read them (`shared_runs`). Also the order in which
`make test` hands the modules to its workers (the longest first)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from digits import data
from helpers import assert_ok, train_cli
from kaggle_standin import KaggleStandIn

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ZIP = REPO_ROOT / "data" / "sample" / "digit-recognizer.zip"

# Inherited variables that would change what the client does or where it connects.
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
_NOISE_VARIABLES = ("VERBOSE", "VERBOSE_OUTPUT", "XDG_CONFIG_HOME")


# The modules that take longest, longest first (seconds of one worker on 2 busy cores, session 11: about 280-375,
# 170-270, 135, 100-180, 110 and 100). `make test` hands whole modules to its workers in collection order
# (pytest-xdist's `--dist loadfile --no-loadscope-reorder`): starting the long ones first keeps one worker
# from finishing a long module alone while the others have nothing left to do.
LONGEST_FIRST = (
    "test_train_processes.py",
    "test_submission.py",
    "test_train.py",
    "test_faults.py",
    "test_make.py",
    "test_compare.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # a stable sort: the tests of a module keep their order


@pytest.fixture
def sample_zip() -> Path:
    """The small real sample in the competition's format (train 3,000 rows, test and submission 1,000)."""
    assert SAMPLE_ZIP.is_file(), f"{SAMPLE_ZIP} is missing: it ships with the repository"
    return SAMPLE_ZIP


@pytest.fixture
def kaggle_server(sample_zip: Path) -> Iterator[KaggleStandIn]:
    """A started stand-in Kaggle API serving the sample zip; configure it per test (see kaggle_standin.py)."""
    server = KaggleStandIn()
    server.serve_zip(sample_zip)
    with server:
        yield server


@pytest.fixture
def kaggle_env(kaggle_server: KaggleStandIn, tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess that runs the official client against `kaggle_server`, never the real Kaggle.

    A temporary HOME and KAGGLE_CONFIG_DIR (both empty), no inherited KAGGLE_* variable (so no credentials:
    tests add the ones they need), every proxy variable pointing at the stand-in, and a tiny retry backoff.
    """
    home = tmp_path / "home"
    config_dir = home / ".kaggle"
    config_dir.mkdir(parents=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KAGGLE_") and name not in _PROXY_VARIABLES + _NOISE_VARIABLES
    }
    env.update(
        HOME=str(home),
        KAGGLE_CONFIG_DIR=str(config_dir),
        KAGGLE_API_ENVIRONMENT="LOCALHOST",
        no_proxy="",
        NO_PROXY="",
        DIGITS_DOWNLOAD_BACKOFF="0.01",
        TF_CPP_MIN_LOG_LEVEL="3",  # the CLI may import TensorFlow; keep its start-up chatter out of stderr
    )
    for name in _PROXY_VARIABLES:
        env[name] = kaggle_server.proxy_url
    return env


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The bundled sample's three CSVs, extracted once per session (tests must not modify them)."""
    folder = tmp_path_factory.mktemp("sample")
    with zipfile.ZipFile(SAMPLE_ZIP) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="session")
def sample_train(sample_dir: Path) -> data.TrainData:
    return data.load_train(sample_dir / "train.csv")


@pytest.fixture(scope="session")
def sample_test(sample_dir: Path):
    return data.load_test(sample_dir / "test.csv")


# --- tiny runs that several test modules read ----------------------------------------------------------

# Each is the `tiny` model on the sample, 2 folds, 1 epoch, a fifth of the rows held out of both folds, plus:
SHARED_RUNS = {
    "a": (),  # SEED 42
    "b": ("--epochs", "2"),  # a's folds and holdout, 2 epochs
    "c": ("--seed", "5"),  # other folds and another holdout
    "s7": ("--epochs", "2", "--seed", "7", "--holdout-seed", "42"),  # other folds, a's holdout rows
}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if need be), shared by every process of the test session."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_once(cache: Path, name: str) -> None:
    """Train SHARED_RUNS[name] into cache/runs/<name>, unless it is there or failed before (called under the
    run's lock). It trains in a folder of its own and is moved into cache/runs only once finished, so a
    requester never sees half a run; a failure is recorded, so the next requester fails at once with its
    output instead of training it again."""
    if (cache / "runs" / name).exists():
        return
    failure = cache / f"{name}.failed"
    assert not failure.exists(), f"shared run {name} failed earlier in this session:\n{failure.read_text()}"
    staging = cache / f"staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    args = ("--folds", "2", "--epochs", "1", "--holdout", "0.2", "--run", name, *SHARED_RUNS[name])
    result = train_cli(cache / "sample", staging, *args, timeout=600)
    if result.returncode != 0 or not (staging / name / "report.json").exists():
        failure.write_text(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        assert_ok(result)
        raise AssertionError(f"shared run {name} wrote no report.json:\n{result.stdout}")
    (cache / "runs").mkdir(exist_ok=True)
    os.rename(staging / name, cache / "runs" / name)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Callable[..., Path]:
    """`shared_runs(folder, "a", "c")` copies runs of SHARED_RUNS into `folder` and returns it.

    Each run is trained once per test session, by whichever module asks first, even when pytest-xdist spreads
    the modules over workers (they share the session's temporary folder; a lock per run makes the others
    wait). Every module gets its own copies, so what one writes into a run (a blend, a damaged file) no other
    sees.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    cache = base / "shared-runs"
    cache.mkdir(exist_ok=True)

    def copy_runs(folder: Path, *names: str) -> Path:
        with _locked(cache / "sample.lock"):
            if not (cache / "sample" / "test.csv").exists():
                with zipfile.ZipFile(SAMPLE_ZIP) as archive:
                    archive.extractall(cache / "sample")
        for name in names:
            with _locked(cache / f"{name}.lock"):
                _train_once(cache, name)
            if not (Path(folder) / name).exists():
                shutil.copytree(cache / "runs" / name, Path(folder) / name)
        return Path(folder)

    return copy_runs
