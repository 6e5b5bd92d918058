"""Ensemble fold predictions into a validated submission, and talk to Kaggle about it.

In:  a finished run folder (`fold_<k>/test_probs.npy`, `oof.csv`), or several; the competition's
     `sample_submission.csv` (its row count is the contract).
Out: `submissions/<run>-cv<OOF accuracy>.csv` (`ImageId,Label`; validated before it is written,
     written atomically, never overwritten) and the blended probabilities beside the run
     (`runs/<run>/blend_test_probs.npy`) for later blending.

Soft voting: the mean of the fold models' probabilities. Optional test-time augmentation (TTA)
averages each model over small shifts of the image; its effect is measured on the out-of-fold
rows, never on the test set. Ensemble weights across runs are chosen on OOF predictions only.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from digits import data, fileio, paths

HEADER = ("ImageId", "Label")
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (rows, columns) in pixels


class SubmissionError(ValueError):
    """A submission cannot be built, validated or uploaded; the message says what to do."""


# --- pure functions -----------------------------------------------------------------------------------


def blend(probs_list: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of probability matrices of equal shape (soft voting); rows still sum to 1."""
    if not probs_list:
        raise SubmissionError("nothing to blend: no predictions were given")
    shapes = {p.shape for p in probs_list}
    if len(shapes) != 1:
        raise SubmissionError(f"cannot blend predictions of different shapes {sorted(shapes)}")
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probs_list])
    weights = np.full(len(probs_list), 1.0 / len(probs_list)) if weights is None else np.asarray(weights, float)
    if (
        weights.shape != (len(probs_list),)
        or not np.all(np.isfinite(weights))
        or np.any(weights < 0)
        or weights.sum() <= 0
    ):
        raise SubmissionError(f"weights {weights.tolist()} must be one non-negative number per model, not all zero")
    blended = np.tensordot(weights / weights.sum(), stacked, axes=1)
    return (blended / blended.sum(axis=1, keepdims=True)).astype(np.float32)


def agreement(probs_list: Sequence[np.ndarray]) -> dict:
    """How often the models agree on the predicted class: all of them, and pairwise on average."""
    predictions = np.stack([p.argmax(axis=1) for p in probs_list])
    all_agree = float((predictions == predictions[0]).all(axis=0).mean())
    pairs = [
        (predictions[i] == predictions[j]).mean()
        for i in range(len(predictions))
        for j in range(i + 1, len(predictions))
    ]
    return {
        "models": len(probs_list),
        "all_agree": all_agree,
        "pairwise_mean": float(np.mean(pairs)) if pairs else 1.0,
        "rows_disputed": int((~(predictions == predictions[0]).all(axis=0)).sum()),
    }


def to_submission(labels: np.ndarray) -> pd.DataFrame:
    labels = np.asarray(labels)
    return pd.DataFrame({"ImageId": np.arange(1, len(labels) + 1), "Label": labels.astype(np.int64)})


