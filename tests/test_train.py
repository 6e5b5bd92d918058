"""End-to-end training on the bundled sample: artifacts, reports, refusals, pseudo-labels. Runs killed,
interrupted or resumed, and the fold processes, are in test_train_processes.py.

These train real (tiny) models through the command line, so they are marked slow; they still run in
`make test` and CI.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import FOLD_FILES, RUN_FILES, digest, run_digits, tiny_train_args, train_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(sample_dir, tmp_path_factory):
    """Run `r1`: tiny, 2 folds x 2 epochs, a tenth held out. Trained through the command line's `main` in a
    fresh interpreter that then prints which of TensorFlow and Keras it imported itself."""
    runs_dir = tmp_path_factory.mktemp("runs")
    args = tiny_train_args(sample_dir, runs_dir, "--folds", "2", "--epochs", "2", "--holdout", "0.1", "--run", "r1")
    script = (
        "import sys\n"
        "from digits.cli import main\n"
        f"code = main({[str(a) for a in args]!r})\n"
        "print('imported:', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return runs_dir / "r1", result


def test_every_artifact_is_written(finished_run):
    run_dir, _ = finished_run
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    for fold in (0, 1):
        fold_dir = run_dir / f"fold_{fold}"
        holdout_files = {"holdout_probs.npy", "holdout_tta_probs.npy", "holdout_last_epoch_probs.npy"}
        assert FOLD_FILES | holdout_files <= {p.name for p in fold_dir.iterdir()}
        assert not (fold_dir / "backup").exists()  # the resume backup is removed once a fold is finished
        for picture in ("curves.png", "confusion.png", "errors.png"):
            assert (fold_dir / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.rglob(".*.tmp*"))  # no temporary file left behind


def test_artifact_contents_are_consistent(finished_run, sample_train, sample_test):
    run_dir, _ = finished_run
    folds_csv = pd.read_csv(run_dir / "folds.csv")
    assert list(folds_csv.columns) == ["row_id", "label", "fold"]
    assert np.array_equal(folds_csv["label"], sample_train.labels)
    trained_rows = folds_csv[folds_csv["fold"] >= 0]

    oof = pd.read_csv(run_dir / "oof.csv")
    assert list(oof.columns) == ["row_id", "fold", "label", "prediction", *[f"prob_{c}" for c in range(10)]]
    assert len(oof) == len(trained_rows)  # every non-holdout train row exactly once
    assert np.array_equal(oof["row_id"], trained_rows["row_id"])
    assert np.array_equal(oof["fold"], trained_rows["fold"])
    assert np.array_equal(oof["label"], sample_train.labels[oof["row_id"]])
    probs = oof[[f"prob_{c}" for c in range(10)]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert np.array_equal(oof["prediction"], probs.argmax(axis=1))

    report = json.loads((run_dir / "report.json").read_text())
    recomputed = float((oof["prediction"] == oof["label"]).mean())
    assert report["oof_accuracy"] == pytest.approx(recomputed, abs=1e-12)
    assert report["oof_rows"] == len(oof)
    assert np.array(report["oof_confusion_matrix"]).sum() == len(oof)
    assert [row["fold"] for row in report["folds"]] == [0, 1]
    assert report["class_balance"]["all"] == np.bincount(sample_train.labels, minlength=10).tolist()
    holdout_labels = folds_csv.loc[folds_csv["fold"] == -1, "label"].to_numpy()
    assert report["holdout"]["rows"] == len(holdout_labels) > 0
    for prefix, name in (
        ("", "holdout_probs.npy"),
        ("tta_", "holdout_tta_probs.npy"),
        ("last_epoch_", "holdout_last_epoch_probs.npy"),
    ):
        fold_probs = [np.load(run_dir / f"fold_{k}" / name) for k in (0, 1)]
        assert all(p.shape == (len(holdout_labels), 10) for p in fold_probs)
        ensemble = np.mean(fold_probs, axis=0).argmax(axis=1)
        assert report["holdout"][f"{prefix}ensemble_accuracy"] == pytest.approx(
            float((ensemble == holdout_labels).mean())
        )
        assert report["holdout"][f"{prefix}fold_accuracy"] == pytest.approx(
            [float((p.argmax(axis=1) == holdout_labels).mean()) for p in fold_probs]
        )
        assert report["holdout"][f"{prefix}ensemble_errors"] == int((ensemble != holdout_labels).sum())
    # the fold ensemble's mistakes, row by row, most confident first, and their picture
    fold_probs = [np.load(run_dir / f"fold_{k}" / "holdout_probs.npy") for k in (0, 1)]
    mean = np.mean(fold_probs, axis=0)
    holdout_rows = folds_csv.loc[folds_csv["fold"] == -1, "row_id"].to_numpy()
    wrong = np.flatnonzero(mean.argmax(axis=1) != holdout_labels)
    mistakes = report["holdout"]["ensemble_mistakes"]
    assert len(mistakes) == report["holdout"]["ensemble_errors"] == len(wrong) > 0  # a 2-epoch tiny model errs
    assert sorted(m["row_id"] for m in mistakes) == sorted(holdout_rows[wrong].tolist())
    by_row = dict(zip(holdout_rows.tolist(), range(len(holdout_rows)), strict=True))
    for m in mistakes:
        i = by_row[m["row_id"]]
        assert (m["label"], m["prediction"]) == (sample_train.labels[m["row_id"]], mean[i].argmax())
        assert m["confidence"] == pytest.approx(mean[i].max(), abs=1e-4)
        assert m["folds_wrong"] == sum(int(p[i].argmax() != m["label"]) for p in fold_probs)
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    assert (run_dir / "holdout_errors.png").stat().st_size > 0
    # TTA really averaged shifted views (a copy of the plain probabilities would pass the checks above).
    assert not np.array_equal(
        np.load(run_dir / "fold_0" / "holdout_tta_probs.npy"), np.load(run_dir / "fold_0" / "holdout_probs.npy")
    )

    for fold in (0, 1):
        fold_dir = run_dir / f"fold_{fold}"
        fold_oof = np.load(fold_dir / "oof.npy")
        assert np.array_equal(np.sort(fold_oof["row_id"]), trained_rows.loc[trained_rows["fold"] == fold, "row_id"])
        fold_report = json.loads((fold_dir / "report.json").read_text())
        fold_labels = sample_train.labels[fold_oof["row_id"]]
        assert fold_report["accuracy"] == pytest.approx(float((fold_oof["probs"].argmax(1) == fold_labels).mean()))
        assert set(fold_report["per_class"]) == {str(c) for c in range(10)}
        assert 1 <= fold_report["best_epoch"] <= 2 and fold_report["epochs"] == 2
        assert fold_report["train_images_per_second"] > 0 and fold_report["peak_rss_mb"] > 0
        test_probs = np.load(fold_dir / "test_probs.npy")
        assert test_probs.shape == (len(sample_test), 10)
        assert np.allclose(test_probs.sum(axis=1), 1.0, atol=1e-4)
        # the last epoch's holdout predictions come from the last epoch's weights: the best epoch's model's
        # when that was the last epoch, another model's otherwise
        best, last = (np.load(fold_dir / name) for name in ("holdout_probs.npy", "holdout_last_epoch_probs.npy"))
        if fold_report["best_epoch"] == 2:
            np.testing.assert_allclose(last, best, atol=1e-6)
        else:
            assert np.abs(last - best).max() > 1e-4
        history = pd.read_csv(fold_dir / "history.csv")
        assert history["epoch"].tolist() == [1, 2]
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"} <= set(history.columns)
        assert fold_report["last_epoch_accuracy"] == pytest.approx(history["val_accuracy"].iloc[-1])
        assert report["folds"][fold]["last_epoch_accuracy"] == fold_report["last_epoch_accuracy"]
    assert report["last_epoch_accuracy_mean"] == pytest.approx(
        np.mean([row["last_epoch_accuracy"] for row in report["folds"]])
    )


def test_saved_model_takes_raw_pixels_and_reproduces_the_oof_probabilities(finished_run, sample_train):
    import keras

    run_dir, _ = finished_run
    fold_oof = np.load(run_dir / "fold_0" / "oof.npy")
    model = keras.saving.load_model(run_dir / "fold_0" / "model.keras", safe_mode=True)
    rows = fold_oof["row_id"][:64]
    probs = model.predict(sample_train.images[rows].astype("float32"), verbose=0)
    assert np.allclose(probs, fold_oof["probs"][:64], atol=1e-5)


def test_html_report_is_self_contained_and_shows_every_fold(finished_run):
    run_dir, _ = finished_run
    page = (run_dir / "report.html").read_text()
    for fold in (0, 1):
        assert f"fold {fold} · val acc" in page
        assert f"fold {fold} misclassified digits" in page
    assert page.count("data:image/png;base64,") >= 2 * 3 + 3  # three pictures per fold, plus run pictures
    assert "src='http" not in page and 'src="http' not in page  # nothing fetched from elsewhere
    saved = json.loads((run_dir / "report.json").read_text())
    assert "<th>val acc, last epoch</th>" in page
    for row in saved["folds"]:
        assert f"<td>{row['best_epoch']}/2</td><td>{row['last_epoch_accuracy']:.4f}</td>" in page
    holdout = saved["holdout"]
    assert (
        f"Fold ensemble accuracy <b>{holdout['ensemble_accuracy']:.4f}</b> ({holdout['ensemble_errors']} errors)"
        in page
    )
    assert "alt='the holdout digits the fold ensemble gets wrong'" in page
    assert f"ensemble <b>{holdout['tta_ensemble_accuracy']:.4f}</b>" in page


def test_report_command_prints_the_fold_table(finished_run):
    run_dir, _ = finished_run
    result = subprocess.run(
        [sys.executable, "-m", "digits", "report", "--runs-dir", str(run_dir.parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert "fold   val acc  val loss  errors  best epoch  last-epoch acc" in result.stdout
    for row in report["folds"]:
        assert re.search(
            rf"^ +{row['fold']} +{row['accuracy']:.4f} .* {row['best_epoch']}/2 +{row['last_epoch_accuracy']:.4f} ",
            result.stdout,
            flags=re.M,
        ), result.stdout
    assert "so it is slightly optimistic; last-epoch acc is not, nor is the holdout" in result.stdout
    assert f"OOF accuracy {report['oof_accuracy']:.4f}" in result.stdout
    h = report["holdout"]
    assert (
        f"the last epochs' models instead of the best: fold ensemble {h['last_epoch_ensemble_accuracy']:.4f}, "
        f"single folds {min(h['last_epoch_fold_accuracy']):.4f}-" in result.stdout
    )
    assert (
        f"holdout ({h['rows']:,} rows): fold ensemble accuracy {h['ensemble_accuracy']:.4f} "
        f"({h['ensemble_errors']} errors), with TTA {h['tta_ensemble_accuracy']:.4f}" in result.stdout
    )
    first = h["ensemble_mistakes"][0]
    assert re.search(
        rf"^    {first['row_id']} {first['label']}→{first['prediction']} {first['confidence']:.2f} "
        rf"{first['folds_wrong']}/2(,  |;|$)",
        result.stdout,
        flags=re.M,
    ), result.stdout
    assert str(run_dir / "report.html") in result.stdout


def test_a_holdout_without_mistakes_lists_none_and_shows_no_error_picture(finished_run, sample_train, tmp_path):
    """The report of a fold ensemble that gets every holdout digit right: 0 errors, no list, no picture section."""
    from digits import report

    run_dir, _ = finished_run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    fold_ids = pd.read_csv(copy / "folds.csv")["fold"].to_numpy()
    labels = sample_train.labels[fold_ids == -1]
    for k in (0, 1):
        np.save(copy / f"fold_{k}" / "holdout_probs.npy", np.eye(10, dtype=np.float32)[labels])

    saved = report.run_report(copy, sample_train, fold_ids)

    assert saved["holdout"]["ensemble_errors"] == 0 and saved["holdout"]["ensemble_mistakes"] == []
    assert saved["holdout"]["ensemble_accuracy"] == 1.0
    page = (copy / "report.html").read_text()
    assert "(0 errors)" in page and "the holdout digits the fold ensemble gets wrong" not in page
    table = report.format_fold_table(report.read_run_report(copy))
    assert "fold ensemble accuracy 1.0000 (0 errors)" in table and "mistakes" not in table


def test_report_of_a_run_trained_before_the_last_epoch_column_reads_it_from_history(finished_run, tmp_path):
    run_dir, _ = finished_run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    old = json.loads((copy / "report.json").read_text())
    for row in old["folds"]:
        del row["last_epoch_accuracy"]
    del old["last_epoch_accuracy_mean"]
    (copy / "report.json").write_text(json.dumps(old))
    history = pd.read_csv(copy / "fold_1" / "history.csv")
    history.loc[history.index[-1], "val_accuracy"] = 0.12345  # what the table must show for fold 1
    history.to_csv(copy / "fold_1" / "history.csv", index=False)

    result = run_digits("report", "--run", copy.name, "--runs-dir", tmp_path)

    assert result.returncode == 0, result.stderr
    assert re.search(r"^ +1 +[0-9.]+ .* 0\.1235 ", result.stdout, flags=re.M), result.stdout
    (copy / "fold_1" / "history.csv").unlink()  # neither the report nor a history: shown as unknown
    result = run_digits("report", "--run", copy.name, "--runs-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ +1 +[0-9.]+ .* +- +[0-9]+s ", result.stdout, flags=re.M), result.stdout
    assert "optimistic" not in result.stdout  # no mean, no note, when a fold's figure is unknown


def test_rerunning_a_finished_run_changes_nothing(finished_run, sample_dir):
    run_dir, _ = finished_run
    before = {p: digest(p) for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    result = train_cli(sample_dir, run_dir.parent, "--run", run_dir.name)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nothing to train" in result.stdout
    assert before == {p: digest(p) for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


def test_resuming_with_a_changed_config_is_refused(finished_run, sample_dir):
    run_dir, _ = finished_run
    result = train_cli(sample_dir, run_dir.parent, "--run", run_dir.name, "--epochs", "3")
    assert result.returncode == 2
    assert "was started with a different config (epochs: run has 2, asked 3)" in result.stderr
    assert "RUN=<new name>" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_process_on_the_same_run_is_refused(finished_run, sample_dir):
    run_dir, _ = finished_run
    with open(run_dir / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `make train` holds it
        result = train_cli(sample_dir, run_dir.parent, "--run", run_dir.name)
    assert result.returncode == 2
    assert f"{run_dir} is being trained by" in result.stderr and "RUN=<new name>" in result.stderr


def test_a_bfloat16_run_trains_in_bfloat16_and_predicts_in_float32(tmp_path, sample_dir, sample_train, sample_test):
    """PRECISION=bfloat16: the fold models train in bfloat16 but are saved computing in float32, and every
    prediction the run writes (OOF, test, holdout) is theirs; resuming it in float32 is refused, with auto not."""
    import keras

    from digits.train import predict

    args = ("--folds", "2", "--epochs", "1", "--holdout", "0.2", "--precision", "bfloat16", "--run", "b")
    result = train_cli(sample_dir, tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epochs, batch 64, bfloat16, " in result.stdout  # the run's first line says it
    run_dir = tmp_path / "b"
    assert json.loads((run_dir / "config.json").read_text())["config"]["precision"] == "bfloat16"
    history = pd.read_csv(run_dir / "fold_1" / "history.csv")
    assert len(history) == 1 and history["val_accuracy"].between(0, 1).all()
    model = keras.saving.load_model(run_dir / "fold_1" / "model.keras", safe_mode=True)
    assert all(layer.compute_dtype == "float32" for layer in model.layers)
    oof = np.load(run_dir / "fold_1" / "oof.npy")
    images = sample_train.images[oof["row_id"]].astype("float32")
    np.testing.assert_allclose(model.predict(images, verbose=0), oof["probs"], atol=1e-5)
    np.testing.assert_allclose(predict(model, sample_test), np.load(run_dir / "fold_1" / "test_probs.npy"), atol=1e-5)
    holdout_rows = pd.read_csv(run_dir / "folds.csv").query("fold == -1")["row_id"].to_numpy()
    holdout = np.load(run_dir / "fold_1" / "holdout_probs.npy")
    np.testing.assert_allclose(predict(model, sample_train.images[holdout_rows]), holdout, atol=1e-5)
    refused = train_cli(sample_dir, tmp_path, "--run", "b", "--precision", "float32")
    assert refused.returncode == 2
    assert "precision: run has 'bfloat16', asked 'float32'" in refused.stderr
    again = train_cli(sample_dir, tmp_path, "--run", "b", "--precision", "auto")  # the run's own, on any CPU
    assert again.returncode == 0 and "nothing to train" in again.stdout, again.stderr[-2000:]


def test_a_bfloat16_run_warns_on_a_cpu_where_bfloat16_trains_no_faster():
    from digits.train import slow_precision

    xeon = {"model": "Xeon", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]}
    assert slow_precision("bfloat16", xeon) is None and slow_precision("float32", xeon) is None
    epyc = {"model": "AMD EPYC 9R14", "flags": ["avx2", "avx512f", "avx512_bf16"]}  # AVX512-BF16: 1.4x float32
    assert slow_precision("bfloat16", epyc) is None and slow_precision("float32", epyc) is None
    older = slow_precision("bfloat16", {"model": "AMD EPYC 7B13", "flags": ["avx2", "avx512f"]})
    assert older.startswith("PRECISION=bfloat16 on this CPU (AMD EPYC 7B13): it lacks native bfloat16")
    assert "emulated and slower than float32" in older and "start a new run (RUN=<new name>)" in older
    assert slow_precision("float32", {"model": "EPYC", "flags": ["avx2"]}) is None
    unknown = slow_precision("bfloat16", {"model": "arm", "flags": None})
    assert "instruction sets are unknown; bfloat16 trains faster only with AVX512-BF16 or AMX" in unknown


def test_bad_data_stops_before_training_with_a_clear_error(tmp_path, sample_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (sample_dir / "train.csv").read_text().splitlines()
    lines[5] = lines[5].replace(",0,", ",300,", 1)
    (bad / "train.csv").write_text("\n".join(lines) + "\n")
    (bad / "test.csv").write_bytes((sample_dir / "test.csv").read_bytes())
    result = train_cli(bad, tmp_path / "runs", "--run", "x")
    assert result.returncode == 2
    assert f"{bad / 'train.csv'}: line 6, column 'pixel" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "x").exists()  # nothing is created for a run that cannot start


def test_submission_tta_measures_the_holdout_of_a_run_trained_without_it(finished_run, sample_dir, tmp_path):
    """Runs trained before TTA was measured on the holdout get it from `make submission TTA=1`, once."""
    import shutil

    run_dir, _ = finished_run
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    expected = {k: np.load(copy / f"fold_{k}" / "holdout_tta_probs.npy") for k in (0, 1)}
    for k in (0, 1):
        (copy / f"fold_{k}" / "holdout_tta_probs.npy").unlink()
    old_report = json.loads((copy / "report.json").read_text())  # as an older run wrote it: no TTA figures
    old_report["holdout"] = {k: v for k, v in old_report["holdout"].items() if not k.startswith("tta_")}
    (copy / "report.json").write_text(json.dumps(old_report))
    args = ("--runs-dir", copy.parent, "--data-dir", sample_dir, "--submissions-dir", tmp_path / "submissions")
    result = run_digits("submission", "--run", copy.name, "--tta", *args)
    assert result.returncode == 0, result.stderr
    for k in (0, 1):
        np.testing.assert_allclose(np.load(copy / f"fold_{k}" / "holdout_tta_probs.npy"), expected[k], atol=1e-5)
    holdout = json.loads((run_dir / "report.json").read_text())["holdout"]
    assert (
        f"TTA on the {holdout['rows']:,} holdout rows: fold ensemble accuracy "
        f"{holdout['ensemble_accuracy']:.5f} without, {holdout['tta_ensemble_accuracy']:.5f} with" in result.stdout
    )
    # `make report` shows it too, though the finished run's report.json is never rewritten.
    report = run_digits("report", "--run", copy.name, "--runs-dir", copy.parent)
    assert report.returncode == 0, report.stderr
    assert f"with TTA {holdout['tta_ensemble_accuracy']:.4f}" in report.stdout


# --- pseudo-labels ---------------------------------------------------------------------------------------------


def test_pseudo_labels_of_the_teachers_fold_join_that_folds_training(finished_run, sample_dir, sample_test):
    """Fold k of the student trains on the test digits that fold k of the teacher predicts with at least the
    given confidence, labelled with the teacher's digit; its validation rows and the holdout stay the same."""
    teacher, _ = finished_run
    teacher_probs = {k: np.load(teacher / f"fold_{k}" / "test_probs.npy") for k in (0, 1)}
    confidence = float(np.median(teacher_probs[0].max(axis=1)))  # about half of the test digits pass
    expected = {k: int((teacher_probs[k].max(axis=1) >= confidence).sum()) for k in (0, 1)}
    assert 0 < expected[0] < len(sample_test)

    args = ("--folds", "2", "--epochs", "1", "--holdout", "0.1", "--run", "student", "--pseudo", teacher.name)
    result = train_cli(sample_dir, teacher.parent, *args, "--pseudo-confidence", str(confidence))

    assert result.returncode == 0, result.stderr[-3000:]
    student = teacher.parent / "student"
    config = json.loads((student / "config.json").read_text())["config"]
    assert (config["pseudo"], config["pseudo_confidence"]) == (teacher.name, confidence)
    assert (student / "folds.csv").read_bytes() == (teacher / "folds.csv").read_bytes()
    for k in (0, 1):
        assert json.loads((student / f"fold_{k}" / "report.json").read_text())["pseudo_labels"] == expected[k]
        assert f"+ {expected[k]:,} pseudo-labelled test digits, validating on" in result.stdout
        oof = np.load(student / f"fold_{k}" / "oof.npy")  # validation rows are the teacher's, no test digit
        assert np.array_equal(oof["row_id"], np.load(teacher / f"fold_{k}" / "oof.npy")["row_id"])
    rerun = train_cli(sample_dir, teacher.parent, "--run", "student", "--pseudo-confidence", "0.5")
    assert rerun.returncode == 2 and "pseudo_confidence: run has" in rerun.stderr  # part of the run's identity


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("unknown", ("--pseudo", "nope"), "PSEUDO=nope: no run 'nope' in"),
        ("other folds", ("--folds", "3", "--pseudo", "r1"), "does not share this run's folds"),
        ("unfinished", ("--pseudo", "half"), "fold 0 of"),
    ],
)
def test_a_teacher_that_cannot_give_honest_pseudo_labels_is_refused(finished_run, sample_dir, case, args, message):
    """Refused before anything is created: another split would leak the validation labels through the teacher."""
    teacher, _ = finished_run
    runs_dir = teacher.parent
    if case == "unfinished" and not (runs_dir / "half").exists():
        (runs_dir / "half").mkdir()
        for name in ("config.json", "folds.csv"):
            (runs_dir / "half" / name).write_bytes((teacher / name).read_bytes())
    run = f"refused-{case.replace(' ', '-')}"
    result = train_cli(sample_dir, runs_dir, "--folds", "2", "--holdout", "0.1", *args, "--run", run)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (runs_dir / run).exists()


