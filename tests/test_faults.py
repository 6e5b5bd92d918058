"""Bad input, faults and interruptions, seen from the command line: clear errors, nothing lost.

Every refusal is checked the way a user meets it: `python -m digits <command>` exits 2 with one `error:` message
and no traceback; the message names the file and line/column (or the setting) and says what to do; and the
folders involved (data, destination, runs, submissions: file names and sha256, hidden files included) are
byte-identical before and after. Where it makes sense the folder already holds valid files (a valid
destination, a finished run, an earlier submission), so "nothing changed" is shown on real content.

Faults covered here: a kill while a file is being written (the generic writers, and the real submission and
report writers stopped just before their rename), a full disk (RLIMIT_FSIZE in the child: writes fail with
EFBIG, which cli.main reports like ENOSPC), two trainings of the same run started together, credentials in
the environment of a training. Covered elsewhere and only referenced (test_referenced_tests_exist keeps
these names honest):
- a training killed with SIGKILL in the middle of a fold (the rerun resumes, finished folds intact):
  test_train_processes.py::test_killed_run_resumes_skips_finished_folds_and_completes;
- a dropped download connection, resumed (test_download.py::test_dropped_connection_is_resumed) or retried
  then a clear error (::test_connection_that_keeps_dropping);
- a kaggle.json readable by others: test_download.py::test_warns_when_kaggle_json_is_readable_by_others;
- a second training refused while a lock is held: test_train.py::test_second_process_on_the_same_run_is_refused.

Timing: a `train` process spends ~5 s importing TensorFlow before it can refuse anything, so the train
matrix (~40 cases) runs in ONE Python process that executes `python -m digits` (runpy, as `-m` does) once per
case with its own argv and captured output; two representative cases also run in fresh processes. Everything
that needs a trained run shares one tiny run (2 folds, 1 epoch), trained by the two-trainings-at-once test.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from digits import data
from digits.submission import validate_submission_text
from helpers import digits_command, run_digits, tiny_train_args

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src" / "digits"
SAMPLE_ZIP = REPO_ROOT / "data" / "sample" / "digit-recognizer.zip"
CSV_NAMES = ("train.csv", "test.csv", "sample_submission.csv")
FIX_HINT = "make download FORCE=1"  # data.FIX_HINT: fetch a fresh copy, or fix the file by hand
SECRETS = {
    "KAGGLE_USERNAME": "sentinel-user-5b1f0c",
    "KAGGLE_KEY": "sentinel-key-9e2d47a1c3f8",
    "KAGGLE_API_TOKEN": "sentinel-token-KGAT_77c1d2e3a4",
}
REFERENCED = {
    "test_train_processes.py": ["test_killed_run_resumes_skips_finished_folds_and_completes"],
    "test_train.py": ["test_second_process_on_the_same_run_is_refused"],
    "test_download.py": [
        "test_dropped_connection_is_resumed",
        "test_connection_that_keeps_dropping",
        "test_warns_when_kaggle_json_is_readable_by_others",
        "test_credentials_are_never_printed",
    ],
}


# --- helpers ------------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Kaggle credentials, TensorFlow start-up chatter off."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAGGLE_")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def digits_cli(
    *args: str | os.PathLike, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess[str]:
    return run_digits(*args, env=env or clean_env(), **kwargs)


def snapshot(*folders: Path, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and folder under `folders`, hidden ones included: path -> sha256, '<dir>' or '<absent>'."""
    state: dict[str, str] = {}
    for folder in folders:
        if not folder.exists():
            state[str(folder)] = "<absent>"
            continue
        for path in sorted(folder.rglob("*")):
            if path.name in ignore:
                continue
            state[str(path)] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_refused(result: subprocess.CompletedProcess[str], where: list[str], hint: str) -> str:
    """Exit 2, no traceback, one `error:` message naming `where` and saying `hint`; returns the message."""
    report = f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 2, report
    assert "Traceback" not in result.stderr, report
    assert "error: " in result.stderr, report
    message = result.stderr[result.stderr.index("error: ") :].strip()
    for part in where:
        assert part in message, f"{part!r} not in the message:\n{message}"
    assert hint in message, f"no hint {hint!r} in the message:\n{message}"
    print(message)  # shown by `pytest -rP`: the table of messages
    return message


def copy_run(run_dir: Path, runs_dir: Path) -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(run_dir, runs_dir / run_dir.name))


def hidden_temps(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob(".*.tmp*"))


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed or removed meanwhile
        return -1