def shift_images(images: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Shift (N, 28, 28, 1) images by whole pixels, filling with background (0)."""
    shifted = np.zeros_like(images)
    source_rows = slice(max(-rows, 0), images.shape[1] - max(rows, 0))
    target_rows = slice(max(rows, 0), images.shape[1] - max(-rows, 0))
    source_cols = slice(max(-columns, 0), images.shape[2] - max(columns, 0))
    target_cols = slice(max(columns, 0), images.shape[2] - max(-columns, 0))
    shifted[:, target_rows, target_cols] = images[:, source_rows, source_cols]
    return shifted


def tta_probs(model, images: np.ndarray, plain: np.ndarray | None = None) -> np.ndarray:
    """A model's probabilities averaged over TTA_SHIFTS of the images (test-time augmentation).

    `plain`: the model's probabilities for the unshifted images when they are already known (a run
    stores them), so that view is not predicted again.
    """
    from digits.train import predict

    views = [
        plain if shift == (0, 0) and plain is not None else predict(model, shift_images(images, *shift))
        for shift in TTA_SHIFTS
    ]
    return blend(views)


def choose_weights(oof_probs: Sequence[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Blend weights minimising the OOF log loss (softmax-parametrised, so they stay on the simplex)."""
    from scipy.optimize import minimize

    stacked = np.stack([np.asarray(p, np.float64) for p in oof_probs])

    def loss(theta: np.ndarray) -> float:
        weights = np.exp(theta - theta.max())
        weights /= weights.sum()
        blended = np.tensordot(weights, stacked, axes=1)
        return float(-np.log(np.clip(blended[np.arange(len(labels)), labels], 1e-12, 1)).mean())

    result = minimize(loss, np.zeros(len(oof_probs)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    weights = np.exp(result.x - result.x.max())
    return weights / weights.sum()


# --- validation ---------------------------------------------------------------------------------------


def validate_submission_text(text: str, expected_rows: int, name: str = "submission") -> None:
    """Check a submission CSV against the competition's format; SubmissionError names the line."""
    text = text.lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text))
    rows = list(reader)
    while rows and not rows[-1]:  # blank lines at the end, as editors leave them: pandas reads past them too
        rows.pop()
    if not rows:
        raise SubmissionError(f"{name}: the file is empty; expected the header ImageId,Label and {expected_rows} rows.")
    header = [cell.strip() for cell in rows[0]]
    if tuple(header) != HEADER:
        raise SubmissionError(f"{name}: line 1: header is {','.join(header)!r}, expected 'ImageId,Label'.")
    seen: set[int] = set()
    for index, row in enumerate(rows[1:], start=2):
        where = f"{name}: line {index}"
        if not row:
            raise SubmissionError(f"{where}: empty line between rows; delete it.")
        if len(row) != 2:
            raise SubmissionError(f"{where}: expected 2 values (ImageId,Label), found {len(row)}.")
        image_text, label_text = (cell.strip() for cell in row)
        if not (image_text.isascii() and image_text.isdigit()):
            raise SubmissionError(f"{where}, column 'ImageId': {image_text!r} is not a positive integer.")
        if not (label_text.isascii() and label_text.isdigit()):
            raise SubmissionError(f"{where}, column 'Label': {label_text!r} is not an integer 0..9.")
        image_id, label = int(image_text), int(label_text)
        if not 1 <= image_id <= expected_rows:
            raise SubmissionError(
                f"{where}, column 'ImageId': {image_id} is outside 1..{expected_rows} "
                f"(test.csv has {expected_rows} images)."
            )
        if image_id in seen:
            raise SubmissionError(f"{where}, column 'ImageId': {image_id} appears twice.")
        if not 0 <= label <= 9:
            raise SubmissionError(f"{where}, column 'Label': {label} is outside 0..9.")
        seen.add(image_id)
    if len(seen) != expected_rows:
        missing = sorted(set(range(1, expected_rows + 1)) - seen)
        raise SubmissionError(
            f"{name}: has {len(seen)} rows, expected {expected_rows} (one per test image); missing ImageId "
            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}."
        )


def expected_rows(data_dir: Path = paths.RAW_DIR) -> int:
    """Rows a submission must have: those of the competition's sample_submission.csv."""
    path = Path(data_dir) / "sample_submission.csv"
    if not path.is_file():
        raise SubmissionError(f"{path} not found: run `make download` first (it defines the submission's rows).")
    return len(data.load_sample_submission(path))


def write_submission(frame: pd.DataFrame, path: Path, rows: int) -> None:
    """Validate, then write atomically; an existing file is never overwritten."""
    text = frame.to_csv(index=False, lineterminator="\n")
    validate_submission_text(text, rows, name=str(path))
    never = f"{path} already exists and is never overwritten; remove it yourself if you mean to."
    if path.exists():
        raise SubmissionError(never)
    try:
        fileio.write_text(path, text, overwrite=False)  # also when another process wrote it meanwhile
    except FileExistsError:
        raise SubmissionError(never) from None


# --- a run's submission -------------------------------------------------------------------------------


@dataclass
class RunPredictions:
    run_dir: Path
    fold_test_probs: list[np.ndarray]
    oof_probs: np.ndarray  # (train rows with a fold, 10), ordered by row_id
    oof_row_ids: np.ndarray
    oof_labels: np.ndarray
    oof_accuracy: float
    tta: bool


