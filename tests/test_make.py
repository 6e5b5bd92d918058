"""The Makefile is the public interface: its targets, variables and errors, run as a user would."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def make(*args: str, root: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if root is not None:
        env["DIGITS_ROOT"] = str(root)  # data/, runs/ and submissions/ under a temporary folder
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def documented_targets() -> list[str]:
    makefile = (REPO / "Makefile").read_text()
    return re.findall(r"^([a-zA-Z_.-]+):.*## ", makefile, flags=re.MULTILINE)


def test_help_is_the_default_goal_and_lists_every_target():
    result = make()
    assert result.returncode == 0, result.stderr
    targets = documented_targets()
    assert {"help", "download", "train", "report", "test", "lint", "submission", "submit", "demo"} <= set(targets)
    for target in targets:
        assert re.search(rf"^\s+(\x1b\[1m)?{re.escape(target)}\b.*\S", result.stdout, flags=re.MULTILINE), target


def test_venv_is_rebuilt_when_requirements_change():
    # Make's own dry run: with requirements.txt newer than the stamp, .venv would be rebuilt.
    result = make("-n", "-W", "requirements.txt", ".venv")
    assert "pip install" in result.stdout and "-r requirements.txt" in result.stdout
    assert "pip install" not in make("-n", ".venv").stdout  # and not otherwise


def test_download_from_a_local_zip_is_idempotent(tmp_path):
    first = make("download", "SOURCE=data/sample/digit-recognizer.zip", root=tmp_path)
    assert first.returncode == 0, first.stderr
    raw = tmp_path / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["sample_submission.csv", "test.csv", "train.csv"]
    assert "train.csv 3,000 rows" in first.stdout
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    second = make("download", "SOURCE=data/sample/digit-recognizer.zip", root=tmp_path)
    assert second.returncode == 0
    assert "nothing to do (FORCE=1 fetches again)" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before
    forced = make("download", "SOURCE=data/sample/digit-recognizer.zip", "FORCE=1", root=tmp_path)
    assert forced.returncode == 0 and "extracted and verified" in forced.stdout


def test_download_without_credentials_says_how_to_provide_them(tmp_path):
    env_root = tmp_path / "root"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(home), DIGITS_ROOT=str(env_root), KAGGLE_CONFIG_DIR=str(home / ".kaggle"))
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "download"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode != 0
    for way in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "kaggle.json", "SOURCE="):
        assert way in result.stderr
    assert not (env_root / "data" / "raw" / "train.csv").exists()


def test_values_with_quotes_and_spaces_reach_the_cli_intact(kaggle_server, kaggle_env, sample_dir, tmp_path):
    """`make submit MESSAGE="don't ..."`: every variable is passed as one shell word, as typed (quotes, spaces,
    `$`: neither make nor the shell expands it)."""
    root = tmp_path / "root"
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy(sample_dir / "sample_submission.csv", root / "data" / "raw")
    upload = tmp_path / "it's mine (v2).csv"
    shutil.copy(sample_dir / "sample_submission.csv", upload)  # a valid submission: every label 0
    message = 'don\'t use dropout; "bagged" x2 & TTA, 50$ off $(shell echo not run) $HOME'
    env = {**kaggle_env, "KAGGLE_USERNAME": kaggle_server.username, "KAGGLE_KEY": kaggle_server.key}
    env["DIGITS_ROOT"] = str(root)

    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "submit", f"FILE={upload}", f"MESSAGE={message}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    (stored,) = kaggle_server.submissions
    assert stored.file_name == upload.name and stored.description == message
    assert stored.content == upload.read_bytes()


def test_bad_training_variable_is_refused_before_anything_runs(tmp_path):
    result = make("train", "FOLDS=1", root=tmp_path)
    assert result.returncode != 0
    assert "FOLDS=1: k-fold training needs at least 2 folds" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_download_train_report_submission_through_make(tmp_path):
    assert make("download", "SOURCE=data/sample/digit-recognizer.zip", root=tmp_path).returncode == 0
    trained = make(
        "train",
        "PRESET=quick",
        "MODEL=tiny",
        "FOLDS=2",
        "EPOCHS=1",
        "SEED=3",
        "ELASTIC=34",
        "DROPOUT=0.5",
        "PRECISION=bfloat16",
        "RUN=viamake",
        root=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = json.loads((tmp_path / "runs" / "viamake" / "config.json").read_text())["config"]
    assert (
        config["preset"],
        config["model"],
        config["folds"],
        config["epochs"],
        config["seed"],
        config["elastic"],
        config["dropout_scale"],
        config["precision"],
    ) == (
        "quick",
        "tiny",
        2,
        1,
        3,
        34.0,
        0.5,
        "bfloat16",
    )
    report = make("report", root=tmp_path)  # RUN defaults to the latest run
    assert report.returncode == 0, report.stderr
    assert "run viamake" in report.stdout and "OOF accuracy" in report.stdout
    # a run against itself: no difference
    compared = make("compare", "RUNS=viamake,viamake", f"OUT={tmp_path / 'cmp'}", root=tmp_path)
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert "viamake against viamake (settings that differ: none, the same recipe again)" in compared.stdout
    assert re.search(r"wrong only in viamake: 0, only in viamake: 0; p = 1: within noise", compared.stdout)
    [pair] = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [c["disputed"] for c in pair["comparisons"]] == [[]] and (
        tmp_path / "cmp" / "viamake-vs-viamake.png"
    ).is_file()
    submission = make("submission", "RUN=viamake", root=tmp_path)
    assert submission.returncode == 0, submission.stderr[-2000:]
    files = list((tmp_path / "submissions").glob("viamake-cv*.csv"))
    assert len(files) == 1 and files[0].read_text().startswith("ImageId,Label\n1,")


def test_bench_names_the_cpu_and_the_instruction_sets_that_decide_its_speed(tmp_path):
    from digits import bench

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512fp16\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512fp16\n"
    )
    cpu = bench.cpu_info(cpuinfo)
    assert cpu == {"model": "AMD EPYC 9R14", "flags": ["avx2", "avx512f", "avx512_bf16"]}
    assert bench.native_bfloat16(cpu) is True
    assert bench.native_bfloat16({"model": "Xeon", "flags": ["avx2", "avx512f", "amx_bf16"]}) is True
    assert bench.native_bfloat16({"model": "EPYC", "flags": ["avx2", "avx512f"]}) is False
    assert (
        bench.describe_cpu(cpu, 2) == "CPU: AMD EPYC 9R14, 2 core(s); has avx2, avx512f, avx512_bf16 (lacks amx_bf16)"
    )
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse2\n")
    assert bench.describe_cpu(bench.cpu_info(cpuinfo), 1) == (
        "CPU: Old CPU, 1 core(s); has none (lacks avx2, avx512f, avx512_bf16, amx_bf16)"
    )
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n")  # ARM: no flags line
    assert bench.cpu_info(cpuinfo)["flags"] is None
    assert bench.native_bfloat16(bench.cpu_info(cpuinfo)) is None  # unknown: the bench times it
    elsewhere = bench.cpu_info(tmp_path / "no-such-file")  # not Linux
    assert elsewhere["flags"] is None
    assert bench.describe_cpu(elsewhere, 4).endswith(", 4 core(s); instruction sets unknown")


def test_bench_times_training_and_validation_apart_and_leaves_the_first_epoch_out():
    """The epoch timer on a made-up clock: epoch 1 trains 5 s (tracing) and validates 1 s, epoch 2 trains 3 s
    and validates 1 s, epoch 3 trains 3 s without validation."""
    from digits import bench

    ticks = iter([10.0, 15.0, 16.0, 16.5, 17.0, 20.0, 21.0, 21.2, 22.0, 25.0])
    timer = bench._EpochTimer(head_start=0.5, clock=lambda: next(ticks))
    for epoch, validates in ((0, True), (1, True), (2, False)):
        timer.on_epoch_begin(epoch)
        if validates:
            timer.on_test_begin()
            timer.on_test_end()
        timer.on_epoch_end(epoch, {"val_accuracy": 0.5 + epoch / 10} if validates else {})

    assert timer.train_seconds == [5.0, 3.0, 3.0]
    assert timer.validation_seconds == [1.0, 1.0, 0.0]
    # its own time: the head start (building the model), then each epoch from its start to its end (the 0.5 s
    # between epochs 1 and 2, when another pipeline trains in the bench, is not counted)
    assert timer.records == [(7.0, 0.5), (11.2, 0.6), (14.2, 0.0)]
    assert timer.steady_images_per_second(600) == pytest.approx(600 / 3)


def test_bench_refuses_fewer_than_two_epochs_before_loading_anything(tmp_path, capsys):
    from digits import bench

    with pytest.raises(SystemExit) as stopped:
        bench.main(["--epochs", "1", "--data-dir", str(tmp_path / "absent"), "--out-dir", str(tmp_path / "out")])

    assert stopped.value.code == 2
    assert "--epochs 1: give at least 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="epochs=1: the bench needs at least 2"):  # from Python as well
        bench.run_benchmark(tmp_path / "absent", tmp_path / "out", epochs=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bench_runs_and_writes_its_json(tmp_path, sample_dir):
    """A miniature `make bench` (the real one needs the full data): every figure present and positive.
    bfloat16 prediction is timed as this CPU decides (unless it lacks native bfloat16); the other choice is made
    on a tiny model after it, so that both kinds of record are checked on any CPU."""
    import keras

    from digits import bench, data, models

    results = bench.run_benchmark(sample_dir, tmp_path / "bench", train_images=1024, epochs=2, log=lambda _: None)
    skipped = bench.NO_NATIVE_BFLOAT16 if bench.native_bfloat16(bench.cpu_info()) is False else None
    saved = json.loads(Path(results["path"]).read_text())
    bf16 = saved["throughput"]["bfloat16"]
    speeds = {"ours": saved["throughput"]["ours_images_per_second"]}
    speeds["plain"] = saved["throughput"]["plain_images_per_second"]
    if skipped is None:  # bfloat16 training is timed where bfloat16 prediction is
        speeds["ours_bfloat16"] = bf16["images_per_second"]
        assert bf16["ratio"] == pytest.approx(bf16["images_per_second"] / speeds["plain"], rel=1e-2)
        assert bf16["ratio_over_ours_float32"] == pytest.approx(bf16["images_per_second"] / speeds["ours"], rel=1e-2)
        assert bf16["seconds_per_epoch"] == pytest.approx(1024 / bf16["images_per_second"], abs=0.06)
    else:
        assert bf16 == {"skipped": skipped} and "ours_bfloat16" not in saved["accuracy"]
    for name, speed in speeds.items():  # the steady speed: the training seconds of epoch 2, without its validation
        train_seconds = saved["accuracy"][name]["train_seconds_per_epoch"]
        validation_seconds = saved["accuracy"][name]["validation_seconds_per_epoch"]
        assert len(train_seconds) == len(validation_seconds) == 2 and min(train_seconds + validation_seconds) > 0
        assert train_seconds[1] + validation_seconds[1] < saved["accuracy"][name]["seconds"] - train_seconds[0]
        assert speed == pytest.approx(1024 / train_seconds[1], rel=1e-2)
    assert saved["throughput"]["ratio"] == pytest.approx(
        saved["throughput"]["ours_images_per_second"] / saved["throughput"]["plain_images_per_second"], rel=1e-2
    )
    # the ceiling: a second instance of ours, timed in one turn per epoch after the first (here 1 turn of 1024 // 128 steps)
    t = saved["throughput"]
    assert t["ceiling_steps_per_turn"] == 8 and len(t["ceiling_seconds_per_turn"]) == 1
    assert t["ceiling_images_per_second"] == pytest.approx(8 * 128 / t["ceiling_seconds_per_turn"][0], rel=1e-2)
    _check_prediction(saved["prediction"], 1000, skipped)
    assert 0 <= saved["accuracy"]["ours"]["val_accuracy"] <= 1 and saved["peak_rss_mb"] > 0
    assert saved["cpu"] == bench.cpu_info() and saved["cores"] >= 1
    table = bench.format_table(results)
    assert table.splitlines()[0] == bench.describe_cpu(saved["cpu"], saved["cores"])
    assert "speed-up in training images/s:" in table and table.endswith(f"; written to {results['path']}")
    assert f"{bench.format_table(saved)}; written to {results['path']}" == table  # a bench file read back prints
    before = {key: value for key, value in results.items() if key not in ("cpu", "cores")}  # a bench of session 9
    assert bench.format_table(before).splitlines()[1:] == table.splitlines()[2:]
    # a bench written before bfloat16 training was timed (session 17) prints its two columns and says so
    old_throughput = {key: value for key, value in saved["throughput"].items() if key != "bfloat16"}
    old_accuracy = {key: value for key, value in saved["accuracy"].items() if key != "ours_bfloat16"}
    old = bench.format_table({**saved, "throughput": old_throughput, "accuracy": old_accuracy})
    _check_table_training(old, saved, "not timed (a bench written before session 17)")
    # a bench written before XNNPACK (session 21) says that row was not timed, and marks no engine
    old_prediction = {
        key: value for key, value in saved["prediction"].items() if not key.startswith(("float32_x", "xnn", "engine"))
    }
    old = bench.format_table({**saved, "prediction": old_prediction})
    xnnpack_row = next(line for line in old.splitlines() if line.startswith("  ours, float32 on XNNPACK"))
    assert xnnpack_row.endswith(" not timed (a bench written before session 21)") and "XNNPACK predicts" not in old
    assert "<- what make train" not in old
    # on a CPU where the other engine is the faster, the other row is marked
    other = {"keras": "xnnpack", "xnnpack": "keras"}[saved["prediction"]["engine"]]
    flipped = bench.format_table({**saved, "prediction": {**saved["prediction"], "engine": other}})
    marked = [line for line in flipped.splitlines() if line.endswith("<- what make train and make submission use here")]
    assert len(marked) == 1 and ("XNNPACK" in marked[0]) == (other == "xnnpack")
    _check_table_prediction(table, skipped)
    _check_table_training(table, saved, skipped)
    # the other kind of record: a bench that timed bfloat16 training, or one that did not
    if skipped is None:
        other_saved = {**saved, "throughput": {**saved["throughput"], "bfloat16": {"skipped": bench.NOT_REQUESTED}}}
        _check_table_training(bench.format_table(other_saved), other_saved, bench.NOT_REQUESTED)
    else:
        timed = {"images_per_second": 1234.5, "ratio": 1.5, "ratio_over_ours_float32": 1.25, "seconds_per_epoch": 0.8}
        other_saved = {**saved, "throughput": {**saved["throughput"], "bfloat16": timed}}
        other_saved["accuracy"] = {**saved["accuracy"], "ours_bfloat16": saved["accuracy"]["ours"]}
        _check_table_training(bench.format_table(other_saved), other_saved, None)

    keras.utils.set_random_seed(0)
    other_skipped = bench.NOT_REQUESTED if skipped is None else None
    other = bench._prediction_speed(
        models.build_model("tiny"), data.load_test(sample_dir / "test.csv")[:300], lambda _: None, other_skipped
    )
    _check_prediction(other, 300, other_skipped, trained=False)
    _check_table_prediction(bench.format_table({**results, "prediction": other}), other_skipped)


def _check_prediction(prediction: dict, images: int, skipped: str | None, trained: bool = True) -> None:
    from digits import bench
    from digits.models import xnnpack_available
    from digits.train import fast_engine

    assert prediction["test_images"] == images and prediction["parts"] == 4
    # the engine make train uses here: this CPU's faster one, Keras where TensorFlow has no Lite interpreter
    assert prediction["engine"] == (fast_engine() if xnnpack_available() else "keras")
    if not xnnpack_available():
        assert prediction["float32_xnnpack"] == {"skipped": bench.NO_XNNPACK}
        assert "xnnpack_same_digit_as_keras" not in prediction
    timed = ("plain", "float32") + (("float32_xnnpack",) if xnnpack_available() else ())
    for key in timed + (("bfloat16",) if skipped is None else ()):
        assert prediction[key]["images_per_second"] > 0
        parts = prediction[key]["seconds_per_part"]  # the ways took turns over four parts of the test set
        assert len(parts) == 4 and min(parts) > 0
        assert sum(parts) == pytest.approx(images / prediction[key]["images_per_second"], rel=0.01, abs=0.002)
        expected = 5 * images / prediction[key]["images_per_second"]
        assert prediction[key]["five_fold_ensemble_seconds"] == pytest.approx(expected, rel=0.01, abs=0.01)
    assert prediction["float32_max_abs_difference_from_plain"] < 1e-4  # folding batch norm is exact
    if xnnpack_available():  # XNNPACK computes the same float32 copy as Keras, in another order
        assert 0 < prediction["xnnpack_max_abs_difference_from_keras"] < 1e-5
        assert prediction["xnnpack_same_digit_as_keras"] >= (0.999 if trained else 0.99)
    if skipped is None:
        # a barely trained model has near-ties, an untrained one may have nothing else
        assert (0.8 if trained else 0) <= prediction["bfloat16_same_digit_as_float32"] <= 1
    else:
        why = {"why": bench.NO_NATIVE_BFLOAT16_WHY} if skipped == bench.NO_NATIVE_BFLOAT16 else {}
        assert prediction["bfloat16"] == {"skipped": skipped, **why}
        assert "bfloat16_same_digit_as_float32" not in prediction


def _check_table_training(table: str, saved: dict, skipped: str | None) -> None:
    """The training rows have a column per timed pipeline, and the bfloat16 line its ratio or why not."""
    lines = table.splitlines()
    header = next(line for line in lines if line.split() and line.split()[0] == "ours")
    speeds = next(line for line in lines if line.startswith("training images/s")).split()[2:]
    bf16_line = next(line for line in lines if line.startswith("bfloat16 training (PRECISION=bfloat16): "))
    t = saved["throughput"]
    if skipped is None:
        assert header.split() == ["ours", "plain", "ours", "bf16"]
        assert speeds == [f"{t['ours_images_per_second']:.0f}", f"{t['plain_images_per_second']:.0f}"] + [
            f"{t['bfloat16']['images_per_second']:.0f}"
        ]
        bf16 = t["bfloat16"]
        assert bf16_line.endswith(
            f": {bf16['ratio']:.2f}x plain, {bf16['ratio_over_ours_float32']:.2f}x ours in float32"
        )
    else:
        assert header.split() == ["ours", "plain"] and len(speeds) == 2
        assert bf16_line.endswith(f": {skipped}")


def _check_table_prediction(table: str, skipped: str | None) -> None:
    from digits.train import float32_engine

    rows = {line.strip().split(" ", 4)[2]: line for line in table.splitlines() if line.startswith("  ours, float32 ")}
    assert sorted(rows) == ["in", "on"]
    # the engine `predict` uses on this CPU is marked, and only it
    used = {"keras": "in", "xnnpack": "on"}[float32_engine()]
    assert rows[used].endswith("images/s)  <- what make train and make submission use here")
    assert all(line.endswith(("images/s)", "tf.lite.Interpreter")) for word, line in rows.items() if word != used)
    assert ("XNNPACK predicts the same digit as Keras for " in table) == ("tf.lite.Interpreter" not in table)
    bf16_line = next(line for line in table.splitlines() if line.strip().startswith("ours, bfloat16"))
    if skipped is None:
        assert bf16_line.strip().endswith("images/s)") and "predicts the same digit as float32" in table
    else:
        assert bf16_line.split(maxsplit=2)[2].strip() == skipped and len(bf16_line) <= 120
        assert "bfloat16 predicts the same digit" not in table


def test_make_bench_passes_bfloat16_only_when_asked():
    for variables, expected in (((), False), (("BFLOAT16=1",), True), (("BFLOAT16=0",), False)):
        dry = make("-n", "bench", *variables)
        assert dry.returncode == 0, dry.stderr
        line = next(line for line in dry.stdout.splitlines() if "-m digits.bench" in line)
        assert line.endswith("--bfloat16") == expected, line
