"""Stratified k-fold CNN training, resumable, with per-fold artifacts.

In:  a Config, `data/raw/train.csv` and `test.csv` (or any folder holding them), a run folder.
Out: `runs/<run>/config.json`, `folds.csv`, and per fold `fold_<k>/`: `model.keras` (best epoch on
     the fold's validation rows), `history.csv`, `oof.npy` (row ids + validation probabilities),
     `test_probs.npy`, `holdout_probs.npy` (when HOLDOUT > 0), `report.json` and pictures; then the
     run-level `oof.csv`, `report.json` and `report.html` (see report.py).

A fold is finished when its `report.json` exists (written last). An interrupted fold resumes from
its last completed epoch: at every epoch end the weights and optimizer state are saved to
`fold_<k>/backup/` (atomically), then a small `state.json` commits that epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import io
import json
import os
import platform
import random
import subprocess
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digits import config as config_lib
from digits import data, fileio, folds, paths
from digits.config import Config, ConfigError

# Quiet TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) unless the user asks for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keras warns that fit(shuffle=True) is ignored for a tf.data input; ours is shuffled in the pipeline.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed", category=UserWarning)

CLASS_NAMES = [str(digit) for digit in range(data.NUM_CLASSES)]


class RunError(RuntimeError):
    """A run folder cannot be used as asked (locked, different config, not found)."""


@dataclass
class FoldData:
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    val_row_ids: np.ndarray
    pseudo_count: int = 0  # pseudo-labelled test digits at the end of train_images/train_labels
    pseudo_source: dict | None = None  # where they come from: the teacher's file, its digest, the count


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_tensorflow(config: Config) -> None:
    """Seeds, determinism and threads; call before building any model."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    cores = available_cores()
    with contextlib.suppress(RuntimeError):  # already initialised in this process: keep its settings
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(min(cores, 2))


def slow_precision(precision: str, cpu: dict | None = None) -> str | None:
    """Why training in `precision` is slow on this CPU (`cpu`: `bench.cpu_info()`'s record), or None."""
    from digits.bench import cpu_info, native_bfloat16

    cpu = cpu or cpu_info()
    native = native_bfloat16(cpu)
    if precision != "bfloat16" or native:
        return None
    why = {
        False: "it lacks native bfloat16 (AVX512-BF16, AMX), so bfloat16 is emulated and slower than float32",
        None: "its instruction sets are unknown; bfloat16 trains faster only with AVX512-BF16 or AMX",
    }[native]
    return (
        f"PRECISION=bfloat16 on this CPU ({cpu['model']}): {why}. To train in float32, start a new run "
        f"(RUN=<new name>) with PRECISION=float32 or auto."
    )


def distribution_strategy():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def cosine_schedule(config: Config, steps_per_epoch: int):
    """Linear warm-up to the peak learning rate, then cosine decay to zero at the last step."""
    import keras

    total = max(config.epochs * steps_per_epoch, 1)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(total - warmup, 1),
        alpha=0.0,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def optimizer(config: Config, steps_per_epoch: int):
    """Adam on the cosine schedule; AdamW when `config.weight_decay` > 0, decaying the conv and dense kernels only
    (batch norm's gamma and beta and the biases keep their scale)."""
    import keras

    schedule = cosine_schedule(config, steps_per_epoch)
    if not config.weight_decay:
        return keras.optimizers.Adam(learning_rate=schedule)
    adamw = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    adamw.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return adamw


def make_train_dataset(images: np.ndarray, labels: np.ndarray, config: Config, seed: int):
    """Shuffled, batched, augmented (parallel map) and prefetched training stream of (pixels, one-hot)."""
    import tensorflow as tf

    from digits.models import augmenter

    one_hot = np.eye(data.NUM_CLASSES, dtype=np.float32)[labels]
    dataset = tf.data.Dataset.from_tensor_slices((images, one_hot))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(config.batch)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if config.augment and (config.rotation or config.zoom or config.shift or config.elastic):
        augment = augmenter(
            config.rotation,
            config.zoom,
            config.shift,
            seed=seed,
            elastic_alpha=config.elastic,
            elastic_sigma=config.elastic_sigma,
        )
        dataset = dataset.map(
            lambda x, y: (augment(x, training=True), y),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=config.deterministic,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(images: np.ndarray, labels: np.ndarray, batch: int = 512):
    import tensorflow as tf

    one_hot = np.eye(data.NUM_CLASSES, dtype=np.float32)[labels]
    dataset = tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(batch)
    return dataset.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)


_INFERENCE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
ENGINES = ("auto", "xnnpack", "keras")  # how `predict` runs a float32 inference copy
XNNPACK_BATCH = 256  # 64-1,024 ran at the same speed on the AVX2 CPU (session 21); 256 keeps the buffers small


@functools.cache
def _this_cpu() -> dict:
    from digits.bench import cpu_info

    return cpu_info()


