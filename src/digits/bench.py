"""Benchmark: training and prediction speed of our pipeline against the plain Keras way, in one run.

In:  `data/raw/train.csv` and `test.csv` (the full competition data; `make download` first).
Out: `runs/bench/<date>.json` and a table on the terminal with, for the default model:
  - training images/s in steady state, our pipeline (tf.data, batch from the config, parallel
    augmentation, prefetch) and the plain baseline (`model.fit` on in-memory float32 arrays with
    the augmentation layers inside the model, batch 64), and their ratio. Each trains `--epochs`
    epochs (3) from scratch, the pipelines taking turns epoch by epoch (so a change of the host's speed
    hits them alike); the speed is taken from the training time of every epoch but the first (which
    traces the step), without the validation passes;
  - the ceiling: the same train step on in-memory batches without augmentation (what the model's
    arithmetic alone allows; no input pipeline can do better), timed in turns between the epochs;
  - ours again with bfloat16 arithmetic (`make train PRECISION=bfloat16`), its ratio over plain and over ours
    in float32, on the CPUs where bfloat16 prediction is timed (below); with the fused batch norm it pays with
    AMX (1.8-1.9x ours in float32) and AVX512-BF16 (1.4x), and `make train` trains in it there;
  - seconds per epoch of a 5-fold split (33,600 training images) for each;
  - validation accuracy of each after those epochs (no loss of accuracy), and the time each takes to
    reach `--target` validation accuracy;
  - prediction images/s and the time a 5-fold ensemble takes to predict all of test.csv: plain
    `model.predict`, ours in float32 (batch norm folded into the convs) in Keras and on TensorFlow Lite's
    XNNPACK, the one `make train` uses on this CPU marked, and ours in bfloat16, taking turns over four parts of
    the test set. bfloat16 is timed
    on a CPU with native bfloat16 (AVX512-BF16 or AMX) or unknown instruction sets, and with `--bfloat16`; on
    other CPUs it is emulated (prediction took 1.8x float32's time on an AVX2 CPU), and timing it would add
    minutes for nothing;
  - peak resident memory, and the CPU with the instruction sets that decide these speeds (AVX-512 trains this
    model about 3x faster than AVX2 alone; bfloat16 predicts and trains faster with native AVX512-BF16 or AMX).
Speeds on a shared machine vary from run to run: compare the ratio measured within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import resource
import time
from pathlib import Path

import numpy as np

from digits import config as config_lib
from digits import data, fileio, paths

# The CPU features that decide this model's speed. Measured with this project's bench: a 2-core AMD EPYC with
# AVX-512 and AVX512-BF16 trained 1,500-1,800 images/s, one with AVX2 only about 530 (docs/experiments.md), and
# without native bfloat16, bfloat16 prediction is slower than float32 instead of 2-3x faster.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """{"model": the CPU's name, "flags": which of SPEED_FLAGS it has}, read from Linux's /proc/cpuinfo on x86
    (elsewhere the flags are unknown: None)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {"model": platform.processor() or "unknown", "flags": None}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    model = fields.get("model name", platform.processor() or "unknown")
    if "flags" not in fields:  # e.g. ARM's /proc/cpuinfo, which names its features otherwise
        return {"model": model, "flags": None}
    present = set(fields["flags"].split())
    return {"model": model, "flags": [flag for flag in SPEED_FLAGS if flag in present]}


def native_bfloat16(cpu: dict) -> bool | None:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX): None when its flags are unknown."""
    if cpu["flags"] is None:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu["flags"]))


def describe_cpu(cpu: dict, cores: int) -> str:
    """`CPU: AMD EPYC, 2 core(s); has avx2 (lacks avx512f, avx512_bf16, amx_bf16)`."""
    text = f"CPU: {cpu['model']}, {cores} core(s)"
    if cpu["flags"] is None:
        return text + "; instruction sets unknown"
    lacking = [flag for flag in SPEED_FLAGS if flag not in cpu["flags"]]
    return f"{text}; has {', '.join(cpu['flags']) or 'none'} (lacks {', '.join(lacking) or 'none'})"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _EpochTimer:
    """Per epoch: the seconds spent training (from the epoch's start to its validation) and validating, the
    pipeline's own time at its end (`head_start`, the seconds it took to build, plus each epoch from its start to
    its end: the bench interleaves the pipelines' epochs, and another's are not counted), and the validation
    accuracy (a Keras callback, built lazily)."""

    def __new__(cls, head_start: float = 0.0, clock=time.perf_counter):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.train_seconds: list[float] = []
                self.validation_seconds: list[float] = []
                self.records: list[tuple[float, float]] = []  # (the pipeline's own seconds, val accuracy)
                self._epoch_started = self._validation_started = self._validation_ended = None
                self._elapsed = head_start

            def on_epoch_begin(self, epoch, logs=None):
                self._epoch_started, self._validation_started, self._validation_ended = clock(), None, None

            def on_test_begin(self, logs=None):  # fit's validation, after the epoch's training steps
                self._validation_started = clock()

            def on_test_end(self, logs=None):
                self._validation_ended = clock()

            def on_epoch_end(self, epoch, logs=None):
                now = clock()
                if self._validation_started is None:  # no validation this epoch
                    self._validation_started = self._validation_ended = now
                self.train_seconds.append(self._validation_started - self._epoch_started)
                self.validation_seconds.append(self._validation_ended - self._validation_started)
                self._elapsed += now - self._epoch_started
                self.records.append((self._elapsed, float((logs or {}).get("val_accuracy", 0.0))))

            def steady_images_per_second(self, images: int) -> float:
                """Training images/s over every epoch but the first (which traces and compiles the step)."""
                steady = self.train_seconds[1:] or self.train_seconds
                return images * len(steady) / sum(steady)

        return Timer()


def _plain_model(cfg: config_lib.Config):
    """The baseline: augmentation layers inside the model, as most public kernels do."""
    import keras

    from digits.models import augmenter, build_model

    inner = build_model(cfg.model, dropout_scale=cfg.dropout_scale, fused_batch_norm=False)  # Keras' own layers
    inputs = keras.Input(inner.input_shape[1:])
    x = augmenter(cfg.rotation, cfg.zoom, cfg.shift, seed=cfg.seed)(inputs)
    return keras.Model(inputs, inner(x))


def _our_model(cfg: config_lib.Config, images: int, epochs: int):
    """The config's model as `make train` builds it, compiled for `epochs` epochs of `images` at cfg's batch size."""
    from digits.models import build_model

    return _compile(
        build_model(cfg.model, dropout_scale=cfg.dropout_scale), cfg, int(np.ceil(images / cfg.batch)), epochs
    )


def _compile(model, cfg: config_lib.Config, steps_per_epoch: int, epochs: int):
    import keras

    from digits.train import optimizer

    # the config's optimizer (Adam, or AdamW with its weight decay) on a schedule as long as the bench's epochs
    schedule_cfg = config_lib.resolve(cfg.preset, {"epochs": epochs, "weight_decay": cfg.weight_decay})
    model.compile(
        optimizer=optimizer(schedule_cfg, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model


class _Ceiling:
    """`model`'s train step alone: batches already in memory (cached and prefetched, no augmentation, no
    shuffling). What the model's arithmetic allows on this CPU; no input pipeline can feed it faster. `model` is
    a second instance of ours (same architecture, precision and optimizer, its own weights) that only this
    trains, so ours keeps its accuracy. The step is traced here; each `turn()` times `steps_per_turn` steps. The
    bench calls it between the pipelines' epochs, so that the host's changes of speed reach the ceiling as they
    reach them (timed once at the end, it read below ours more than once)."""

    def __init__(self, model, x: np.ndarray, y: np.ndarray, batch: int, steps_per_turn: int):
        import tensorflow as tf

        self.steps = max(1, min(steps_per_turn, len(x) // batch))
        self.rows = rows = min(self.steps * batch, len(x))  # fewer rows than a batch: one smaller batch
        # batched as ours is (a batch dimension of None, no drop_remainder), so it runs the step graph ours runs
        batches = tf.data.Dataset.from_tensor_slices((x[:rows].astype(np.float32), y[:rows])).batch(batch).cache()
        for _ in batches:  # fill the cache before timing
            pass
        self.batches = batches.prefetch(tf.data.AUTOTUNE)
        self.model, self.timer = model, _EpochTimer()
        model.fit(self.batches.take(min(5, self.steps)), verbose=0, shuffle=False)  # trace the step

    def turn(self) -> None:
        self.model.fit(self.batches, verbose=0, shuffle=False, callbacks=[self.timer])

    def images_per_second(self) -> float:
        return self.rows * len(self.timer.train_seconds) / sum(self.timer.train_seconds)


# Why bfloat16 prediction was not timed, as the JSON and the table say it.
NO_NATIVE_BFLOAT16 = "not timed: this CPU lacks native bfloat16 (--bfloat16, or BFLOAT16=1 in make)"
NO_NATIVE_BFLOAT16_WHY = (
    "without AVX512-BF16 or AMX, bfloat16 is emulated: a 5-fold ensemble took 102.5 s to predict the 28,000 test "
    "digits in bfloat16 against 54.0 s in float32 on an AVX2 CPU (sessions 10 and 11)"
)
NOT_REQUESTED = "not timed: not requested (run_benchmark(bfloat16=False))"
NO_XNNPACK = "not timed: this TensorFlow has no tf.lite.Interpreter"


def _prediction_speed(model, test: np.ndarray, log, bfloat16_skipped: str | None = None, chunks: int = 4) -> dict:
    """3. Prediction of the whole test set by one trained model: the plain `model.predict` on a float32
    array (Keras' default batch of 32) against ours (`train.predict`, batch norms folded): in float32 in Keras
    (batch 1024) and on TensorFlow Lite's XNNPACK (batch 256; since session 21), and in bfloat16 (unless
    `bfloat16_skipped` says why not), with how often XNNPACK and bfloat16 change the predicted digit. Which
    float32 engine `make train` and `make submission` use on this CPU is `train.float32_engine`'s choice."""
    from digits.models import xnnpack_available
    from digits.train import float32_engine, predict

    runs = {
        "plain": lambda x: model.predict(x.astype(np.float32), verbose=0),
        "float32": lambda x: predict(model, x, engine="keras"),
    }
    if xnnpack_available():
        runs["float32_xnnpack"] = lambda x: predict(model, x, engine="xnnpack")
    if bfloat16_skipped is None:
        runs["bfloat16"] = lambda x: predict(model, x, precision="bfloat16")
    # Build and trace first, at two sizes whose last batches differ for batch 1024 and for Keras' 32 (2,048 and
    # 1,500 digits on the full test set), so that the traced step takes any batch size (Keras relaxes the shape
    # at the second) and no part is traced again.
    for run in runs.values():
        run(test[: min(2048, len(test))])
        run(test[: max(1, min(1500, len(test) - 1))])
    # The ways take turns over `chunks` parts of the test set (as the pipelines' epochs do in training), so that
    # a change of the host's speed hits them alike (a part of the full test set: 0.2-0.7 s with AVX-512 or AMX,
    # 2.5-5 s with AVX2 only).
    spent, parts = {key: [] for key in runs}, {key: [] for key in runs}
    for chunk in np.array_split(test, chunks):
        for key, run in runs.items():
            started = time.perf_counter()
            parts[key].append(run(chunk))
            spent[key].append(time.perf_counter() - started)
    plain_probs, fp32_probs = np.concatenate(parts["plain"]), np.concatenate(parts["float32"])
    result: dict = {"test_images": int(len(test)), "parts": chunks, "engine": float32_engine()}
    for key, per_part in spent.items():
        seconds = sum(per_part)
        result[key] = {
            "images_per_second": round(len(test) / seconds, 1),
            "five_fold_ensemble_seconds": round(5 * seconds, 2),
            "seconds_per_part": [round(part, 3) for part in per_part],
        }
        log(f"  prediction, {key}: {len(test) / seconds:,.0f} images/s")
    result["float32_max_abs_difference_from_plain"] = float(np.abs(fp32_probs - plain_probs).max())
    if "float32_xnnpack" in runs:
        xnnpack_probs = np.concatenate(parts["float32_xnnpack"])
        result["xnnpack_max_abs_difference_from_keras"] = float(np.abs(xnnpack_probs - fp32_probs).max())
        same = float((xnnpack_probs.argmax(1) == fp32_probs.argmax(1)).mean())
        result["xnnpack_same_digit_as_keras"] = round(same, 6)
    else:
        result["float32_xnnpack"] = {"skipped": NO_XNNPACK}
        log(f"  prediction, float32_xnnpack: {NO_XNNPACK}")
    if bfloat16_skipped is None:
        same = float((np.concatenate(parts["bfloat16"]).argmax(1) == fp32_probs.argmax(1)).mean())
        result["bfloat16_same_digit_as_float32"] = round(same, 6)
    else:
        result["bfloat16"] = {"skipped": bfloat16_skipped}
        if bfloat16_skipped == NO_NATIVE_BFLOAT16:
            result["bfloat16"]["why"] = NO_NATIVE_BFLOAT16_WHY
        log(f"  prediction, bfloat16: {bfloat16_skipped}")
    return result