def limit_file_size(limit: int) -> Callable[[], None]:
    """preexec_fn: the child cannot grow any file beyond `limit` bytes; writes then fail with EFBIG (a full disk)."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


# --- the bundled sample, cut into small valid CSVs that each case spoils in one place -----------------


@dataclass(frozen=True)
class Csv:
    header: bytes
    rows: list[bytes]

    @property
    def columns(self) -> list[str]:
        return self.header.decode().split(",")

    def text(self, rows: list[bytes] | None = None, header: bytes | None = None) -> bytes:
        return (
            (self.header if header is None else header)
            + b"\n"
            + b"\n".join(self.rows if rows is None else rows)
            + b"\n"
        )

    def head(self, n: int, start: int = 0) -> Csv:
        return Csv(self.header, self.rows[start : start + n])


@pytest.fixture(scope="module")
def sample(sample_dir: Path) -> dict[str, Csv]:
    parts = {}
    for name in CSV_NAMES:
        header, _, body = (sample_dir / name).read_bytes().partition(b"\n")
        parts[name] = Csv(header, body.rstrip(b"\n").split(b"\n"))
    return parts


def small_set(sample: dict[str, Csv]) -> dict[str, bytes]:
    """A valid small data set: 100 train rows, 40 test rows and the 40-row sample_submission.csv."""
    return {
        "train.csv": sample["train.csv"].head(100).text(),
        "test.csv": sample["test.csv"].head(40).text(),
        "sample_submission.csv": sample["sample_submission.csv"].head(40).text(),
    }


def other_valid_set(sample: dict[str, Csv]) -> dict[str, bytes]:
    """Another valid set (other rows than small_set): what a destination already holds."""
    return {
        "train.csv": sample["train.csv"].head(100, start=200).text(),
        "test.csv": sample["test.csv"].head(30, start=100).text(),
        "sample_submission.csv": sample["sample_submission.csv"].head(30).text(),
    }


def write_folder(folder: Path, files: dict[str, bytes | None]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if content is not None:
            (folder / name).write_bytes(content)
    return folder


ROW = 3  # the data row that cell cases spoil: line 5 of the file
CELL = "pixel100"


def _set_cell(csv: Csv, column: str, value: bytes) -> bytes:
    rows = list(csv.rows)
    cells = rows[ROW].split(b",")
    cells[csv.columns.index(column)] = value
    rows[ROW] = b",".join(cells)
    return csv.text(rows)


def _drop_last_column(csv: Csv) -> bytes:
    return csv.text([row.rsplit(b",", 1)[0] for row in csv.rows], header=csv.header.rsplit(b",", 1)[0])


def _swap_first_pixels(csv: Csv) -> bytes:
    return csv.text(header=csv.header.replace(b"pixel0,pixel1,", b"pixel1,pixel0,", 1))


def _truncate_last_line(csv: Csv) -> bytes:
    rows = list(csv.rows)
    rows[-1] = rows[-1][: len(rows[-1]) // 2]
    return csv.text(rows).rstrip(b"\n")  # as a copy cut short leaves it: no final newline


def _duplicate_header(csv: Csv) -> bytes:
    rows = list(csv.rows)
    rows.insert(ROW, csv.header)
    return csv.text(rows)


@dataclass(frozen=True)
class CsvCase:
    """One way to spoil a CSV: the content (None: no file), where the error must point, what it must advise."""

    make: Callable[[Csv], bytes | None]
    where: Callable[[Csv], str]  # after "<path>: "
    hint: str = FIX_HINT
    only: str | None = None  # "train.csv" or "test.csv" when the case exists for one file only


CSV_CASES: dict[str, CsvCase] = {
    "missing": CsvCase(lambda c: None, lambda c: "file not found", hint="Run `make download` first"),
    "empty": CsvCase(lambda c: b"", lambda c: "the file is empty"),
    "header-only": CsvCase(lambda c: c.header + b"\n", lambda c: "the file has a header but no data rows"),
    "missing-column": CsvCase(_drop_last_column, lambda c: "line 1 (header): missing column(s) 'pixel783'"),
    "extra-column": CsvCase(
        lambda c: c.text([row + b",0" for row in c.rows], header=c.header + b",pixel784"),
        lambda c: "line 1 (header): unexpected column(s) 'pixel784'",
    ),
    "misordered-columns": CsvCase(
        _swap_first_pixels, lambda c: f"line 1 (header): columns out of order: column {c.columns.index('pixel0') + 1}"
    ),
    "label-column": CsvCase(
        lambda c: c.text([b"3," + row for row in c.rows], header=b"label," + c.header),
        lambda c: "line 1 (header): column 1 is 'label'",
        only="test.csv",
    ),
    "text": CsvCase(lambda c: _set_cell(c, CELL, b"abc"), lambda c: f"line {ROW + 2}, column '{CELL}': 'abc' is not"),
    "float": CsvCase(
        lambda c: _set_cell(c, CELL, b"12.5"), lambda c: f"line {ROW + 2}, column '{CELL}': '12.5' is a decimal"
    ),
    "negative": CsvCase(
        lambda c: _set_cell(c, CELL, b"-3"), lambda c: f"line {ROW + 2}, column '{CELL}': pixel value -3 is outside"
    ),
    "over-255": CsvCase(
        lambda c: _set_cell(c, CELL, b"256"), lambda c: f"line {ROW + 2}, column '{CELL}': pixel value 256 is outside"
    ),
    "label-out-of-range": CsvCase(
        lambda c: _set_cell(c, "label", b"10"),
        lambda c: f"line {ROW + 2}, column 'label': label value 10 is outside 0..9",
        only="train.csv",
    ),
    "missing-value": CsvCase(
        lambda c: _set_cell(c, CELL, b""), lambda c: f"line {ROW + 2}, column '{CELL}': missing value"
    ),
    "truncated-last-line": CsvCase(
        _truncate_last_line, lambda c: f"line {len(c.rows) + 1}: too few values (is the line truncated?)"
    ),
    "duplicated-header": CsvCase(
        _duplicate_header, lambda c: f"line {ROW + 2}, column '{c.columns[0]}': found the header again"
    ),
}
BAD_CSVS = [
    f"{name}:{case}"
    for name in ("train.csv", "test.csv")
    for case, spec in CSV_CASES.items()
    if spec.only in (None, name)
]
ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "crlf": lambda raw: raw.replace(b"\n", b"\r\n"),
    "bom": lambda raw: data.BOM + raw,
    "bom+crlf": lambda raw: data.BOM + raw.replace(b"\n", b"\r\n"),
}


def parse(raw: bytes) -> Csv:
    header, *rows = raw.rstrip(b"\n").split(b"\n")
    return Csv(header, rows)


def spoil(case_id: str, files: dict[str, bytes]) -> tuple[dict[str, bytes | None], str, str]:
    """`files` with one CSV spoiled as `case_id` ('test.csv:float') says; returns them, the file, the case."""
    name, case = case_id.split(":")
    return {**files, name: CSV_CASES[case].make(parse(files[name]))}, name, case


def expected_where(case_id: str, files: dict[str, bytes], shown_as: str) -> str:
    """What the message must say about the spoiled file, shown as `shown_as` (its path)."""
    name, case = case_id.split(":")
    return f"{shown_as}: {CSV_CASES[case].where(parse(files[name]))}"


# --- one tiny finished run for the module, trained by two `train` processes started together -----------


@dataclass(frozen=True)
class SharedRun:
    run_dir: Path
    results: list[subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def shared_run(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """Run `shared` (tiny, 2 folds, 1 epoch): two `python -m digits train` of it started at the same moment,
    with sentinel Kaggle credentials in their environment. One trains it; the other must be refused."""
    runs_dir = tmp_path_factory.mktemp("shared-runs")
    command = digits_command(*tiny_train_args(sample_dir, runs_dir, "--folds", "2", "--epochs", "1"))
    command += ["--run", "shared"]
    env = clean_env(**SECRETS)
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    run_dir = runs_dir / "shared"
    assert (run_dir / "report.html").is_file(), "\n".join(r.stderr[-2000:] for r in results)
    return SharedRun(run_dir, results)


# --- 1. bad input: train.csv / test.csv / config through `train` ---------------------------------------

CONFIG_CASES: dict[str, tuple[list[str], list[str], str]] = {
    # case: (extra train arguments, where, hint); "--run shared" cases target the finished run copied beside
    "unknown-preset": (["--preset", "nope"], ["unknown preset 'nope'"], "choose one of: quick, default, max"),
    "unknown-model": (["--model", "resnet999"], ["unknown model 'resnet999'"], "choose one of:"),
    "folds-1": (["--folds", "1"], ["FOLDS=1"], "at least 2 folds"),
    "folds-above-smallest-class": (["--folds", "1000"], ["FOLDS=1000", "smallest class"], "Use FOLDS<="),
    "only-missing-fold": (["--run", "shared", "--only", "7"], ["ONLY=7", "fold(s) [7] do not exist"], "0..1"),
    "only-missing-fold-new-run": (["--folds", "3", "--only", "0,3"], ["ONLY=0,3", "fold(s) [3]"], "0..2"),
    "epochs-0": (["--epochs", "0"], ["EPOCHS=0"], "train for at least 1 epoch"),
    "negative-holdout": (["--holdout=-0.1"], ["HOLDOUT=-0.1"], "e.g. 0.1"),
}
CONFIG_IDS = [f"config:{case}" for case in CONFIG_CASES]
ACCEPTED_TRAIN_IDS = [f"train.csv:{encoding}" for encoding in ENCODINGS]


@dataclass(frozen=True)
class TrainCase:
    argv: list[str]
    watched: list[Path]  # folders that must not change
    where: list[str]
    hint: str


def prepare_train_case(case_id: str, root: Path, sample: dict[str, Csv], sample_dir: Path, run_dir: Path) -> TrainCase:
    """The folders and arguments of one train case, under `root`."""
    folder = root / case_id.replace(":", "-")
    runs_dir = folder / "runs"
    if case_id.startswith("config:"):
        args, where, hint = CONFIG_CASES[case_id.split(":")[1]]
        copy_run(run_dir, runs_dir)  # a finished run beside: it must stay as it is
        run = [] if "--run" in args else ["--run", "new"]
        return TrainCase(tiny_train_args(sample_dir, runs_dir, *args, *run), [runs_dir], where, hint)
    if case_id in ACCEPTED_TRAIN_IDS:  # resuming the finished run re-reads and re-validates train.csv
        encode = ENCODINGS[case_id.split(":")[1]]
        data_dir = write_folder(folder / "data", {"train.csv": encode((sample_dir / "train.csv").read_bytes())})
        copy_run(run_dir, runs_dir)
        return TrainCase(tiny_train_args(data_dir, runs_dir, "--run", "shared"), [data_dir, runs_dir], [], "")
    files, name, _ = spoil(case_id, small_set(sample))
    del files["sample_submission.csv"]  # training does not read it
    data_dir = write_folder(folder / "data", files)
    runs_dir.mkdir(parents=True)
    where = expected_where(case_id, small_set(sample), str(data_dir / name))
    return TrainCase(
        tiny_train_args(data_dir, runs_dir, "--run", "new"),
        [data_dir, runs_dir],
        [where],
        CSV_CASES[case_id.split(":")[1]].hint,
    )


# Runs `python -m digits` (runpy, exactly what -m does) once per case in this one process, so that TensorFlow
# is imported once; each case gets its own argv, stdout, stderr and exit status.
DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
cases_file, results_file = sys.argv[1:3]
cases = json.loads(open(cases_file).read())
results = {}
for case_id, argv in cases.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = ["digits", *argv]
        try:
            runpy.run_module("digits", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results[case_id] = [code, out.getvalue(), err.getvalue()]
open(results_file, "w").write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def train_matrix(shared_run, sample, sample_dir, tmp_path_factory):
    """Every train case prepared, snapshotted, run through the driver; case id -> (case, result, snapshot before)."""
    root = tmp_path_factory.mktemp("train-matrix")
    cases = {
        case_id: prepare_train_case(case_id, root, sample, sample_dir, shared_run.run_dir)
        for case_id in [*BAD_CSVS, *CONFIG_IDS, *ACCEPTED_TRAIN_IDS]
    }
    before = {case_id: snapshot(*case.watched, ignore=(".lock",)) for case_id, case in cases.items()}
    (root / "cases.json").write_text(json.dumps({case_id: case.argv for case_id, case in cases.items()}))
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, str(root / "cases.json"), str(root / "results.json")],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    return {
        case_id: (case, subprocess.CompletedProcess(case.argv, *results[case_id]), before[case_id])
        for case_id, case in cases.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("case_id", [*BAD_CSVS, *CONFIG_IDS])
def test_train_refuses_bad_input_and_changes_nothing(train_matrix, case_id):
    case, result, before = train_matrix[case_id]

    assert_refused(result, case.where, case.hint)
    assert snapshot(*case.watched, ignore=(".lock",)) == before
    assert not any((folder / "new").exists() for folder in case.watched), "a run folder was created"


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ACCEPTED_TRAIN_IDS)
def test_train_accepts_crlf_and_a_bom(train_matrix, case_id):
    case, result, before = train_matrix[case_id]

    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to train" in result.stdout  # train.csv was read, validated and matched to folds.csv
    assert snapshot(*case.watched, ignore=(".lock",)) == before


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["test.csv:missing-column", "config:folds-above-smallest-class"])
def test_train_refusal_in_a_fresh_process(shared_run, sample, sample_dir, tmp_path, case_id):
    """The same as the matrix, in a real `python -m digits train` process (the two cases that used to leave a
    run folder behind: a bad test.csv and too many folds were found only after config.json was written)."""
    case = prepare_train_case(case_id, tmp_path, sample, sample_dir, shared_run.run_dir)
    before = snapshot(*case.watched)

    assert_refused(digits_cli(*case.argv), case.where, case.hint)
    assert snapshot(*case.watched) == before


# --- 1. bad input: `download --source` (CSV folders and zips) -------------------------------------------


@pytest.fixture
def valid_dest(sample, tmp_path) -> Path:
    """A destination already holding valid CSVs (not the ones any case would install)."""
    return write_folder(tmp_path / "raw", other_valid_set(sample))


@pytest.mark.parametrize("case_id", BAD_CSVS)
def test_download_refuses_a_bad_csv_and_leaves_dest_as_it_was(
    sample, valid_dest, kaggle_server, kaggle_env, tmp_path, case_id
):
    files, name, case = spoil(case_id, small_set(sample))
    source = write_folder(tmp_path / "from-browser", files)
    before = snapshot(valid_dest, source)

    result = digits_cli("download", "--source", source, "--dest", valid_dest, "--force", env=kaggle_env)

    if case == "missing":
        assert_refused(result, [f"{source}: missing {name}"], "SOURCE must be the competition zip or a folder")
    else:
        where = expected_where(case_id, small_set(sample), str(source / name))
        # not FORCE=1 alone, which would copy the same bad file again
        hint = "Fix the file, or download the competition zip and run `make download SOURCE="
        assert_refused(result, [f"nothing was installed in {valid_dest}", where], hint)
        assert FIX_HINT not in result.stderr
    assert snapshot(valid_dest, source) == before
    assert kaggle_server.requests == []


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_download_accepts_crlf_and_a_bom(sample, valid_dest, kaggle_env, tmp_path, encoding):
    files = {name: ENCODINGS[encoding](content) for name, content in small_set(sample).items()}
    source = write_folder(tmp_path / "from-windows", files)

    result = digits_cli("download", "--source", source, "--dest", valid_dest, "--force", env=kaggle_env)

    assert result.returncode == 0, result.stderr
    assert "train.csv 100 rows, test.csv 40 rows" in result.stdout
    assert {name: (valid_dest / name).read_bytes() for name in CSV_NAMES} == files  # installed as given


def write_zip(path: Path, members: dict[str | zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def declare_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size that `member`'s local header and central directory entry declare."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(member).header_offset
    raw[local + 22 : local + 26] = size.to_bytes(4, "little")
    central = raw.find(b"PK\x01\x02")
    while raw[central + 46 : central + 46 + len(member)] != member.encode():
        central = raw.find(b"PK\x01\x02", central + 1)
    raw[central + 24 : central + 28] = size.to_bytes(4, "little")
    path.write_bytes(bytes(raw))


ZIP_CASES = [
    "not-a-zip",
    "member-missing",
    "dotdot-member",
    "absolute-member",
    "bomb-by-ratio",
    "member-lies-about-size",
]


@pytest.mark.parametrize("case", ZIP_CASES)
def test_download_refuses_a_bad_zip_and_leaves_dest_as_it_was(
    sample, valid_dest, kaggle_server, kaggle_env, tmp_path, case
):
    members: dict[str | zipfile.ZipInfo, bytes] = dict(small_set(sample))
    source = tmp_path / "digit-recognizer.zip"
    outside = tmp_path / "outside"
    outside.mkdir()
    if case == "not-a-zip":
        source.write_bytes(b"<html>Sign in to Kaggle</html>\n" * 100)
        where = [f"{source}: not a valid zip file"]
    elif case == "member-missing":
        del members["test.csv"]
        write_zip(source, members)
        where = [f"{source}: missing test.csv"]
    elif case in ("dotdot-member", "absolute-member"):
        evil = "../outside/evil.csv" if case == "dotdot-member" else str(outside / "evil.csv")
        write_zip(source, {zipfile.ZipInfo(evil): b"label\n1\n", **members})
        where = [f"{source}: refusing member '{evil}'"]
    elif case == "bomb-by-ratio":
        members["train.csv"] = sample["train.csv"].header + b"\n" + (b"0," * 784 + b"0\n") * 4000
        write_zip(source, members)
        where = [f"{source}: member 'train.csv' declares", "zip bomb"]
    else:  # declares 1,000 bytes, inflates to 180 KB
        write_zip(source, members)
        declare_size(source, "train.csv", 1000)
        where = [f"{source}: member 'train.csv' is corrupt"]
    before = snapshot(valid_dest, outside)

    result = digits_cli("download", "--source", source, "--dest", valid_dest, "--force", env=kaggle_env)

    # The same advice for every bad zip given as SOURCE: FORCE=1 alone would read the same zip again.
    hint = "Download the zip again (https://www.kaggle.com/competitions/digit-recognizer/data) and rerun "
    message = assert_refused(result, where, hint + f"`make download SOURCE={source} FORCE=1`.")
    assert "Fetch it again" not in message
    assert snapshot(valid_dest, outside) == before
    assert list(tmp_path.rglob("evil.csv")) == []
    assert kaggle_server.requests == []


# --- 1. bad input: a submission to upload ----------------------------------------------------------------

SUBMISSION_ROWS = 1000  # the sample's sample_submission.csv


def submission_lines() -> list[str]:
    return ["ImageId,Label", *(f"{image_id},{image_id % 10}" for image_id in range(1, SUBMISSION_ROWS + 1))]


SUBMISSION_CASES: dict[str, tuple[Callable[[list[str]], list[str]], str]] = {
    # case: (spoil the lines, where after "<path>: ")
    "wrong-header": (lambda lines: ["ImageId,Prediction", *lines[1:]], "line 1: header is 'ImageId,Prediction'"),
    "wrong-row-count": (lambda lines: lines[:501], "has 500 rows, expected 1000"),
    "missing-imageid": (
        lambda lines: lines[:17] + lines[18:],
        "has 999 rows, expected 1000 (one per test image); missing ImageId 17",
    ),
    "duplicate-imageid": (
        lambda lines: [*lines[:18], "17,5", *lines[19:]],
        "line 19, column 'ImageId': 17 appears twice",
    ),
    "extra-imageid": (lambda lines: [*lines, "1001,3"], "line 1002, column 'ImageId': 1001 is outside 1..1000"),
    "label-out-of-range": (
        lambda lines: [*lines[:5], "5,10", *lines[6:]],
        "line 6, column 'Label': 10 is outside 0..9",
    ),
    "label-not-a-digit": (lambda lines: [*lines[:5], "5,-1", *lines[6:]], "line 6, column 'Label': '-1' is not"),
}


@pytest.mark.parametrize("case", SUBMISSION_CASES)
def test_submit_refuses_a_bad_submission_and_uploads_nothing(sample_dir, kaggle_server, kaggle_env, tmp_path, case):
    spoil_lines, where = SUBMISSION_CASES[case]
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    (submissions / "earlier-cv0.99000.csv").write_text("\n".join(submission_lines()) + "\n")
    path = submissions / "mine.csv"
    path.write_text("\n".join(spoil_lines(submission_lines())) + "\n")
    env = {**kaggle_env, "KAGGLE_USERNAME": kaggle_server.username, "KAGGLE_KEY": kaggle_server.key}
    before = snapshot(submissions, sample_dir)

    result = digits_cli("submit", "--file", path, "--data-dir", sample_dir, "--poll-interval", "0.1", env=env)

    assert_refused(result, [f"{path}: {where}"], "make submission")
    assert snapshot(submissions, sample_dir) == before
    assert kaggle_server.requests == [] and kaggle_server.submissions == []


# --- 2. faults: killed while writing -----------------------------------------------------------------------

BIG = 128 << 20
WRITERS = {
    "write_bytes": f"import sys\nfrom digits import fileio\nfileio.write_bytes(sys.argv[1], bytes({BIG}))\n",
    "atomic_open": (
        "import sys\nfrom digits import fileio\nwith fileio.atomic_open(sys.argv[1], 'wb') as out:\n"
        f"    for _ in range({BIG >> 20}):\n        out.write(bytes(1 << 20))\n"
    ),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_killed_mid_write_leaves_the_old_file_and_only_a_hidden_temp(tmp_path, writer):
    final = tmp_path / "report.html"
    old = b"<html>the previous, complete report</html>\n"
    for _attempt in range(5):
        final.write_bytes(old)
        process = subprocess.Popen([sys.executable, "-c", WRITERS[writer], str(final)])
        temp = None
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            found = [p for p in tmp_path.glob(".report.html.*") if size(p) >= 1 << 20]
            if found:
                temp = found[0]
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        process.wait(timeout=60)
        if temp is None:  # finished before it could be caught: the new file must then be complete
            assert final.stat().st_size == BIG
            continue
        assert process.returncode == -signal.SIGKILL
        assert final.read_bytes() == old  # the final name never saw the partial file
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, temp.name])
        assert fnmatch.fnmatch(temp.name, ".report.html.*.tmp.html")
        temp.unlink()
        return
    pytest.fail("the writer was never caught in the middle of a write")


# The real writer, stopped just before it renames its complete temporary file into place (the last moment a
# kill can hit): `os.replace`, or `os.link` for files that are never overwritten (submissions). Both are looked
# up at call time, so the child patches them for the one file under test.
STALL_BEFORE_RENAME = r"""
import fnmatch, os, sys, time
pattern = sys.argv[1]
def stalled(real):
    def put_in_place(src, dst, *args, **kwargs):
        if fnmatch.fnmatch(os.path.basename(os.fspath(dst)), pattern):
            print("STALLED before renaming", src, flush=True)
            time.sleep(600)
        return real(src, dst, *args, **kwargs)
    return put_in_place
