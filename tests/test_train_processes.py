"""Training in processes: each fold in its own, a run killed or interrupted and resumed, folds trained apart
(`ONLY`), a full disk inside a fold's process, deterministic runs, mixed architectures.

Split from test_train.py so that pytest-xdist can run the two halves on different workers. These train
real (tiny) models through the command line, so they are marked slow; they still run in `make test` and CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import FOLD_FILES, RUN_FILES, digest, digits_command, run_digits, tiny_train_args, train_cli

pytestmark = pytest.mark.slow


# --- a run stopped and resumed, folds trained apart, deterministic runs -----------------------------------------


def test_killed_run_resumes_skips_finished_folds_and_completes(sample_dir, tmp_path):
    """SIGKILL in the middle of fold 1; the rerun skips fold 0 and resumes fold 1 where it stopped."""
    runs_dir = tmp_path / "runs"
    epochs = 8
    command = digits_command(*tiny_train_args(sample_dir, runs_dir, "--folds", "2", "--epochs", epochs, "--run", "r"))
    run_dir = runs_dir / "r"
    state_path = run_dir / "fold_1" / "backup" / "state.json"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    killed_after = None
    while time.monotonic() < deadline and process.poll() is None:
        if state_path.exists():
            try:
                killed_after = json.loads(state_path.read_text())["epoch"]
            except (json.JSONDecodeError, OSError):
                killed_after = None  # caught between writes: look again
            if killed_after and killed_after >= 2:
                fold_processes = child_processes(process.pid)
                os.kill(process.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    assert killed_after is not None and 2 <= killed_after < epochs
    assert fold_processes, "the fold did not train in a process of its own"
    # The fold's own process died with its parent: it commits no further epoch, and it is gone. (An orphan
    # would commit its current epoch before failing to report it to the dead parent, so look first.)
    assert_no_process_keeps_training(state_path)
    assert_gone(fold_processes)
    fold_0 = {p.name: digest(p) for p in (run_dir / "fold_0").iterdir()}
    assert FOLD_FILES <= set(fold_0)
    assert not (run_dir / "fold_1" / "report.json").exists()

    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold(s) 0 already finished; skipping them" in result.stdout
    resumed_at = int(result.stdout.split("resuming after epoch ")[1].split("/")[0])
    assert killed_after <= resumed_at < epochs
    assert {p.name: digest(p) for p in (run_dir / "fold_0").iterdir()} == fold_0  # finished fold untouched
    history = pd.read_csv(run_dir / "fold_1" / "history.csv")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))  # no epoch lost or repeated
    assert FOLD_FILES <= {p.name for p in (run_dir / "fold_1").iterdir()}
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    report = json.loads((run_dir / "report.json").read_text())
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(oof) == 3000 and report["oof_accuracy"] == pytest.approx(float((oof.prediction == oof.label).mean()))


def test_only_trains_the_named_folds_and_merges_later(sample_dir, tmp_path):
    runs_dir = tmp_path / "runs"
    first = train_cli(sample_dir, runs_dir, "--folds", "2", "--epochs", "1", "--run", "split", "--only", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (runs_dir / "split" / "fold_1" / "report.json").exists()
    assert not (runs_dir / "split" / "fold_0").exists()
    assert "the run report is written once every fold is finished" in first.stdout
    # as a run started before a setting existed: its config.json lacks the key, which then means the
    # setting's old behaviour (dropout_scale 1), even though the quick preset now says 0
    config_path = runs_dir / "split" / "config.json"
    saved = json.loads(config_path.read_text())
    del saved["config"]["dropout_scale"]
    config_path.write_text(json.dumps(saved))
    second = train_cli(sample_dir, runs_dir, "--run", "split", "--only", "0")
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads((runs_dir / "split" / "report.json").read_text())["oof_rows"] == 3000


def test_deterministic_runs_with_the_same_seed_are_identical(sample_dir, tmp_path):
    runs = tmp_path / "runs"
    for name in ("a", "b"):  # one fold each is enough: every fold runs the same code
        args = ("--folds", "2", "--only", "1", "--epochs", "1", "--deterministic", "--run", name)
        result = train_cli(sample_dir, runs, *args)
        assert result.returncode == 0, result.stderr[-2000:]
    first, second = (np.load(runs / name / "fold_1" / "oof.npy") for name in ("a", "b"))
    assert np.array_equal(first["probs"], second["probs"])
    assert np.array_equal(first["row_id"], second["row_id"])
    assert json.loads((runs / "a" / "config.json").read_text())["config"]["deterministic"] is True


# --- each fold in its own process ------------------------------------------------------------------------------


def test_ctrl_c_stops_the_folds_process_too_and_the_rerun_resumes(sample_dir, tmp_path):
    """SIGINT to the process group (Ctrl-C in a terminal): exit 130 with the resume hint, no process left training.
    The run trains in bfloat16, so a bfloat16 fold resumes from its backup here (the killed run above: float32)."""
    runs_dir = tmp_path / "runs"
    epochs = 8
    args = ("--folds", "2", "--only", "0", "--epochs", epochs, "--precision", "bfloat16", "--run", "r")  # one fold
    command = digits_command(*tiny_train_args(sample_dir, runs_dir, *args))
    state_path = runs_dir / "r" / "fold_0" / "backup" / "state.json"
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, as under `cmd &`
    )
    for line in process.stdout:
        if "epoch  3/" in line:
            os.killpg(process.pid, signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted; rerun the same command to resume." in stderr
    assert_no_process_keeps_training(state_path)

    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_at = int(result.stdout.split("resuming after epoch ")[1].split("/")[0])
    assert 3 <= resumed_at < epochs
    assert pd.read_csv(runs_dir / "r" / "fold_0" / "history.csv")["epoch"].tolist() == list(range(1, epochs + 1))


def child_processes(pid: int) -> list[int]:
    """The pids of a process's children (Linux /proc)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def assert_gone(pids: list[int], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and "Z" not in process_state(pid)]
        time.sleep(0.1)
    assert not alive, f"process(es) {alive} outlived the killed `make train`"


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def assert_no_process_keeps_training(state_path: Path, seconds: float = 3.0) -> None:
    """The fold's state.json is committed every epoch (well under a second with the tiny model): it must not
    change once `make train` is gone, or an orphaned fold process would race the rerun."""
    before = state_path.read_bytes()
    time.sleep(seconds)
    assert state_path.read_bytes() == before, "a fold's process is still training after its parent ended"