def test_the_train_command_itself_never_imports_tensorflow(finished_run):
    """The `make train` process checks the config, writes the run and waits for its folds' processes:
    TensorFlow (~600 MB resident) is imported by those processes only."""
    run_dir, result = finished_run
    run_report = json.loads((run_dir / "report.json").read_text())
    assert run_report["oof_rows"] == 2700 and run_report["holdout"]["rows"] == 300  # it trained both folds
    assert result.stdout.splitlines()[-1] == "imported: []"
    versions = json.loads((run_dir / "config.json").read_text())["versions"]
    assert versions["tensorflow"].startswith("2.") and versions["keras"].startswith("3.")


def test_pseudo_labels_are_the_teachers_confident_digits_with_their_images(tmp_path):
    from digits import train

    teacher = tmp_path / "teacher"
    (teacher / "fold_1").mkdir(parents=True)
    probs = np.full((5, 10), 0.01, dtype=np.float32)
    for row, (digit, confidence) in enumerate([(3, 0.91), (7, 0.98), (0, 0.5), (9, 0.99), (7, 0.2)]):
        probs[row, digit] = confidence
    np.save(teacher / "fold_1" / "test_probs.npy", probs)
    test_images = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28, 1)
    labelled = train.FoldData(
        np.zeros((2, 28, 28, 1), np.uint8), np.array([4, 5]), np.ones((1, 28, 28, 1), np.uint8), np.array([1]), [9]
    )

    result = train.add_pseudo_labels(labelled, teacher, 1, test_images, confidence=0.9)

    assert result.train_labels.tolist() == [4, 5, 3, 7, 9]  # the labelled rows, then test rows 0, 1 and 3
    assert np.array_equal(result.train_images[2:], test_images[[0, 1, 3]])
    assert np.array_equal(result.train_images[:2], labelled.train_images)
    assert result.val_row_ids == [9] and result.pseudo_count == 3
    assert result.pseudo_source["count"] == 3 and len(result.pseudo_source["sha256"]) == 64

    # A fold resumes only with the pseudo-labels it started with.
    started = {"epoch": 2, "pseudo": result.pseudo_source}
    train.check_resumed_pseudo_labels(started, result, "fold 2/5")
    train.check_resumed_pseudo_labels({"epoch": 0}, result, "fold 2/5")  # not started yet: anything goes
    probs[4, 7] = 0.95  # the teacher's fold was retrained: one more confident digit
    np.save(teacher / "fold_1" / "test_probs.npy", probs)
    changed = train.add_pseudo_labels(labelled, teacher, 1, test_images, confidence=0.9)
    with pytest.raises(train.RunError, match="fold 2/5 was started with pseudo-labels from .*teacher.*have changed"):
        train.check_resumed_pseudo_labels(started, changed, "fold 2/5")