os.replace = stalled(os.replace)
os.link = stalled(os.link)
sys.argv = ["digits", *sys.argv[2:]]
from digits.cli import main
raise SystemExit(main())
"""


def run_until_stalled(pattern: str, argv: list[str], timeout: float = 300) -> None:
    """Run `python -m digits <argv>` until it is about to rename a file matching `pattern`, then SIGKILL it."""
    process = subprocess.Popen(
        [sys.executable, "-c", STALL_BEFORE_RENAME, pattern, *argv],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("STALLED"):
                os.kill(process.pid, signal.SIGKILL)
                break
        process.wait(timeout=60)
    finally:
        watchdog.cancel()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL and lines[-1].startswith("STALLED"), "".join(lines[-30:])


@pytest.mark.slow
def test_killed_while_writing_a_submission(shared_run, sample_dir, tmp_path):
    run_dir = copy_run(shared_run.run_dir, tmp_path / "runs")
    submissions = tmp_path / "submissions"
    argv = ["submission", "--run", run_dir.name, "--runs-dir", run_dir.parent, "--data-dir", sample_dir]
    argv = [*map(str, argv), "--submissions-dir", str(submissions)]

    run_until_stalled("shared-cv*.csv", argv)

    assert [p.name for p in submissions.iterdir() if not p.name.startswith(".")] == []  # no file under its name
    (temp,) = submissions.iterdir()
    assert fnmatch.fnmatch(temp.name, ".shared-cv*.csv.*.tmp*.csv")  # .<name>.<random>.tmp<suffixes>
    rerun = digits_cli(*argv)
    assert rerun.returncode == 0, rerun.stderr
    (path,) = [p for p in submissions.iterdir() if not p.name.startswith(".")]
    validate_submission_text(path.read_text(), SUBMISSION_ROWS)


@pytest.mark.slow
def test_killed_while_writing_the_run_report(shared_run, sample_dir, tmp_path):
    """Killed while report.html is written: the rerun writes it (report.json, which marks a finished run's
    report as done, is written after report.html, so it cannot claim a report that is not there)."""
    run_dir = copy_run(shared_run.run_dir, tmp_path / "runs")
    for name in ("report.json", "report.html"):
        (run_dir / name).unlink()
    folds_before = snapshot(*sorted(run_dir.glob("fold_*")))
    argv = tiny_train_args(sample_dir, run_dir.parent, "--run", run_dir.name)

    run_until_stalled("report.html", argv)

    assert not (run_dir / "report.html").exists()
    assert not (run_dir / "report.json").exists()
    assert [name for name in hidden_temps(run_dir) if not fnmatch.fnmatch(name, ".report.html.*.tmp.html")] == []
    rerun = digits_cli(*argv)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (run_dir / "report.html").read_text().rstrip().endswith("</body></html>")
    assert json.loads((run_dir / "report.json").read_text())["oof_rows"] == 3000
    assert snapshot(*sorted(run_dir.glob("fold_*"))) == folds_before  # finished folds untouched


# --- 2. faults: a full disk ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    ["download", pytest.param("submission", marks=pytest.mark.slow), pytest.param("train", marks=pytest.mark.slow)],
)
def test_full_disk_is_a_clear_error_and_loses_nothing(request, sample, sample_dir, tmp_path, command):
    """Writes fail with EFBIG (RLIMIT_FSIZE) as on a full disk: exit 2 with the disk-full message, no file under
    a final name is truncated, no temporary file is left, and every file that existed is unchanged."""
    if command == "download":  # 1 MB: train.csv (5.5 MB) cannot be extracted
        dest = write_folder(tmp_path / "raw", other_valid_set(sample))
        watched, limit = [dest], 1 << 20
        argv = ["download", "--source", SAMPLE_ZIP, "--dest", dest, "--force"]
        writing = str(dest / ".extract" / "train.csv")
    else:
        run_dir = copy_run(request.getfixturevalue("shared_run").run_dir, tmp_path / "runs")
        submissions = write_folder(tmp_path / "submissions", {"earlier-cv0.99000.csv": b"ImageId,Label\n1,3\n"})
        watched = [run_dir, submissions]
        if command == "submission":  # 16 KB: the blended probabilities (40 KB) cannot be saved
            limit = 16 << 10
            argv = ["submission", "--run", run_dir.name, "--runs-dir", run_dir.parent, "--data-dir", sample_dir]
            argv += ["--submissions-dir", submissions]
            writing = str(run_dir / "blend_test_probs.npy")
        else:  # the run report of a finished run again: its oof.csv (317 KB) cannot be rewritten at 64 KB
            for name in ("report.json", "report.html"):
                (run_dir / name).unlink()
            limit = 64 << 10
            argv = tiny_train_args(sample_dir, run_dir.parent, "--run", run_dir.name)
            writing = str(run_dir / "oof.csv")
    before = snapshot(*watched, ignore=(".lock",))

    result = digits_cli(*argv, preexec_fn=limit_file_size(limit))

    message = assert_refused(result, [f"the disk is full while writing {writing}"], "Free some space and rerun")
    assert "File too large" in message  # EFBIG: what a full disk looks like here
    assert snapshot(*watched, ignore=(".lock",)) == before
    assert [hidden_temps(folder) for folder in watched] == [[] for _ in watched]


def test_full_disk_during_a_kaggle_download_is_not_blamed_on_the_network(valid_dest, kaggle_server, kaggle_env):
    """The official client's write of the zip fails with EFBIG: the disk-full message at once, not four retries
    ending in "could not reach Kaggle"; the CSVs in place are untouched and what arrived is kept to resume."""
    before = snapshot(valid_dest)
    env = {**kaggle_env, "KAGGLE_USERNAME": kaggle_server.username, "KAGGLE_KEY": kaggle_server.key}
    limit = 256 << 10  # the sample zip is 856 KB

    result = digits_cli("download", "--dest", valid_dest, "--force", env=env, preexec_fn=limit_file_size(limit))

    partial = valid_dest / ".download" / "digit-recognizer.zip"
    message = assert_refused(result, [f"the disk is full while writing {partial}"], "Free some space and rerun")
    assert "could not reach Kaggle" not in message and "retry" not in result.stdout.lower()
    assert len(kaggle_server.api_calls("DownloadDataFiles")) == 1  # not retried by us
    assert len(kaggle_server.data_requests()) == 1  # nor by the client (until session 20: 5 times, for 62 s)
    assert 0 < partial.stat().st_size <= limit  # kept: the next `make download` resumes from it
    assert {k: v for k, v in snapshot(valid_dest).items() if ".download" not in k} == before
    assert hidden_temps(valid_dest) == []


# --- 2. faults: two trainings of the same run at once ------------------------------------------------------


@pytest.mark.slow
def test_two_trainings_of_the_same_run_at_once(shared_run):
    """Both started together: one trains the run, the other is refused through the run's lock file."""
    trained, refused = sorted(shared_run.results, key=lambda result: result.returncode)

    assert trained.returncode == 0, trained.stderr[-3000:]
    assert_refused(refused, [f"{shared_run.run_dir} is being trained by process"], "RUN=<new name>")
    assert refused.stdout == ""  # refused before it printed (or did) anything
    assert "report: " in trained.stdout