def test_a_full_disk_inside_a_folds_process_is_a_clear_error_and_the_rerun_resumes(sample_dir, tmp_path):
    """The fold's own process fails (its oof.npy, 72 KB, cannot be written under a 68 KB limit): the parent
    reports the disk-full message, not a traceback, and the rerun finishes the fold."""
    import resource

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (68 << 10, 68 << 10))  # the weights files (~60 KB) fit

    runs_dir = tmp_path / "runs"
    args = tiny_train_args(sample_dir, runs_dir, "--folds", "2", "--epochs", "1", "--run", "r")
    result = run_digits(*args, preexec_fn=limit_file_size)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"error: the disk is full while writing {runs_dir / 'r' / 'fold_0' / 'oof.npy'}" in result.stderr
    assert "Free some space and rerun" in result.stderr and "Traceback" not in result.stderr
    assert not (runs_dir / "r" / "fold_0" / "report.json").exists()

    rerun = run_digits(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "fold 1/2: resuming after epoch 1/1" in rerun.stdout
    assert json.loads((runs_dir / "r" / "report.json").read_text())["oof_rows"] == 3000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is read from Linux /proc")
def test_the_peak_memory_of_a_process_started_for_a_fold_is_its_own():
    """A fold's peak RSS is measured in its process; a spawned process must not report its parent's peak
    (getrusage's ru_maxrss does: exec keeps the forked image's high-water mark)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from digits import train

    ballast = np.ones(300_000_000, dtype=np.uint8)  # 300 MB resident in this process only
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        child_peak = pool.submit(train.peak_rss_mb).result(timeout=120)
    assert train.peak_rss_mb() >= 300
    assert 0 < child_peak < 250
    del ballast


def test_a_run_can_mix_architectures_fold_by_fold(sample_dir, tmp_path):
    runs_dir = tmp_path / "runs"

    result = train_cli(
        sample_dir,
        runs_dir,
        "--model",
        "tiny,cnn_pool",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--dropout",
        "0.5",
        "--run",
        "m",
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "run m: tiny x 1 + cnn_pool x 1 fold(s), 1 epochs" in result.stdout
    fold_reports = [json.loads((runs_dir / "m" / f"fold_{k}" / "report.json").read_text()) for k in (0, 1)]
    assert [r["model"] for r in fold_reports] == ["tiny", "cnn_pool"]
    assert fold_reports[0]["parameters"] < 10_000 < 100_000 < fold_reports[1]["parameters"]
    run_report = json.loads((runs_dir / "m" / "report.json").read_text())
    assert [row["model"] for row in run_report["folds"]] == ["tiny", "cnn_pool"]
    assert re.search(r"^fold  model .*\n   0  tiny .*\n   1  cnn_pool ", result.stdout, re.M)
    page = (runs_dir / "m" / "report.html").read_text()
    assert "<td>tiny</td>" in page and "<td>cnn_pool</td>" in page
    # DROPOUT=0.5 reached the fold's model: the saved cnn_pool has half the registry's dropout rates
    import keras

    from digits import models

    saved = keras.saving.load_model(runs_dir / "m" / "fold_1" / "model.keras", safe_mode=True)
    own = models.build_model("cnn_pool")
    rates = [[layer.rate for layer in m.layers if isinstance(layer, keras.layers.Dropout)] for m in (saved, own)]
    assert rates[0] == pytest.approx([rate / 2 for rate in rates[1]]) and rates[1]