def finished_folds(run_dir: Path) -> list[int]:
    config = json.loads((run_dir / "config.json").read_text())["config"]
    folds = [k for k in range(int(config["folds"])) if (run_dir / f"fold_{k}" / "report.json").is_file()]
    if len(folds) < int(config["folds"]):
        missing = sorted(set(range(int(config["folds"]))) - set(folds))
        raise SubmissionError(
            f"{run_dir}: fold(s) {','.join(map(str, missing))} are not finished; "
            f"finish them with `make train RUN={run_dir.name}` first."
        )
    return folds


def load_run(
    run_dir: Path, tta: bool = False, data_dir: Path = paths.RAW_DIR, log: Callable[[str], None] = print
) -> RunPredictions:
    folds = finished_folds(run_dir)
    if not (run_dir / "report.json").is_file():  # oof.csv is written with it
        # Every fold is finished, but the training stopped before the run report, or the folds were trained
        # apart (ONLY=..., on several machines) and gathered here: write it, as `make train RUN=<run>` would.
        from digits import train

        log(f"{run_dir}: every fold is finished; writing the run report (oof.csv, report.json) first")
        train.train_run(train.resume_config(run_dir), run_dir, data_dir, log=log)
    oof = pd.read_csv(run_dir / "oof.csv")
    prob_columns = [f"prob_{c}" for c in range(data.NUM_CLASSES)]
    oof_probs = oof[prob_columns].to_numpy(np.float32)
    labels = oof["label"].to_numpy()
    if not tta:
        test_probs = [np.load(run_dir / f"fold_{k}" / "test_probs.npy") for k in folds]
        accuracy = float((oof_probs.argmax(1) == labels).mean())
        return RunPredictions(run_dir, test_probs, oof_probs, oof["row_id"].to_numpy(), labels, accuracy, False)
    return _tta_predictions(run_dir, folds, oof, data_dir, log)


def _tta_predictions(
    run_dir: Path, folds: list[int], oof: pd.DataFrame, data_dir: Path, log: Callable[[str], None]
) -> RunPredictions:
    """Average every fold model over TTA_SHIFTS, on its own OOF rows (to measure) and on test."""
    import keras

    from digits import folds as folds_lib

    cached = run_dir / "tta.npz"
    train = data.load_train(Path(data_dir) / "train.csv")
    fold_ids = folds_lib.read_folds(run_dir / "folds.csv", train.labels)
    holdout_rows = np.flatnonzero(fold_ids == folds_lib.HOLDOUT_FOLD)
    test = data.load_test(Path(data_dir) / "test.csv")
    oof_probs = np.zeros((len(oof), data.NUM_CLASSES), np.float32)
    test_probs = []
    started = time.perf_counter()
    for fold in folds:
        model = keras.saving.load_model(run_dir / f"fold_{fold}" / "model.keras", safe_mode=True)
        mask = (oof["fold"] == fold).to_numpy()
        rows = oof.loc[mask, "row_id"].to_numpy()
        fold_dir = run_dir / f"fold_{fold}"
        # The unshifted views are the run's stored predictions (oof.csv keeps float32 exactly).
        plain_oof = oof.loc[mask, [f"prob_{c}" for c in range(data.NUM_CLASSES)]].to_numpy(np.float32)
        oof_probs[mask] = tta_probs(model, train.images[rows], plain=plain_oof)
        test_probs.append(tta_probs(model, test, plain=np.load(fold_dir / "test_probs.npy")))
        if holdout_rows.size and not (fold_dir / paths.HOLDOUT_TTA_PROBS).is_file():
            # Runs trained before TTA was measured on the holdout: measure it now, once.
            holdout_plain = np.load(fold_dir / paths.HOLDOUT_PROBS)
            fileio.write_npy(
                fold_dir / paths.HOLDOUT_TTA_PROBS, tta_probs(model, train.images[holdout_rows], plain=holdout_plain)
            )
        log(f"TTA: fold {fold} done ({time.perf_counter() - started:.0f} s)")
        keras.utils.clear_session()
    labels = oof["label"].to_numpy()
    accuracy = float((oof_probs.argmax(1) == labels).mean())
    with fileio.atomic_path(cached) as tmp:
        np.savez(tmp, oof_probs=oof_probs, test_probs=np.stack(test_probs))
    return RunPredictions(run_dir, test_probs, oof_probs, oof["row_id"].to_numpy(), labels, accuracy, True)