# --- 3. credentials ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_credentials_never_reach_a_run_folder_a_report_or_the_output(shared_run):
    for result in shared_run.results:
        for secret in SECRETS.values():
            assert secret not in result.stdout and secret not in result.stderr
    files = [path for path in shared_run.run_dir.rglob("*") if path.is_file()]
    assert {"config.json", "report.html", "report.json", "oof.csv"} <= {path.name for path in files}
    for path in files:
        content = path.read_bytes()
        for secret in SECRETS.values():
            assert secret.encode() not in content, f"{secret} written into {path}"


@pytest.mark.slow
def test_the_config_saved_with_a_run_holds_no_secret(shared_run):
    from digits.config import Config

    saved = json.loads((shared_run.run_dir / "config.json").read_text())

    assert set(saved) == {"config", "data_dir", "created", "versions", "git_sha", "cores"}
    assert set(saved["config"]) == set(Config.__dataclass_fields__)
    flat = json.dumps(saved).lower()
    assert not any(word in flat for word in ("kaggle_", "password", "secret", "token", '"key"'))


# --- 4. safe loading: Keras safe mode, no pickle -------------------------------------------------------------

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
UNSAFE_CALLS = {"read_pickle", "to_pickle", "enable_unsafe_deserialization"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _is_constant(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loading(source: str, name: str = "<source>") -> list[str]:
    """Every place in `source` that could unpickle: pickle-family imports, allow_pickle not False, a Keras
    load_model without safe_mode=True (or any safe_mode not True), np.load with a positional allow_pickle."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"{where}: imports {m}" for m in modules if m.split(".")[0] in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        call = _dotted(node.func)
        last = call.rsplit(".", 1)[-1]
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        if "allow_pickle" in keywords and not _is_constant(keywords["allow_pickle"], False):
            problems.append(f"{where}: {call}(allow_pickle=...) not False")
        if last == "load_model" and not _is_constant(keywords.get("safe_mode"), True):
            problems.append(f"{where}: {call}() without safe_mode=True")
        if "safe_mode" in keywords and not _is_constant(keywords["safe_mode"], True):
            problems.append(f"{where}: {call}(safe_mode=...) not True")
        if last in UNSAFE_CALLS:
            problems.append(f"{where}: {call}()")
        if call in ("np.load", "numpy.load") and len(node.args) >= 3:
            problems.append(f"{where}: {call}() with a positional allow_pickle")
    return problems


def test_src_loads_models_in_safe_mode_and_unpickles_nothing():
    sources = {path: path.read_text() for path in sorted(SRC.rglob("*.py"))}

    problems = [problem for path, text in sources.items() for problem in unsafe_loading(text, path.name)]

    assert problems == []
    text = "\n".join(sources.values())
    assert text.count("load_model(") >= 2 and text.count("np.load(") >= 3  # the checker saw the real calls


@pytest.mark.parametrize(
    ("snippet", "unsafe"),
    [
        ("import pickle", True),
        ("from joblib import load", True),
        ("import numpy as np\nnp.load(path, allow_pickle=True)", True),
        ("np.load(path, None, True)", True),
        ("np.load(path)", False),
        ("np.load(path, allow_pickle=False)", False),
        ("keras.saving.load_model(path)", True),
        ("keras.models.load_model(path, safe_mode=False)", True),
        ("load_model(path, **options)", True),
        ("keras.saving.load_model(path, safe_mode=True)", False),
        ("keras.config.enable_unsafe_deserialization()", True),
        ("pd.read_pickle(path)", True),
    ],
)
def test_the_safe_loading_check_catches_what_it_should(snippet, unsafe):
    assert bool(unsafe_loading(snippet)) == unsafe


def test_referenced_tests_exist():
    for file, names in REFERENCED.items():
        tree = ast.parse((Path(__file__).parent / file).read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert set(names) <= defined, f"{file} no longer has {set(names) - defined}"