def fast_engine(cpu: dict | None = None) -> str:
    """The faster engine for float32 prediction on this CPU (`cpu`: `bench.cpu_info()`'s record, default this
    machine's): Keras (oneDNN) on a CPU with AVX-512, where XNNPACK ran at 0.89-1.05x its speed, else XNNPACK, which
    ran at 1.6-2x Keras' speed on the AVX2-only AMD EPYC (docs/experiments.md, sessions 21-22). A CPU whose flags
    are unknown (not x86) gets XNNPACK, the engine TensorFlow Lite built for such CPUs; unmeasured here."""
    cpu = cpu or _this_cpu()
    return "keras" if "avx512f" in (cpu["flags"] or []) else "xnnpack"


def float32_engine(engine: str = "auto") -> str:
    """The engine `predict` runs float32 on when asked for `engine`: "auto" is `fast_engine`'s choice, and XNNPACK
    becomes Keras where this TensorFlow has no Lite interpreter (`models.xnnpack_available`)."""
    from digits.models import xnnpack_available

    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}'; choose one of: {', '.join(ENGINES)}")
    engine = fast_engine() if engine == "auto" else engine
    return "xnnpack" if engine == "xnnpack" and xnnpack_available() else "keras"


def predict(
    model, images: np.ndarray, batch: int = 1024, precision: str = "float32", engine: str = "auto"
) -> np.ndarray:
    """Class probabilities (N, 10) float32 for uint8 images, through the model's inference copy.

    The copy (batch norms folded into the convs, `models.inference_model`) is kept while the model lives and its
    weights do not change, one per precision and engine, so repeated calls (TTA, several sets, the bench's turns)
    build it once. In float32 it runs on `engine`: "keras", or "xnnpack" (TensorFlow Lite's engine,
    `models.XnnpackRunner`: the same probabilities to about 1e-6), or "auto", the faster of the two on this CPU
    (`fast_engine`); XNNPACK falls back to Keras where this TensorFlow has no Lite interpreter. bfloat16 always
    runs in Keras, which has the bfloat16 kernels.
    """
    import tensorflow as tf

    from digits.models import XnnpackRunner, inference_model, is_graph_model

    engine = float32_engine(engine)  # which also refuses an unknown name
    if precision != "float32":
        engine = "keras"  # which has the bfloat16 kernels
    runner = model
    if is_graph_model(model):  # a subclassed model cannot be rewritten: it predicts as it is
        digest = hashlib.blake2b(digest_size=16)
        for weights in model.get_weights():
            digest.update(weights.tobytes())
        key = (precision, engine, digest.hexdigest())
        copies = _INFERENCE_MODELS.setdefault(model, {})
        if key not in copies:
            for stale in [old for old in copies if old[-1] != key[-1]]:  # copies of weights the model no longer has
                del copies[stale]
            copy = copies.get((precision, "keras", key[-1]))
            if copy is None:
                copy = inference_model(model, precision)
            copies[key] = XnnpackRunner(copy, available_cores()) if engine == "xnnpack" else copy
        runner = copies[key]
        if engine == "xnnpack":
            return runner.predict(images, batch=min(batch, XNNPACK_BATCH))
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch).map(lambda x: tf.cast(x, tf.float32))
    return runner.predict(dataset.prefetch(tf.data.AUTOTUNE), verbose=0).astype(np.float32)