def run_benchmark(
    data_dir: Path,
    out_dir: Path,
    train_images: int = 33_600,
    epochs: int = 3,
    target: float = 0.99,
    log=print,
    bfloat16: bool | None = None,
) -> dict:
    """`bfloat16`: time bfloat16 training and prediction too (None: only on a CPU with native bfloat16, or one
    whose instruction sets are unknown)."""
    if epochs < 2:
        raise ValueError(f"epochs={epochs}: the bench needs at least 2 (the first traces the step)")
    import keras
    import tensorflow as tf

    from digits import models
    from digits.train import available_cores, configure_tensorflow, make_eval_dataset, make_train_dataset

    cfg = config_lib.resolve("default")
    configure_tensorflow(cfg)
    train = data.load_train(Path(data_dir) / "train.csv")
    test = data.load_test(Path(data_dir) / "test.csv")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train.labels))
    train_rows, val_rows = order[:train_images], order[train_images : train_images + 8_400]
    x_train, y_train = train.images[train_rows], train.labels[train_rows]
    x_val, y_val = train.images[val_rows], train.labels[val_rows]
    one_hot = np.eye(10, dtype=np.float32)
    cpu = cpu_info()
    if bfloat16 is None:
        bfloat16_skipped = NO_NATIVE_BFLOAT16 if native_bfloat16(cpu) is False else None
    else:
        bfloat16_skipped = None if bfloat16 else NOT_REQUESTED
    results: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": available_cores(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "train_images": int(len(x_train)),
        "epochs": epochs,
        "batch": cfg.batch,
        "train_precision": cfg.precision,  # what `make train` trains in here (PRECISION=auto, every preset's)
    }

    # 1. Each pipeline trains `epochs` epochs from scratch with validation after every epoch: the training seconds
    # of epochs 2.. give its steady-state images/s, the last epoch its accuracy. Ours once more with bfloat16
    # arithmetic (`make train PRECISION=bfloat16`) where bfloat16 prediction is timed.
    legs = ("ours", "plain") + (("ours_bfloat16",) if bfloat16_skipped is None else ())
    log(
        f"ours (batch {cfg.batch}), plain model.fit (batch 64)"
        + (", ours in bfloat16" if "ours_bfloat16" in legs else "")
        + f": {epochs} epochs of {len(x_train):,} images each, a cosine schedule over {epochs} epochs, "
        f"validation on {len(x_val):,}"
    )
    x_plain, y_plain = x_train.astype(np.float32), one_hot[y_train]
    accuracy: dict = {}
    speed: dict = {}
    built: dict = {}  # name -> (model, timer, the arguments of its `fit`)
    for name in legs:
        keras.utils.set_random_seed(cfg.seed)
        build_started = time.perf_counter()
        if name.startswith("ours"):
            with models.precision_policy("bfloat16" if name == "ours_bfloat16" else "float32"):
                model = _our_model(cfg, len(x_train), epochs)
            arguments = {
                "x": make_train_dataset(x_train, y_train, cfg, seed=1),
                "shuffle": False,  # the dataset shuffles itself
                "validation_data": make_eval_dataset(x_val, y_val),
            }
        else:
            model = _compile(_plain_model(cfg), cfg, int(np.ceil(len(x_train) / 64)), epochs)
            arguments = {
                "x": x_plain,
                "y": y_plain,
                "batch_size": 64,
                "validation_data": (x_val.astype(np.float32), one_hot[y_val]),
            }
        built[name] = model, _EpochTimer(head_start=time.perf_counter() - build_started), arguments
    # 2. The ceiling: about 100 steps of a second instance of ours, in turns after the rounds of epochs 2.. (as the
    # steady speeds are measured).
    with models.precision_policy("float32"):
        ceiling = _Ceiling(
            _our_model(cfg, len(x_train), epochs), x_plain, y_plain, cfg.batch, steps_per_turn=-(-100 // (epochs - 1))
        )
    # The pipelines take turns epoch by epoch (ours, plain, ours in bfloat16, the ceiling from epoch 2 on, ours,
    # ...): this host switches between two speeds about 2x apart for minutes at a time, and turns of a minute or
    # less expose every pipeline to both alike, where one pipeline after the other could catch one speed each.
    for epoch in range(epochs):
        for model, timer, arguments in built.values():
            model.fit(**arguments, epochs=epoch + 1, initial_epoch=epoch, verbose=0, callbacks=[timer])
        if epoch > 0:
            ceiling.turn()
    speed["ceiling"] = ceiling.images_per_second()
    ceiling_steps, ceiling_seconds = ceiling.steps, [round(seconds, 3) for seconds in ceiling.timer.train_seconds]
    del ceiling
    for name, (_, timer, _) in built.items():
        speed[name] = timer.steady_images_per_second(len(x_train))
        reached = next((seconds for seconds, acc in timer.records if acc >= target), None)
        accuracy[name] = {
            "val_accuracy": round(timer.records[-1][1], 5),
            "seconds": round(timer.records[-1][0], 1),
            f"seconds_to_{target}": round(reached, 1) if reached is not None else None,
            "train_seconds_per_epoch": [round(seconds, 3) for seconds in timer.train_seconds],
            "validation_seconds_per_epoch": [round(seconds, 3) for seconds in timer.validation_seconds],
        }
        log(
            f"  {name}: {speed[name]:,.0f} training images/s, val accuracy {timer.records[-1][1]:.4f} after "
            f"{timer.records[-1][0]:.0f} s of its own"
        )
    model = built["ours"][0]
    built.clear()
    log(f"  ceiling (the train step alone, batches in memory): {speed['ceiling']:,.0f} images/s")
    # 3. Prediction, by ours after its epochs.
    results["prediction"] = _prediction_speed(model, test, log, bfloat16_skipped)
    del model
    keras.utils.clear_session(free_memory=True)
    results["throughput"] = {
        "measured_on": "the training seconds of epochs 2.. of the runs below; the ceiling's, of its turns after "
        "each round of epochs 2.. (ceiling_seconds_per_turn)",
        "ours_images_per_second": round(speed["ours"], 1),
        "plain_images_per_second": round(speed["plain"], 1),
        "ratio": round(speed["ours"] / speed["plain"], 3),
        "ceiling_images_per_second": round(speed["ceiling"], 1),
        "ceiling_ratio": round(speed["ceiling"] / speed["plain"], 3),
        "ceiling_steps_per_turn": ceiling_steps,
        "ceiling_seconds_per_turn": ceiling_seconds,
        "ours_seconds_per_epoch": round(len(x_train) / speed["ours"], 1),
        "plain_seconds_per_epoch": round(len(x_train) / speed["plain"], 1),
    }
    if "ours_bfloat16" in speed:
        results["throughput"]["bfloat16"] = {
            "images_per_second": round(speed["ours_bfloat16"], 1),
            "ratio": round(speed["ours_bfloat16"] / speed["plain"], 3),
            "ratio_over_ours_float32": round(speed["ours_bfloat16"] / speed["ours"], 3),
            "seconds_per_epoch": round(len(x_train) / speed["ours_bfloat16"], 1),
        }
    else:
        results["throughput"]["bfloat16"] = {"skipped": bfloat16_skipped}
    results["accuracy"] = accuracy
    results["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    out = Path(out_dir) / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    fileio.write_json(out, results)
    results["path"] = str(out)
    return results


def format_table(results: dict) -> str:
    t, a, p = results["throughput"], results["accuracy"], results["prediction"]
    target_key = next(key for key in a["ours"] if key.startswith("seconds_to_"))
    bf16 = t.get("bfloat16", {"skipped": "not timed (a bench written before session 17)"})
    columns = ["ours", "plain"] + (["ours_bfloat16"] if "skipped" not in bf16 else [])
    per_epoch = {"ours": t["ours_seconds_per_epoch"], "plain": t["plain_seconds_per_epoch"]}
    speed = {"ours": t["ours_images_per_second"], "plain": t["plain_images_per_second"]}
    if "skipped" not in bf16:
        per_epoch["ours_bfloat16"], speed["ours_bfloat16"] = bf16["seconds_per_epoch"], bf16["images_per_second"]
    rows = [
        ("training images/s", [f"{speed[c]:.0f}" for c in columns]),
        (f"seconds per epoch ({results['train_images']:,} images)", [f"{per_epoch[c]:.1f}" for c in columns]),
        (f"val accuracy after {results['epochs']} epochs", [f"{a[c]['val_accuracy']:.4f}" for c in columns]),
        (f"seconds to val accuracy {target_key.removeprefix('seconds_to_')}", [str(a[c][target_key]) for c in columns]),
    ]
    width = max(len(label) for label, _ in rows)
    headings = {"ours": "ours", "plain": "plain", "ours_bfloat16": "ours bf16"}
    lines = []
    if "cpu" in results:  # benches written before session 10 did not record it
        lines.append(describe_cpu(results["cpu"], results["cores"]))
    lines.append(f"{'':<{width}}" + "".join(f"  {headings[c]:>9}" for c in columns))
    lines += [f"{label:<{width}}" + "".join(f"  {value:>9}" for value in values) for label, values in rows]
    lines.append(f"speed-up in training images/s: {t['ratio']:.2f}x")
    if "skipped" in bf16:
        lines.append(f"bfloat16 training (PRECISION=bfloat16): {bf16['skipped']}")
    else:
        lines.append(
            f"bfloat16 training (PRECISION=bfloat16): {bf16['ratio']:.2f}x plain, "
            f"{bf16['ratio_over_ours_float32']:.2f}x ours in float32"
        )
    if "train_precision" in results:  # benches before session 17 did not record it
        lines.append(
            f"`make train` trains in {results['train_precision']} on this machine (PRECISION=auto, every preset's)"
        )
    lines.append(
        f"ceiling (the train step alone on in-memory batches, no augmentation): {t['ceiling_images_per_second']:.0f} "
        f"images/s = {t['ceiling_ratio']:.2f}x plain; no input pipeline can beat it"
    )
    lines.append(f"prediction of {p['test_images']:,} test digits by a 5-fold ensemble:")
    engines = {"float32": "keras", "float32_xnnpack": "xnnpack"}
    for key, label in (
        ("plain", "plain model.predict, float32"),
        ("float32", "ours, float32 in Keras (folded)"),
        ("float32_xnnpack", "ours, float32 on XNNPACK (folded)"),
        ("bfloat16", "ours, bfloat16"),
    ):
        if key == "float32_xnnpack" and key not in p:  # a bench file written before XNNPACK was timed (session 21)
            lines.append(f"  {label:<34} not timed (a bench written before session 21)")
            continue
        if "skipped" in p[key]:
            lines.append(f"  {label:<34} {p[key]['skipped']}")
            continue
        marked = key in engines and p.get("engine") == engines[key]  # benches before session 22 name no engine
        used = "  <- what make train and make submission use here" if marked else ""
        lines.append(
            f"  {label:<34} {p[key]['five_fold_ensemble_seconds']:>6.1f} s  "
            f"({p[key]['images_per_second']:,.0f} images/s){used}"
        )
    if "xnnpack_same_digit_as_keras" in p:
        lines.append(
            f"  XNNPACK predicts the same digit as Keras for {100 * p['xnnpack_same_digit_as_keras']:.3f}% of them "
            f"(probabilities within {p['xnnpack_max_abs_difference_from_keras']:.1e})"
        )
    if "bfloat16_same_digit_as_float32" in p:
        lines.append(
            f"  bfloat16 predicts the same digit as float32 for {100 * p['bfloat16_same_digit_as_float32']:.3f}% "
            "of them"
        )
    lines.append(
        f"peak RSS {results['peak_rss_mb']:.0f} MB" + (f"; written to {results['path']}" if "path" in results else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=paths.RAW_DIR)
    parser.add_argument("--out-dir", type=Path, default=paths.RUNS_DIR / "bench")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per pipeline, at least 2 (default 3)")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--train-images", type=int, default=33_600)
    parser.add_argument(
        "--bfloat16",
        action="store_true",
        help="time bfloat16 training and prediction even on a CPU without native bfloat16 (AVX512-BF16 or AMX), "
        "where it is emulated and slower than float32",
    )
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(
            f"--epochs {args.epochs}: give at least 2 (the first epoch traces the step, so the steady speed "
            "comes from the later ones)"
        )
    results = run_benchmark(
        args.data_dir, args.out_dir, args.train_images, args.epochs, args.target, bfloat16=args.bfloat16 or None
    )
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
