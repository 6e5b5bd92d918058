"""Shared fixtures: the bundled sample, and a stand-in Kaggle API that the real `kaggle` client talks to."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from digits import data
from kaggle_standin import KaggleStandIn

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ZIP = REPO_ROOT / "data" / "sample" / "digit-recognizer.zip"

# Inherited variables that would change what the client does or where it connects.
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
_NOISE_VARIABLES = ("VERBOSE", "VERBOSE_OUTPUT", "XDG_CONFIG_HOME")


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