def make_submission(
    run_dir: Path,
    tta: bool = False,
    data_dir: Path = paths.RAW_DIR,
    submissions_dir: Path = paths.SUBMISSIONS_DIR,
    log: Callable[[str], None] = print,
) -> Path:
    started = time.perf_counter()
    rows = expected_rows(data_dir)
    run = load_run(run_dir, tta=tta, data_dir=data_dir, log=log)
    if run.fold_test_probs[0].shape[0] != rows:
        raise SubmissionError(
            f"{run_dir}: the fold predictions cover {run.fold_test_probs[0].shape[0]} test images, "
            f"but {Path(data_dir) / 'sample_submission.csv'} has {rows} rows: this run was trained "
            f"on other data. Pass the run's data folder, or train a run on this data."
        )
    blended = blend(run.fold_test_probs)
    suffix = "-tta" if tta else ""
    fileio.write_npy(run_dir / f"blend_test_probs{suffix}.npy", blended)
    folds_agree = agreement(run.fold_test_probs)
    path = Path(submissions_dir) / f"{run_dir.name}-cv{run.oof_accuracy:.5f}{suffix}.csv"
    if path.exists():
        log(f"{path} already exists; not overwritten.")
    else:
        write_submission(to_submission(blended.argmax(axis=1)), path, rows)
    if tta:
        from digits.report import run_holdout_summary

        plain = load_run(run_dir, tta=False, data_dir=data_dir)
        log(
            f"TTA on OOF rows: accuracy {plain.oof_accuracy:.5f} without, {run.oof_accuracy:.5f} with "
            f"({TTA_SHIFTS!r} pixel shifts)"
        )
        try:
            holdout = run_holdout_summary(run_dir)
        except (OSError, ValueError) as error:  # the submission is written; say why this figure is missing
            log(
                f"holdout accuracy not measured: {error}. The submission above is complete; a fold folder of "
                f"{run_dir} lacks its holdout predictions, so retrain that fold (a new RUN=<name>) to measure it."
            )
            holdout = None
        if holdout and "tta_ensemble_accuracy" in holdout:
            log(
                f"TTA on the {holdout['rows']:,} holdout rows: fold ensemble accuracy "
                f"{holdout['ensemble_accuracy']:.5f} without, {holdout['tta_ensemble_accuracy']:.5f} with"
            )
    log(
        f"folds agree on {folds_agree['all_agree']:.4%} of test images ({folds_agree['rows_disputed']} disputed; "
        f"pairwise {folds_agree['pairwise_mean']:.4%})"
    )
    log(
        f"submission: {path}  (OOF accuracy {run.oof_accuracy:.5f}, {len(run.fold_test_probs)} folds, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    return path


def make_ensemble(
    run_dirs: Sequence[Path],
    weighting: str = "equal",
    data_dir: Path = paths.RAW_DIR,
    submissions_dir: Path = paths.SUBMISSIONS_DIR,
    log: Callable[[str], None] = print,
) -> Path:
    """Blend several runs (each first averaged over its folds) into one submission."""
    if len(run_dirs) < 2:
        raise SubmissionError("an ensemble needs at least two runs: RUNS=a,b")
    rows = expected_rows(data_dir)
    runs = [load_run(run_dir) for run_dir in run_dirs]
    reference = runs[0]
    for run in runs[1:]:
        if not np.array_equal(run.oof_row_ids, reference.oof_row_ids):
            raise SubmissionError(
                f"{run.run_dir} and {reference.run_dir} hold OOF predictions for different train "
                f"rows (a different HOLDOUT, holdout seed or data); their OOF scores are not comparable. Blend "
                f"runs trained on the same train.csv with the same HOLDOUT and HOLDOUT_SEED (by default SEED): "
                f"{reference.run_dir.name} has {_holdout_settings(reference.run_dir)}, so train the others with "
                f"the same (and any SEED)."
            )
    oof_list = [run.oof_probs for run in runs]
    if weighting == "oof":
        weights = choose_weights(oof_list, reference.oof_labels)
    elif weighting == "equal":
        weights = np.full(len(runs), 1 / len(runs))
    else:
        raise SubmissionError(f"WEIGHTS={weighting!r}: choose 'equal' or 'oof'")
    oof_blend = blend(oof_list, weights)
    oof_accuracy = float((oof_blend.argmax(1) == reference.oof_labels).mean())
    test_blend = blend([blend(run.fold_test_probs) for run in runs], weights)
    if test_blend.shape[0] != rows:
        raise SubmissionError(f"the runs predict {test_blend.shape[0]} test images; the competition has {rows}.")
    try:
        holdout = ensemble_holdout(runs, weights)
    except SubmissionError as error:  # the blend is still worth writing: say why this figure is missing
        log(f"holdout accuracy not measured: {error}")
        holdout = None
    for run, weight in zip(runs, weights, strict=True):
        alone = f", holdout {holdout['run_accuracy'][run.run_dir.name]:.5f}" if holdout else ""
        log(f"  {run.run_dir.name}: OOF accuracy {run.oof_accuracy:.5f}{alone}, weight {weight:.3f}")
    name = "+".join(run.run_dir.name for run in runs)
    suffix = "-oof" if weighting == "oof" else ""  # an OOF-weighted blend is another file than the equal one
    path = Path(submissions_dir) / f"ensemble-{name}-cv{oof_accuracy:.5f}{suffix}.csv"
    if path.exists():
        log(f"{path} already exists; not overwritten.")
    else:
        write_submission(to_submission(test_blend.argmax(axis=1)), path, rows)
    log(f"ensemble OOF accuracy {oof_accuracy:.5f} ({weighting} weights); submission: {path}")
    if holdout:
        log(
            f"ensemble holdout accuracy {holdout['accuracy']:.5f} on the {holdout['rows']:,} rows that no "
            f"fold of any run trained on ({holdout['errors']} errors)"
        )
    return path


def load_holdout_probs(path: Path, run_dir: Path, rows: int) -> np.ndarray:
    """One fold's saved holdout probabilities (`holdout_probs.npy` or its TTA twin), checked against the `rows`
    that `run_dir`'s folds.csv holds out: a SubmissionError says what is wrong and what to do."""
    try:
        probs = np.load(path)
    except (OSError, ValueError, EOFError) as error:
        raise SubmissionError(f"{path} cannot be read ({error}); retrain {run_dir.name} (a new RUN=<name>).") from error
    if probs.shape != (rows, data.NUM_CLASSES):
        raise SubmissionError(
            f"{path} holds predictions of shape {probs.shape}, not one row per holdout row of "
            f"{run_dir / 'folds.csv'} ({rows}, {data.NUM_CLASSES}): the fold folder comes "
            f"from another run. Copy back the run's own fold folder, or retrain it."
        )
    return probs


def _holdout_settings(run_dir: Path) -> str:
    """`HOLDOUT=0.1 HOLDOUT_SEED=42`: what another run needs to hold out the same rows as `run_dir`."""
    from digits import config as config_lib

    config = config_lib.from_dict(json.loads((run_dir / "config.json").read_text())["config"])
    if config.holdout == 0:
        return "no HOLDOUT"
    return f"HOLDOUT={config.holdout} HOLDOUT_SEED={config.holdout_rows_seed()}"


def ensemble_holdout(runs: Sequence[RunPredictions], weights: Sequence[float]) -> dict | None:
    """The blend's accuracy on the runs' common holdout (None when the runs have none).

    Each run contributes the mean of its fold models' holdout probabilities, weighted like its test
    predictions. The runs hold OOF predictions for the same rows (checked by the caller), so they hold
    out the same rows too. A fold without its holdout predictions is a SubmissionError that says what to do.
    """
    from digits import folds as folds_lib

    frame = pd.read_csv(runs[0].run_dir / "folds.csv")
    held_out = (frame["fold"] == folds_lib.HOLDOUT_FOLD).to_numpy()
    if not held_out.any():
        return None
    labels = frame.loc[held_out, "label"].to_numpy()
    run_probs = []
    for run in runs:
        fold_probs = []
        for k in range(len(run.fold_test_probs)):
            path = run.run_dir / f"fold_{k}" / paths.HOLDOUT_PROBS
            if not path.is_file():
                raise SubmissionError(
                    f"{path} is missing, so the ensemble's holdout accuracy cannot be measured: that fold was "
                    f"trained before holdout predictions were saved. Retrain {run.run_dir.name} (a new RUN=<name>)."
                )
            fold_probs.append(load_holdout_probs(path, run.run_dir, len(labels)))
        run_probs.append(blend(fold_probs))
    blended = blend(run_probs, weights)
    wrong = int((blended.argmax(axis=1) != labels).sum())
    return {
        "rows": int(len(labels)),
        "accuracy": 1.0 - wrong / len(labels),
        "errors": wrong,
        "run_accuracy": {
            run.run_dir.name: float((p.argmax(axis=1) == labels).mean()) for run, p in zip(runs, run_probs, strict=True)
        },
    }


# --- Kaggle -------------------------------------------------------------------------------------------


def _kaggle_call(action: str, competition: str, call: Callable):
    """Run a Kaggle client call, turning its errors into SubmissionErrors that say what to do."""
    import requests

    from digits.download import explain_http_error

    try:
        return call()
    except requests.exceptions.HTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 400:
            raise SubmissionError(
                f"Kaggle refused to {action} (400 Bad Request: {str(error).strip()}). Common causes: you have not "
                f"joined the competition (accept its rules at https://www.kaggle.com/competitions/{competition}/rules), "
                f"the daily submission limit is reached (try again tomorrow), or the file is not a valid submission."
            ) from None
        raise SubmissionError(explain_http_error(error, competition, action)) from None
    except (requests.exceptions.RequestException, OSError) as error:
        raise SubmissionError(explain_http_error(error, competition, action)) from None


def upload(
    path: Path,
    message: str,
    competition: str = paths.COMPETITION,
    data_dir: Path = paths.RAW_DIR,
    poll_seconds: float = 600,
    poll_interval: float = 10,
    log: Callable[[str], None] = print,
) -> dict:
    """Validate `path`, upload it with the official client, then poll for its public score."""
    from digits.download import DownloadError, kaggle_api, warn_if_config_readable

    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file; build one with `make submission`.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SubmissionError(f"{path}: not a UTF-8 text CSV; expected the header ImageId,Label.") from None
    try:
        validate_submission_text(text, expected_rows(data_dir), name=str(path))
    except SubmissionError as error:
        raise SubmissionError(
            f"{error} Nothing was uploaded: fix the file, or build a valid one with `make submission`."
        ) from None
    warn_if_config_readable(log)
    try:
        api = kaggle_api("submit", competition)
    except DownloadError as error:
        raise SubmissionError(str(error)) from None
    log(f"uploading {path.name} to '{competition}' with message {message!r} ...")
    response = _kaggle_call(
        "submit", competition, lambda: api.competition_submit(str(path), message, competition, quiet=True)
    )
    reply = getattr(response, "message", "") or ""
    if reply == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise SubmissionError(f"the upload of {path.name} failed ({reply}); check your connection and rerun.")
    log(f"submitted: {reply or 'accepted'}")
    # Kaggle's reply names the new submission (`ref`): an earlier submission of a file with the same name,
    # listed before the new one shows up, must not lend it its score. A reply without a ref: the newest
    # submission of that file name.
    ref = getattr(response, "ref", None) or None
    deadline = time.monotonic() + poll_seconds
    while True:
        submissions = (
            _kaggle_call("list submissions", competition, lambda: api.competition_submissions(competition)) or []
        )
        mine = next(
            (
                s
                for s in submissions
                if (getattr(s, "ref", None) == ref if ref is not None else getattr(s, "file_name", None) == path.name)
            ),
            None,
        )
        status = str(getattr(getattr(mine, "status", None), "name", "PENDING"))
        if mine is not None and status == "COMPLETE":
            log(f"public score: {mine.public_score}")
            return {"status": status, "public_score": mine.public_score, "description": mine.description}
        if mine is not None and status == "ERROR":
            raise SubmissionError(f"Kaggle could not score {path.name}: {mine.error_description or 'no reason given'}")
        if time.monotonic() >= deadline:
            log("Kaggle has not scored it yet; `make submissions` shows the score when it is ready.")
            return {"status": status, "public_score": None}
        time.sleep(poll_interval)


def list_submissions(competition: str = paths.COMPETITION) -> pd.DataFrame:
    from digits.download import DownloadError, kaggle_api

    try:
        api = kaggle_api("list", competition)
    except DownloadError as error:
        raise SubmissionError(str(error)) from None
    submissions = _kaggle_call("list submissions", competition, lambda: api.competition_submissions(competition)) or []
    return pd.DataFrame(
        [
            {
                "date": str(getattr(s, "date", "") or "")[:19],
                "file": s.file_name,
                "message": s.description,
                "status": getattr(getattr(s, "status", None), "name", ""),
                "public_score": s.public_score,
            }
            for s in submissions
        ],
        columns=["date", "file", "message", "status", "public_score"],
    )


# --- command line -------------------------------------------------------------------------------------


def _cmd_submission(args) -> int:
    from digits.train import resolve_run_dir

    run_dir = resolve_run_dir(args.run, Path(args.runs_dir))
    make_submission(run_dir, tta=args.tta, data_dir=Path(args.data_dir), submissions_dir=Path(args.submissions_dir))
    return 0


def _cmd_ensemble(args) -> int:
    from digits.train import resolve_run_dir

    names = [name for name in (args.runs or "").split(",") if name.strip()]
    run_dirs = [resolve_run_dir(name.strip(), Path(args.runs_dir)) for name in names]
    make_ensemble(
        run_dirs, weighting=args.weights, data_dir=Path(args.data_dir), submissions_dir=Path(args.submissions_dir)
    )
    return 0


def _cmd_submit(args) -> int:
    from digits.train import resolve_run_dir

    if args.file:
        path = Path(args.file)
        message = args.message or f"{path.stem}"
    else:
        run_dir = resolve_run_dir(args.run, Path(args.runs_dir))
        path = make_submission(run_dir, data_dir=Path(args.data_dir), submissions_dir=Path(args.submissions_dir))
        cv = path.stem.rsplit("-cv", 1)[-1]
        message = args.message or f"run {run_dir.name}, CV accuracy {cv}"
    upload(
        path,
        message,
        competition=args.competition,
        data_dir=Path(args.data_dir),
        poll_seconds=args.poll_seconds,
        poll_interval=args.poll_interval,
    )
    return 0


def _cmd_submissions(args) -> int:
    frame = list_submissions(args.competition)
    if frame.empty:
        print(f"no submissions yet for '{args.competition}'")
    else:
        print(frame.to_string(index=False))
    return 0


def register_commands(commands) -> None:
    def common(parser, run: bool = True) -> None:
        if run:
            parser.add_argument("--run", default=None, help="run name (default: the latest run)")
        parser.add_argument("--runs-dir", default=str(paths.RUNS_DIR))
        parser.add_argument("--data-dir", default=str(paths.RAW_DIR))
        parser.add_argument("--submissions-dir", default=str(paths.SUBMISSIONS_DIR))

    parser = commands.add_parser("submission", help="blend a run's folds into a submission CSV")
    common(parser)
    parser.add_argument("--tta", action="store_true", help="average each model over small shifts")
    parser.set_defaults(handler=_cmd_submission)

    parser = commands.add_parser("ensemble", help="blend several runs into one submission")
    common(parser, run=False)
    parser.add_argument("--runs", required=True, help="run names separated by commas")
    parser.add_argument("--weights", default="equal", choices=["equal", "oof"])
    parser.set_defaults(handler=_cmd_ensemble)

    parser = commands.add_parser("submit", help="upload a submission to Kaggle and print its score")
    common(parser)
    parser.add_argument("--file", default=None, help="the CSV to upload (default: the latest run's submission)")
    parser.add_argument("--message", default=None)
    parser.add_argument("--competition", default=paths.COMPETITION)
    parser.add_argument("--poll-seconds", type=float, default=600)
    parser.add_argument("--poll-interval", type=float, default=10)
    parser.set_defaults(handler=_cmd_submit)

    parser = commands.add_parser("submissions", help="list the competition's past submissions")
    parser.add_argument("--competition", default=paths.COMPETITION)
    parser.set_defaults(handler=_cmd_submissions)