def peak_rss_mb() -> float:
    """The high-water mark of this process's resident memory, in MB (each fold runs in its own process).

    Linux: VmHWM of /proc/self/status. Not getrusage's ru_maxrss, which a spawned process inherits from
    the process image it was forked from (here the parent's, with train.csv parsed), so it would report the
    parent's peak rather than the fold's. Elsewhere: 0, and the samples taken at every epoch end stand.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux), in MB."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        import resource

        scale = 1e6 if platform.system() == "Darwin" else 1e3  # ru_maxrss: bytes on macOS, kilobytes elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _format_seconds(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _fold_monitor_class():
    """Built lazily so that importing this module does not import Keras."""
    import keras

    class FoldMonitor(keras.callbacks.Callback):
        """Progress line, history.csv, best-epoch weights and the resumable backup, all per epoch.

        Order at each epoch end (each write atomic): best weights (if improved), history.csv,
        backup weights, then state.json, which commits the epoch. A kill at any point resumes from
        the last committed epoch with consistent history and best-epoch records.
        """

        def __init__(
            self,
            fold_dir: Path,
            label: str,
            epochs: int,
            state: dict,
            eta_after: Callable[[float], str],
            log: Callable[[str], None],
        ):
            super().__init__()
            self.fold_dir = fold_dir
            self.backup_dir = fold_dir / "backup"
            self.label = label
            self.epochs = epochs
            self.state = state
            self.eta_after = eta_after
            self.log = log
            self.epoch_started = 0.0
            self.peak_rss_mb = state.get("peak_rss_mb", 0.0)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            seconds = time.perf_counter() - self.epoch_started
            self.peak_rss_mb = max(self.peak_rss_mb, current_rss_mb())
            row = {
                "epoch": epoch + 1,
                "seconds": round(seconds, 2),
                "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            }
            row.update({key: float(value) for key, value in logs.items() if key != "learning_rate"})
            history = [*self.state["history"], row]
            improved = row.get("val_accuracy", -1.0) > self.state["best_val_accuracy"] or (
                row.get("val_accuracy", -1.0) == self.state["best_val_accuracy"]
                and row.get("val_loss", np.inf) < self.state["best_val_loss"]
            )
            best_epoch = self.state["best_epoch"]
            best_file = self.state.get("best_file")
            if improved:
                best_epoch = epoch + 1
                best_file = f"best-epoch{best_epoch:03d}.weights.h5"
                with fileio.atomic_path(self.backup_dir / best_file) as tmp:
                    self.model.save_weights(tmp)
            _write_history(self.fold_dir / "history.csv", history)
            with fileio.atomic_path(self.backup_dir / "latest.weights.h5") as tmp:
                self.model.save_weights(tmp)
            previous_best = self.state.get("best_file")
            self.state.update(
                epoch=epoch + 1,
                history=history,
                best_epoch=best_epoch,
                best_file=best_file,
                best_val_accuracy=row.get("val_accuracy", -1.0) if improved else self.state["best_val_accuracy"],
                best_val_loss=row.get("val_loss", np.inf) if improved else self.state["best_val_loss"],
                train_seconds=self.state["train_seconds"] + seconds,
                peak_rss_mb=self.peak_rss_mb,
            )
            fileio.write_json(self.backup_dir / "state.json", _jsonable(self.state))
            if previous_best and previous_best != best_file:
                (self.backup_dir / previous_best).unlink(missing_ok=True)
            done = epoch + 1
            eta = self.eta_after(seconds * (self.epochs - done))
            self.log(
                f"{self.label}  epoch {done:>2}/{self.epochs}  loss {row.get('loss', float('nan')):.4f}  "
                f"acc {row.get('accuracy', float('nan')):.4f}  val_loss {row.get('val_loss', float('nan')):.4f}  "
                f"val_acc {row.get('val_accuracy', float('nan')):.4f}{' *' if improved else '  '}  "
                f"{seconds:5.1f} s/epoch  ETA {eta}"
            )

    return FoldMonitor


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_history(path: Path, history: list[dict]) -> None:
    import pandas as pd

    with fileio.atomic_open(path, "w", newline="") as handle:
        pd.DataFrame(history).to_csv(handle, index=False)


def _initial_state() -> dict:
    return {
        "epoch": 0,
        "history": [],
        "best_epoch": 0,
        "best_file": None,
        "best_val_accuracy": -1.0,
        "best_val_loss": float("inf"),
        "train_seconds": 0.0,
        "peak_rss_mb": 0.0,
    }


def _load_state(backup_dir: Path) -> dict:
    path = backup_dir / "state.json"
    if not path.exists():
        return _initial_state()
    state = json.loads(path.read_text())
    state["best_val_loss"] = state["best_val_loss"] if state.get("best_val_loss") is not None else float("inf")
    return state


def train_fold(
    config: Config,
    fold: int,
    fold_data: FoldData,
    test_images: np.ndarray,
    holdout_images: np.ndarray | None,
    fold_dir: Path,
    log: Callable[[str], None] = print,
    eta_after: Callable[[float], str] | None = None,
) -> dict:
    """Train one fold's model (resuming if a backup exists) and write all of its artifacts.

    Returns the fold's report (also written to `fold_dir/report.json`, last).
    """
    import keras

    from digits import models, report

    keras.utils.clear_session(free_memory=True)
    keras.utils.set_random_seed(config.seed + fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    backup_dir = fold_dir / "backup"
    backup_dir.mkdir(exist_ok=True)
    for stale in [*fold_dir.glob(".*.tmp*"), *backup_dir.glob(".*.tmp*")]:
        stale.unlink(missing_ok=True)  # temporaries of a write that a kill interrupted
    state = _load_state(backup_dir)
    label = (
        f"fold {fold + 1}/{config.folds}"
        if config.only is None
        else f"fold {fold} ({config.fold_ids().index(fold) + 1}/{len(config.fold_ids())})"
    )
    check_resumed_pseudo_labels(state, fold_data, label)
    state["pseudo"] = fold_data.pseudo_source  # saved with the state at every epoch end
    steps_per_epoch = int(np.ceil(len(fold_data.train_labels) / config.batch))

    with distribution_strategy().scope(), models.precision_policy(config.precision):
        model = models.build_model(config.fold_model(fold), dropout_scale=config.dropout_scale)
        model.compile(
            optimizer=optimizer(config, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
    if state["epoch"] > 0:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(backup_dir / "latest.weights.h5")
        log(
            f"{label}: resuming after epoch {state['epoch']}/{config.epochs} (best so far: epoch "
            f"{state['best_epoch']}, val_acc {state['best_val_accuracy']:.4f})"
        )
    else:
        labelled = len(fold_data.train_labels) - fold_data.pseudo_count
        pseudo = f" + {fold_data.pseudo_count:,} pseudo-labelled test digits" if config.pseudo else ""
        log(
            f"{label}: training {model.name} ({model.count_params():,} parameters) on "
            f"{labelled:,} images{pseudo}, validating on {len(fold_data.val_labels):,}"
        )

    train_ds = make_train_dataset(fold_data.train_images, fold_data.train_labels, config, seed=config.seed + fold)
    val_ds = make_eval_dataset(fold_data.val_images, fold_data.val_labels)
    monitor = _fold_monitor_class()(fold_dir, label, config.epochs, state, eta_after or _format_seconds, log)
    fit_started = time.perf_counter()
    if state["epoch"] < config.epochs:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=state["epoch"],
            callbacks=[monitor],
            verbose=0,
        )
    # The model holds the last epoch's weights here (also after a resume: see above). Their holdout predictions
    # say whether choosing the best epoch on the validation rows pays; the report puts the two side by side.
    has_holdout = holdout_images is not None and len(holdout_images) > 0
    holdout_last_probs = predict(model, holdout_images) if has_holdout else None
    # Restore the best epoch, save the fold's model, predict what the reports and the ensemble need.
    model.load_weights(backup_dir / state["best_file"])
    # saved computing in float32 whatever it trained in, so that loading model.keras and calling it predicts as
    # every figure of the run was predicted (`predict`: the float32 inference copy), and with Keras' own batch norm
    # (the fused one trains faster, and is the same layer), so that it loads without this project's code
    saved = models.inference_model(model, fold_batch_norm=False)
    with fileio.atomic_path(fold_dir / "model.keras") as tmp:
        saved.save(tmp)
    predict_started = time.perf_counter()
    val_probs = predict(model, fold_data.val_images)
    predict_seconds = time.perf_counter() - predict_started
    test_probs = predict(model, test_images)
    holdout_probs = holdout_tta_probs = None
    if has_holdout:
        from digits.submission import tta_probs

        holdout_probs = predict(model, holdout_images)
        holdout_tta_probs = tta_probs(model, holdout_images, plain=holdout_probs)
    monitor.peak_rss_mb = max(monitor.peak_rss_mb, current_rss_mb(), peak_rss_mb())

    oof = np.zeros(len(val_probs), dtype=[("row_id", "<i8"), ("probs", "<f4", (data.NUM_CLASSES,))])
    oof["row_id"], oof["probs"] = fold_data.val_row_ids, val_probs
    fileio.write_npy(fold_dir / "oof.npy", oof)
    fileio.write_npy(fold_dir / "test_probs.npy", test_probs)
    if holdout_probs is not None:
        fileio.write_npy(fold_dir / paths.HOLDOUT_PROBS, holdout_probs)
        fileio.write_npy(fold_dir / paths.HOLDOUT_TTA_PROBS, holdout_tta_probs)
        fileio.write_npy(fold_dir / paths.HOLDOUT_LAST_EPOCH_PROBS, holdout_last_probs)

    history = state["history"]
    fold_report = report.fold_report(
        fold=fold,
        labels=fold_data.val_labels,
        probs=val_probs,
        history=history,
        best_epoch=state["best_epoch"],
        train_images=len(fold_data.train_labels),
        train_seconds=state["train_seconds"],
        predict_images_per_second=len(val_probs) / max(predict_seconds, 1e-9),
        peak_rss_mb=monitor.peak_rss_mb,
        parameters=model.count_params(),
        model=config.fold_model(fold),
    )
    if config.pseudo:
        fold_report["pseudo_labels"] = fold_data.pseudo_count
        fold_report["pseudo_source"] = fold_data.pseudo_source
    report.fold_pictures(
        fold_dir, history, fold_report, fold_data.val_images, fold_data.val_labels, val_probs, fold_data.val_row_ids
    )
    fileio.write_json(fold_dir / "report.json", fold_report)  # last: marks the fold finished
    _remove_backup(backup_dir)
    log(
        f"{label}: done  val_acc {fold_report['accuracy']:.4f}  val_loss {fold_report['loss']:.4f}  "
        f"best epoch {state['best_epoch']}  {_format_seconds(time.perf_counter() - fit_started)} this session  "
        f"{fold_report['train_images_per_second']:.0f} images/s  peak RSS {monitor.peak_rss_mb:.0f} MB"
    )
    del model, train_ds, val_ds
    keras.utils.clear_session(free_memory=True)  # also runs the garbage collector
    return fold_report


def _remove_backup(backup_dir: Path) -> None:
    for path in backup_dir.glob("*"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        backup_dir.rmdir()


# --- a whole run -------------------------------------------------------------------------------------


def fold_is_finished(run_dir: Path, fold: int) -> bool:
    return (run_dir / f"fold_{fold}" / "report.json").is_file()


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Refuse a second process on the same run (an OS lock: released even if the holder is killed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 (held open across the yield, closed in finally)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunError(
            f"{run_dir} is being trained by {holder}; wait for it to finish (or stop it), "
            f"or train another run with RUN=<new name>."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {platform.node()}\n")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _versions() -> dict:
    """Installed versions, read from the package metadata: importing TensorFlow here would cost the waiting
    `make train` process ~600 MB (each fold's process imports it)."""
    from importlib import metadata

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    tensorflow = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly")
    return {
        "python": platform.python_version(),
        "tensorflow": next((v for v in map(installed, tensorflow) if v), None),
        "keras": installed("keras"),
        "numpy": np.__version__,
    }


def _git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def prepare_run(run_dir: Path, config: Config, data_dir: Path) -> None:
    """Write config.json for a new run, or check that an existing run has the same config."""
    config_path = run_dir / "config.json"
    if config_path.exists():
        saved = config_lib.from_dict(json.loads(config_path.read_text())["config"])
        if saved.identity() != config.identity():
            changed = {
                key: (saved.identity()[key], value)
                for key, value in config.identity().items()
                if saved.identity()[key] != value
            }
            details = ", ".join(f"{key}: run has {old!r}, asked {new!r}" for key, (old, new) in changed.items())
            raise RunError(
                f"{run_dir} was started with a different config ({details}). Resume it with the same "
                f"settings, or start a new run with RUN=<new name>."
            )
        return
    fileio.write_json(
        config_path,
        {
            "config": config.to_dict(),
            "data_dir": str(data_dir),
            "created": dt.datetime.now().isoformat(timespec="seconds"),
            "versions": _versions(),
            "git_sha": _git_sha(),
            "cores": available_cores(),
        },
    )


def load_fold_data(train: data.TrainData, fold_ids: np.ndarray, fold: int) -> FoldData:
    val_mask = fold_ids == fold
    train_mask = (fold_ids != fold) & (fold_ids != folds.HOLDOUT_FOLD)
    return FoldData(
        train.images[train_mask],
        train.labels[train_mask],
        train.images[val_mask],
        train.labels[val_mask],
        np.flatnonzero(val_mask),
    )


def pseudo_teacher(
    config: Config, run_dir: Path, labels: np.ndarray, fold_ids: np.ndarray, test_rows: int
) -> Path | None:
    """The teacher run of `config.pseudo`, checked: a different run with the same folds, whose folds to be used
    are finished and predicted this many test rows. None when pseudo-labelling is off."""
    if not config.pseudo:
        return None
    try:
        teacher = resolve_run_dir(config.pseudo, Path(run_dir).parent)
    except RunError as error:
        raise RunError(f"PSEUDO={config.pseudo}: {error}") from None
    if teacher.resolve() == Path(run_dir).resolve():
        raise RunError(f"PSEUDO={config.pseudo} is the run being trained; name another, finished run.")
    teacher_folds = teacher / "folds.csv"
    try:
        same_folds = np.array_equal(folds.read_folds(teacher_folds, labels), fold_ids)
    except (OSError, ConfigError):  # missing, or made for another train.csv
        same_folds = False
    if not same_folds:
        raise RunError(
            f"PSEUDO={config.pseudo}: {teacher} does not share this run's folds ({teacher_folds}), so its "
            f"predictions would carry the labels of this run's validation rows into training. Train the "
            f"student with the teacher's FOLDS, SEED, HOLDOUT and HOLDOUT_SEED."
        )
    for fold in config.fold_ids():
        path = teacher / f"fold_{fold}" / "test_probs.npy"
        if not fold_is_finished(teacher, fold) or not path.is_file():
            raise RunError(
                f"PSEUDO={config.pseudo}: fold {fold} of {teacher} is not finished ({path} is missing); "
                f"finish it with `make train RUN={teacher.name}` first."
            )
        shape = np.load(path, mmap_mode="r").shape
        if shape != (test_rows, data.NUM_CLASSES):
            raise RunError(
                f"PSEUDO={config.pseudo}: {path} holds {shape[0]} test predictions, this test.csv has "
                f"{test_rows} rows: the teacher was trained for other data. Name a teacher trained on this "
                f"data folder's test.csv."
            )
    return teacher


def add_pseudo_labels(
    fold_data: FoldData, teacher: Path, fold: int, test_images: np.ndarray, confidence: float
) -> FoldData:
    """Append the test digits that the teacher's fold `fold` predicts with at least `confidence`, labelled
    with the teacher's digit; `pseudo_source` identifies the teacher's predictions (a resumed fold checks it)."""
    path = teacher / f"fold_{fold}" / "test_probs.npy"
    raw = path.read_bytes()
    probs = np.load(io.BytesIO(raw))
    keep = probs.max(axis=1) >= confidence
    return FoldData(
        np.concatenate([fold_data.train_images, test_images[keep]]),
        np.concatenate([fold_data.train_labels, probs[keep].argmax(axis=1).astype(fold_data.train_labels.dtype)]),
        fold_data.val_images,
        fold_data.val_labels,
        fold_data.val_row_ids,
        pseudo_count=int(keep.sum()),
        pseudo_source={
            "file": str(path),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "confidence": confidence,
            "count": int(keep.sum()),
        },
    )


def check_resumed_pseudo_labels(state: dict, fold_data: FoldData, label: str) -> None:
    """A fold resumes only with the pseudo-labels it started with: other ones would change its data and its
    steps per epoch (so its learning-rate schedule) in the middle of training."""
    if state["epoch"] == 0 or state.get("pseudo") == fold_data.pseudo_source:
        return
    started = (state.get("pseudo") or {}).get("file", "no pseudo-labels")
    raise RunError(
        f"{label} was started with pseudo-labels from {started}, and the teacher's predictions have changed "
        f"since (another file, digest or count). Restore the teacher run as it was, or start a new run with "
        f"RUN=<new name>."
    )


# Every fold trains in a fresh process, so no memory a fold's TensorFlow state leaves behind (graphs,
# tf.data buffers, allocator caches) reaches the next fold: no fold's peak RSS includes an earlier fold's
# memory. The parent holds the run lock, the data and the loop; the child sends its progress lines
# and then its report (or the exception it raised) back through a pipe.


def _die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid` does, so a killed `make train` leaves no orphan training."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:  # other systems (and a second line of defence)
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _return_freed_memory() -> None:
    """Give the OS back the heap pages that parsing the CSVs freed (about 300 MB that glibc would keep):
    this process only waits for the fold processes from here on. A no-op where glibc is not the C library."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _fold_child(connection, parent_pid: int, later_folds: int, args: tuple) -> None:
    """Entry point of a fold's process: train the fold, send back ("done", report) or ("error", exception).

    Errors the command line explains (a full disk, bad data or config) go back as they are; any other goes
    back as a RuntimeError carrying this process's traceback, which the parent would not see otherwise.
    SIGINT is ignored here (inherited from the parent at start): on Ctrl-C the parent stops this process.
    """
    import traceback

    _die_with_parent(parent_pid)
    started = time.perf_counter()

    def log(line: str) -> None:
        connection.send(("log", line))

    def eta_after(fold_remaining: float) -> str:
        # run ETA: this fold's remainder + the later folds at this fold's projected length
        later = later_folds * (time.perf_counter() - started + fold_remaining)
        return f"fold {_format_seconds(fold_remaining)}, run {_format_seconds(fold_remaining + later)}"

    try:
        configure_tensorflow(args[0])
        connection.send(("done", train_fold(*args, log=log, eta_after=eta_after)))
    except BaseException as error:  # noqa: BLE001 (every failure goes back to the parent, which decides)
        explained = (ConfigError, RunError, data.DataError)
        disk_full = isinstance(error, OSError) and error.errno in fileio.DISK_FULL_ERRNOS
        failure = (
            error
            if disk_full or isinstance(error, explained)
            else RuntimeError(
                f"training fold {args[1]} failed in its process with {type(error).__name__}: {error}\n"
                f"{traceback.format_exc()}"
            )
        )
        try:
            connection.send(("error", failure))
        except Exception:  # noqa: BLE001 (it did not pickle: send its text)
            with contextlib.suppress(OSError):
                connection.send(("error", RuntimeError(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")))
    finally:
        connection.close()


def train_fold_in_child(*args, later_folds: int = 0, log: Callable[[str], None] = print) -> dict:
    """`train_fold(*args)` in a fresh process; its progress lines go to `log`, its exceptions are re-raised."""
    import multiprocessing
    import signal
    import threading

    context = multiprocessing.get_context("spawn")  # fork would copy this process's TensorFlow state
    receive, send = context.Pipe(duplex=False)
    fold = args[1]
    child = context.Process(
        target=_fold_child, args=(send, os.getpid(), later_folds, args), name=f"digits-fold-{fold}", daemon=True
    )
    try:
        # The child starts with SIGINT ignored, so Ctrl-C (sent to the whole process group) reaches only this
        # process, which then stops the child: no traceback from a child interrupted while starting up.
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
        try:
            child.start()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        send.close()  # the child holds the only write end: EOF below means it is gone
        while True:
            try:
                kind, payload = receive.recv()
            except EOFError:
                child.join()
                raise RunError(
                    f"the process training fold {fold} ended without finishing it (exit code {child.exitcode}"
                    f"{'; killed by signal ' + str(-child.exitcode) if (child.exitcode or 0) < 0 else ''}). "
                    f"If the machine ran out of memory, try a smaller BATCH. Rerun the same command to resume "
                    f"the fold from its last completed epoch."
                ) from None
            if kind == "log":
                log(payload)
            elif kind == "error":
                raise payload
            else:
                return payload
    finally:
        if child.is_alive():  # interrupted here (Ctrl-C) or an error: stop the fold's process too
            child.terminate()
        if child.pid is not None:
            child.join()
        send.close()
        receive.close()


def train_run(
    config: Config, run_dir: Path, data_dir: Path = paths.RAW_DIR, log: Callable[[str], None] = print
) -> dict | None:
    """Train every fold of `config.fold_ids()` not yet finished, then write the run report if complete."""
    run_dir = Path(run_dir)
    # Bad data and impossible folds stop here, before the run folder is created or touched.
    train = data.load_train(Path(data_dir) / "train.csv")
    needs_training = any(not fold_is_finished(run_dir, fold) for fold in config.fold_ids())
    test_images = data.load_test(Path(data_dir) / "test.csv") if needs_training else None
    folds_path = run_dir / "folds.csv"
    if folds_path.exists():
        fold_ids = folds.read_folds(folds_path, train.labels)
    else:
        fold_ids = folds.assign_folds(
            train.labels, config.folds, config.seed, config.holdout, config.holdout_rows_seed()
        )
    teacher = pseudo_teacher(config, run_dir, train.labels, fold_ids, len(test_images)) if needs_training else None
    with run_lock(run_dir):
        prepare_run(run_dir, config, data_dir)
        if not folds_path.exists():
            folds.write_folds(folds_path, train.labels, fold_ids)
        todo = [fold for fold in config.fold_ids() if not fold_is_finished(run_dir, fold)]
        if not todo:
            log(f"{run_dir}: folds {','.join(map(str, config.fold_ids()))} are finished; nothing to train.")
        else:
            if test_images is None:  # a fold's report.json was removed since the check above
                test_images = data.load_test(Path(data_dir) / "test.csv")
                teacher = pseudo_teacher(config, run_dir, train.labels, fold_ids, len(test_images))
            holdout_images = train.images[fold_ids == folds.HOLDOUT_FOLD]
            skipped = [fold for fold in config.fold_ids() if fold not in todo]
            if skipped:
                log(f"{run_dir}: fold(s) {','.join(map(str, skipped))} already finished; skipping them.")
            log(
                f"run {run_dir.name}: {_models_of(config, todo)}, {config.epochs} epochs, batch "
                f"{config.batch}, {config.precision}, {available_cores()} core(s); artifacts in {run_dir}"
            )
            slow = slow_precision(config.precision)
            if slow:
                log(f"warning: {slow}")
            _return_freed_memory()
            run_started = time.perf_counter()
            for position, fold in enumerate(todo):
                fold_data = load_fold_data(train, fold_ids, fold)
                if teacher is not None:
                    fold_data = add_pseudo_labels(fold_data, teacher, fold, test_images, config.pseudo_confidence)
                train_fold_in_child(
                    config,
                    fold,
                    fold_data,
                    test_images,
                    holdout_images,
                    run_dir / f"fold_{fold}",
                    later_folds=len(todo) - position - 1,
                    log=log,
                )
            log(f"trained {len(todo)} fold(s) in {_format_seconds(time.perf_counter() - run_started)}")
        finished = [fold for fold in range(config.folds) if fold_is_finished(run_dir, fold)]
        if len(finished) < config.folds:
            missing = sorted(set(range(config.folds)) - set(finished))
            log(
                f"{run_dir}: fold(s) {','.join(map(str, missing))} still to train (ONLY=...); "
                f"the run report is written once every fold is finished."
            )
            return None
        from digits import report  # matplotlib: not held while the folds train

        if (run_dir / "report.json").is_file():  # a finished run is never rewritten
            run_report = report.read_run_report(run_dir)
        else:
            run_report = report.run_report(run_dir, train, fold_ids)
        log(report.format_fold_table(run_report))
        log(f"report: {run_dir / 'report.html'}")
        return run_report


# --- command line ------------------------------------------------------------------------------------


def _models_of(config: Config, todo: list[int]) -> str:
    """`cnn x 5 fold(s)`, or for mixed architectures `cnn x 3 + cnn_pool x 2 fold(s)`."""
    from collections import Counter

    counts = Counter(config.fold_model(fold) for fold in todo)
    return " + ".join(f"{name} x {count}" for name, count in counts.items()) + " fold(s)"


def latest_run(runs_dir: Path = paths.RUNS_DIR) -> Path:
    candidates = [path for path in runs_dir.glob("*") if (path / "config.json").is_file() and path.name != "bench"]
    if not candidates:
        raise RunError(f"no runs in {runs_dir}; train one with `make train`.")
    return max(candidates, key=lambda path: (path / "config.json").stat().st_mtime)


def resolve_run_dir(run: str | None, runs_dir: Path = paths.RUNS_DIR) -> Path:
    if not run:
        return latest_run(runs_dir)
    path = Path(run)
    run_dir = path if path.is_absolute() or path.parent != Path(".") else runs_dir / run
    if not (run_dir / "config.json").is_file():
        raise RunError(f"no run '{run}' in {runs_dir} (no config.json); `ls {runs_dir}` lists the runs.")
    return run_dir


def resume_config(run_dir: Path, overrides: dict | None = None) -> Config:
    """An existing run's settings, as `make train RUN=x` resumes it: its saved config is the base (every fold,
    whatever ONLY it was started with), and any setting in `overrides` that is not None must match it
    (prepare_run refuses a change)."""
    saved = config_lib.from_dict(json.loads((run_dir / "config.json").read_text())["config"])
    base = {key: value for key, value in saved.to_dict().items() if key not in ("preset", "only")}
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    if str(given.get("precision", "")).strip().lower() == "auto":  # the run's own precision, whatever this CPU is
        del given["precision"]
    return config_lib.resolve(saved.preset, {**base, **given})


def _cmd_train(args: argparse.Namespace) -> int:
    keys = ("folds", "epochs", "batch", "model", "seed", "only", "holdout", "holdout_seed")
    keys += ("pseudo", "pseudo_confidence", "elastic", "precision")
    overrides = {key: getattr(args, key) for key in keys}
    overrides["dropout_scale"] = args.dropout
    overrides["deterministic"] = True if args.deterministic else None
    for item in args.set or []:
        key, _, value = item.partition("=")
        if not _:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set label_smoothing=0.1")
        overrides[key.strip()] = value
    run_dir = Path(args.runs_dir) / (args.run or dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if (run_dir / "config.json").exists():
        saved = config_lib.from_dict(json.loads((run_dir / "config.json").read_text())["config"])
        if args.preset and args.preset != saved.preset:
            raise RunError(
                f"{run_dir} was started with PRESET={saved.preset}, not {args.preset}. Resume it with the "
                f"same settings, or start a new run with RUN=<new name>."
            )
        config = resume_config(run_dir, overrides)
    else:
        config = config_lib.resolve(args.preset or "default", overrides)
    train_run(config, run_dir, Path(args.data_dir))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from digits import report

    run_dir = resolve_run_dir(args.run, Path(args.runs_dir))
    path = run_dir / "report.json"
    if not path.is_file():
        finished = sorted(p.name for p in run_dir.glob("fold_*") if (p / "report.json").is_file())
        raise RunError(
            f"{run_dir} has no run report yet (finished: {', '.join(finished) or 'no fold'}); "
            f"finish its folds with `make train RUN={run_dir.name}`."
        )
    print(report.format_fold_table(report.read_run_report(run_dir)))
    print(f"report: {run_dir / 'report.html'}")
    return 0


def register_commands(commands) -> None:
    train = commands.add_parser("train", help="train the k-fold CNNs")
    train.add_argument("--preset", choices=None, default=None, help=f"one of {', '.join(config_lib.PRESETS)}")
    train.add_argument("--folds")
    train.add_argument("--epochs")
    train.add_argument("--batch")
    train.add_argument("--model")
    train.add_argument("--seed")
    train.add_argument("--only", help="train only these folds, e.g. 0,2")
    train.add_argument("--holdout", help="fraction of train.csv kept out of every fold, e.g. 0.1")
    train.add_argument("--holdout-seed", help="the seed that picks the holdout rows (default: --seed)")
    train.add_argument("--pseudo", help="a finished run (same folds) whose confident test predictions join training")
    train.add_argument("--pseudo-confidence", help="teacher probability needed for a pseudo-label (default 0.99)")
    train.add_argument("--elastic", help="elastic distortion strength (alpha; 0 = off, 34 = Simard's; sigma via --set)")
    train.add_argument(
        "--precision",
        help="auto (every preset's default: bfloat16 where the CPU has AMX or AVX512-BF16 and no NVIDIA GPU is "
        "installed, float32 elsewhere), float32, or bfloat16 (about 1.8x faster on CPUs with AMX, 1.4x with "
        "AVX512-BF16, slower without native bfloat16)",
    )
    train.add_argument("--dropout", help="multiply the model's dropout rates by this (1 = as built, 0 = off)")
    train.add_argument("--deterministic", action="store_true")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other config field")
    train.add_argument("--run", default=None, help="run name (default: a timestamp)")
    train.add_argument("--runs-dir", default=str(paths.RUNS_DIR))
    train.add_argument("--data-dir", default=str(paths.RAW_DIR))
    train.set_defaults(handler=_cmd_train)

    report_cmd = commands.add_parser("report", help="print a run's fold table and the path of its report.html")
    report_cmd.add_argument("--run", default=None)
    report_cmd.add_argument("--runs-dir", default=str(paths.RUNS_DIR))
    report_cmd.set_defaults(handler=_cmd_report)
