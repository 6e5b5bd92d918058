"""The model registry and the inference copy (batch norm folded, optional bfloat16) used for every prediction."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from digits import models  # noqa: E402
from digits.train import _INFERENCE_MODELS, fast_engine, float32_engine, predict  # noqa: E402


def _with_trained_statistics(name: str, seed: int = 0) -> keras.Model:
    """A registry model whose batch norms hold non-trivial statistics and affine weights, as after training."""
    keras.utils.set_random_seed(seed)
    model = models.build_model(name)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.2, channels).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.1, channels).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))
    return model


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_inference_copy_folds_every_batch_norm_and_predicts_the_same(name, sample_train):
    model = _with_trained_statistics(name)
    images = sample_train.images[:300]
    expected = model.predict(images.astype(np.float32), verbose=0)
    fast = models.inference_model(model)
    assert not [layer for layer in fast.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(fast.layers) == len(model.layers)
    np.testing.assert_allclose(fast.predict(images.astype(np.float32), verbose=0), expected, atol=2e-5)
    # The original model is untouched.
    np.testing.assert_array_equal(model.predict(images.astype(np.float32), verbose=0), expected)


def test_bfloat16_copy_computes_in_bfloat16_and_keeps_a_float32_softmax(sample_train):
    model = _with_trained_statistics("cnn")
    fast = models.inference_model(model, "bfloat16")
    convs = [layer for layer in fast.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32" for layer in convs)
    assert fast.layers[-1].compute_dtype == "float32"
    images = sample_train.images[:300]
    expected, probs = predict(model, images), predict(model, images, precision="bfloat16")
    assert not np.array_equal(probs, expected)  # really computed another way
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(probs - expected).max() < 0.1
    assert (probs.argmax(1) == expected.argmax(1)).mean() >= 0.97


def test_only_foldable_batch_norms_are_folded(sample_train):
    """A conv with its own bias is folded with it; a batch norm after an activation or used twice is kept."""
    layers = keras.layers
    inputs = keras.Input(models.INPUT_SHAPE)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(6, 3, use_bias=True, name="biased")(x)
    x = layers.BatchNormalization(name="after_biased")(x)
    x = layers.Conv2D(6, 3, activation="relu", name="activated")(x)
    x = layers.BatchNormalization(name="after_relu")(x)
    shared = layers.BatchNormalization(name="shared")
    a = shared(layers.Conv2D(6, 3, padding="same", use_bias=False, name="left")(x))
    b = shared(layers.Conv2D(6, 3, padding="same", use_bias=False, name="right")(x))
    x = layers.GlobalAveragePooling2D()(layers.Add()([a, b]))
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(x))
    rng = np.random.default_rng(3)
    for weight in model.weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
    fast = models.inference_model(model)
    kept = {layer.name for layer in fast.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert kept == {"after_relu", "shared"}
    images = sample_train.images[:50].astype(np.float32)
    np.testing.assert_allclose(fast.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'float16'; choose one of: float32, bfloat16"):
        models.inference_model(models.build_model("tiny"), "float16")
    with pytest.raises(ValueError, match="unknown precision 'float16'"), models.precision_policy("float16"):
        pass
    assert keras.config.dtype_policy().name == "float32"


def test_the_precision_policy_is_restored_when_building_fails():
    with pytest.raises(RuntimeError, match="boom"), models.precision_policy("bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == "float32"


def test_the_inference_copy_computes_its_softmax_in_float32_even_if_the_model_did_not():
    """A model built for bfloat16 training whose output layer has no dtype of its own (unlike the registry's)."""
    with models.precision_policy("bfloat16"):
        inputs = keras.Input(models.INPUT_SHAPE)
        x = keras.layers.Conv2D(4, 3, use_bias=False)(keras.layers.Rescaling(1 / 255)(inputs))
        x = keras.layers.BatchNormalization()(x)
        outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
        model = keras.Model(inputs, outputs)
    assert model.layers[-1].compute_dtype == "bfloat16"
    for precision in models.PRECISIONS:
        fast = models.inference_model(model, precision)
        assert fast.layers[-1].compute_dtype == "float32"
    copy = models.inference_model(model, fold_batch_norm=False)  # as a bfloat16 fold model is saved
    assert [type(layer) for layer in copy.layers] == [type(layer) for layer in model.layers]
    assert all(layer.compute_dtype == "float32" for layer in copy.layers)
    for mine, theirs in zip(copy.weights, model.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


@pytest.mark.parametrize("name", ["cnn", "cnn_pool"])
def test_a_model_built_for_bfloat16_training_keeps_float32_weights_and_softmax(name, sample_train):
    """PRECISION=bfloat16: the convs compute in bfloat16 on float32 weights, the softmax in float32, and the
    policy is Keras' global one only while the model is built."""
    with models.precision_policy("bfloat16"):
        model = models.build_model(name)
    assert keras.config.dtype_policy().name == "float32"  # restored
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32" for layer in convs)
    assert all(weight.dtype == "float32" for weight in model.weights)
    assert model.layers[-1].compute_dtype == "float32"
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    images = sample_train.images[:64].astype(np.float32)
    one_hot = np.eye(10, dtype=np.float32)[sample_train.labels[:64]]
    before = [weight.numpy().copy() for weight in model.trainable_weights]
    model.fit(images, one_hot, batch_size=32, epochs=1, verbose=0)  # gradients reach every float32 weight
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights, strict=True))
    probs = model.predict(images, verbose=0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # its float32 inference copy (what `predict` uses) computes in float32 again
    fast = models.inference_model(model)
    assert all(layer.compute_dtype == "float32" for layer in fast.layers)
    float32_probs = predict(model, sample_train.images[:64])
    assert not np.array_equal(float32_probs, probs)  # computed another way
    assert (float32_probs.argmax(1) == probs.argmax(1)).mean() >= 0.9


needs_xnnpack = pytest.mark.skipif(not models.xnnpack_available(), reason="this TensorFlow has no tf.lite.Interpreter")


@needs_xnnpack
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_xnnpack_predicts_what_keras_does(name, sample_train):
    """Float32 prediction on TensorFlow Lite's XNNPACK: the same probabilities as the Keras copy, for any number
    of images (a partial last batch, one image, none)."""
    model = _with_trained_statistics(name)
    images = sample_train.images[:700]
    expected = models.inference_model(model).predict(images.astype(np.float32), verbose=0)
    probs = predict(model, images, engine="xnnpack")
    assert probs.dtype == np.float32 and probs.shape == (700, 10)
    assert not np.array_equal(probs, expected)  # really computed by another engine
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert (probs.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(predict(model, images, engine="keras"), expected, atol=1e-6)  # Keras on request
    for rows in (1, 257, 0):  # the interpreter re-plans for each new batch shape, and back
        np.testing.assert_allclose(predict(model, images[:rows], engine="xnnpack"), expected[:rows], atol=1e-5)
    assert predict(model, images[:0], engine="xnnpack").shape == (0, 10)
    np.testing.assert_allclose(predict(model, images, engine="xnnpack"), probs, atol=1e-7)
    # without an engine named, this CPU's faster one
    auto = predict(model, images)
    np.testing.assert_array_equal(auto, probs if fast_engine() == "xnnpack" else predict(model, images, engine="keras"))


def test_the_faster_engine_for_each_cpu():
    """XNNPACK was the faster float32 engine on the AVX2-only CPU, Keras (oneDNN) on the AVX-512 one."""
    assert fast_engine({"model": "AMD EPYC", "flags": ["avx2"]}) == "xnnpack"
    assert fast_engine({"model": "AMD EPYC", "flags": ["avx2", "avx512f", "avx512_bf16"]}) == "keras"
    assert fast_engine({"model": "Xeon", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]}) == "keras"
    assert fast_engine({"model": "arm", "flags": None}) == "xnnpack"
    from pathlib import Path

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = set(" ".join(line for line in lines if line.startswith("flags")).split())
    assert fast_engine() == ("keras" if "avx512f" in flags else "xnnpack")  # this machine's, read another way


def test_xnnpack_falls_back_to_keras_where_tensorflow_has_no_lite_interpreter(monkeypatch, sample_train):
    """A later TensorFlow may drop tf.lite (2.21 deprecates its Interpreter): prediction goes on in Keras."""
    import types

    import tensorflow as tf

    monkeypatch.setattr(tf, "lite", types.SimpleNamespace())  # a TensorFlow without the interpreter
    assert not models.xnnpack_available()
    assert float32_engine("xnnpack") == float32_engine("auto") == float32_engine("keras") == "keras"
    model = _with_trained_statistics("tiny")
    images = sample_train.images[:64]
    probs = predict(model, images, engine="xnnpack")
    assert sorted(key[:2] for key in _INFERENCE_MODELS[model]) == [("float32", "keras")]
    np.testing.assert_array_equal(probs, models.inference_model(model).predict(images.astype(np.float32), verbose=0))


def test_xnnpack_refuses_what_it_cannot_compute(sample_train):
    model = _with_trained_statistics("tiny")
    with pytest.raises(ValueError, match="unknown engine 'tflite'; choose one of: auto, xnnpack, keras"):
        predict(model, sample_train.images[:4], engine="tflite", precision="bfloat16")
    with pytest.raises(ValueError, match="unknown engine 'tflite'; choose one of: auto, xnnpack, keras"):
        predict(model, sample_train.images[:4], engine="tflite")
    with pytest.raises(ValueError, match="XNNPACK runs float32 models only; predict in bfloat16 with Keras"):
        models.XnnpackRunner(models.inference_model(model, "bfloat16"), threads=1)


def test_xnnpack_notice_is_dropped_and_everything_else_on_stderr_kept(capfd):
    """TensorFlow Lite's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on file descriptor 2
    once per process; the filter drops that line only, and keeps what comes before, in it and after."""
    import os

    os.write(2, b"before\n")
    with models._without_stderr_line(models.XNNPACK_NOTICE):
        os.write(2, b"first error\n" + models.XNNPACK_NOTICE.encode() + b"\nsecond error, no newline")
    os.write(2, b"\nafter\n")
    assert capfd.readouterr().err == "before\nfirst error\nsecond error, no newline\nafter\n"
    with models._without_stderr_line(models.XNNPACK_NOTICE):
        pass
    assert capfd.readouterr().err == ""
    # when the block raises, what it wrote still comes out, and fd 2 is given back, with no descriptor leaked
    target, open_fds = os.readlink("/proc/self/fd/2"), len(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="interpreter failed"), models._without_stderr_line(models.XNNPACK_NOTICE):
        os.write(2, models.XNNPACK_NOTICE.encode() + b"\nthe reason\n")
        raise RuntimeError("interpreter failed")
    assert capfd.readouterr().err == "the reason\n"
    assert os.readlink("/proc/self/fd/2") == target and len(os.listdir("/proc/self/fd")) == open_fds


@needs_xnnpack
def test_a_fresh_process_predicts_without_the_xnnpack_notice(sample_dir):
    """The notice comes at a process's first XNNPACK interpreter; in pytest it may have come already."""
    import subprocess
    import sys

    script = (
        "from digits import data, models, train; "
        f"images = data.load_test({str(sample_dir / 'test.csv')!r})[:40]; "
        "print(train.predict(models.build_model('tiny'), images, engine='xnnpack').shape)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(40, 10)"
    assert "XNNPACK" not in result.stderr and "deprecated" not in result.stderr


@needs_xnnpack
def test_predict_follows_weight_changes(sample_train):
    """The cached inference copy must never serve weights the model no longer has."""
    model = _with_trained_statistics("tiny", seed=1)
    images = sample_train.images[:64]
    before = predict(model, images, engine="xnnpack")
    copies = dict(_INFERENCE_MODELS[model])
    np.testing.assert_array_equal(predict(model, images, engine="xnnpack"), before)
    assert dict(_INFERENCE_MODELS[model]) == copies  # the same copy served again, not rebuilt
    # a copy per precision, kept side by side: taking turns between them (as `make bench` does) rebuilds neither
    predict(model, images, precision="bfloat16")
    both = dict(_INFERENCE_MODELS[model])
    assert sorted(key[:2] for key in both) == [("bfloat16", "keras"), ("float32", "xnnpack")]
    predict(model, images, engine="xnnpack")
    predict(model, images, precision="bfloat16")
    assert (
        all(_INFERENCE_MODELS[model][key] is copy for key, copy in both.items()) and len(_INFERENCE_MODELS[model]) == 2
    )
    other = _with_trained_statistics("tiny", seed=2)
    model.set_weights(other.get_weights())
    expected = other.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(predict(model, images, engine="xnnpack"), expected, atol=2e-5)
    np.testing.assert_allclose(predict(model, images, engine="keras"), expected, atol=2e-5)
    # the copies of the old weights are gone, both precisions: only the new float32 copies are left
    assert sorted(key[:2] for key in _INFERENCE_MODELS[model]) == [("float32", "keras"), ("float32", "xnnpack")]
    assert len({key[-1] for key in _INFERENCE_MODELS[model]}) == 1 and not set(_INFERENCE_MODELS[model]) & set(both)


# --- elastic distortion ---------------------------------------------------------------------------------


def test_elastic_warp_samples_bilinearly_at_the_displaced_positions():
    warp = models._elastic_layer().warp
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 6, 5, 1)).astype(np.float32)

    def field(rows: float, columns: float) -> np.ndarray:
        return np.broadcast_to(np.array([rows, columns], np.float32), (2, 6, 5, 2))

    # a whole-pixel displacement is a shift with background coming in
    moved = warp(images, field(0, 1)).numpy()
    assert np.allclose(moved[:, :, :-1], images[:, :, 1:]) and np.all(moved[:, :, -1] == 0)
    moved = warp(images, field(-2, 0)).numpy()
    assert np.allclose(moved[:, 2:], images[:, :-2]) and np.all(moved[:, :2] == 0)
    # half a pixel down: the mean of the two rows it falls between
    half = warp(images, field(0.5, 0)).numpy()
    assert np.allclose(half[:, :-1], (images[:, :-1] + images[:, 1:]) / 2, atol=1e-4)
    # a field that differs per pixel: each output pixel reads its own position
    per_pixel = np.zeros((2, 6, 5, 2), np.float32)
    per_pixel[1, 3, 2] = (1.25, -0.5)
    one = warp(images, per_pixel).numpy()
    expected = 0.75 * (0.5 * images[1, 4, 1] + 0.5 * images[1, 4, 2]) + 0.25 * (
        0.5 * images[1, 5, 1] + 0.5 * images[1, 5, 2]
    )
    assert one[1, 3, 2, 0] == pytest.approx(float(expected[0]), rel=1e-5)
    one[1, 3, 2] = images[1, 3, 2]
    assert np.allclose(one, images)


def test_elastic_distortion_moves_strokes_smoothly_and_only_while_training(sample_train):
    digits = sample_train.images[:64].astype(np.float32)
    layer = models._elastic_layer()(34.0, 4.0, seed=3)

    assert np.array_equal(layer(digits, training=False).numpy(), digits)
    warped = layer(digits, training=True).numpy()
    assert warped.shape == digits.shape and warped.min() >= 0 and warped.max() <= 255.001
    assert np.abs(warped - digits).mean() > 5  # the strokes moved ...
    ink = warped.sum(axis=(1, 2, 3)) / digits.sum(axis=(1, 2, 3))
    assert 0.8 < ink.mean() < 1.2  # ... but stayed strokes of about the same ink
    # a constant image stays constant wherever no displacement can reach the border
    flat = np.full((4, 28, 28, 1), 200.0, np.float32)
    gentle = models._elastic_layer()(4.0, 4.0, seed=3)(flat, training=True).numpy()
    assert np.allclose(gentle[:, 5:-5, 5:-5], 200.0, atol=1e-3)
    assert not np.allclose(gentle, 200.0)  # while the border did let background in


def test_augmenter_includes_the_elastic_distortion_only_when_asked():
    plain = models.augmenter(10, 0.1, 0.1, seed=1)
    elastic = models.augmenter(10, 0.1, 0.1, seed=1, elastic_alpha=34, elastic_sigma=4)
    assert "ElasticDistortion" not in [type(layer).__name__ for layer in plain.layers]
    assert [type(layer).__name__ for layer in elastic.layers][0] == "ElasticDistortion"


@pytest.mark.parametrize("name", ["cnn", "cnn_pool"])
def test_dropout_scale_multiplies_every_rate_and_zero_turns_dropout_off(name):
    own = [layer.rate for layer in models.build_model(name).layers if isinstance(layer, keras.layers.Dropout)]
    assert own and all(rate > 0 for rate in own)
    half = models.build_model(name, dropout_scale=0.5)
    assert [layer.rate for layer in half.layers if isinstance(layer, keras.layers.Dropout)] == pytest.approx(
        [rate / 2 for rate in own]
    )
    # the scaled rate is what a saved model carries
    assert [c["config"]["rate"] for c in half.get_config()["layers"] if c["class_name"] == "Dropout"] == pytest.approx(
        [rate / 2 for rate in own]
    )
    digits = np.random.default_rng(0).uniform(0, 255, (8, 28, 28, 1)).astype(np.float32)
    off = models.build_model(name, dropout_scale=0.0)
    # with dropout off, only batch statistics vary in training mode: the same batch gives the same output twice
    np.testing.assert_allclose(off(digits, training=True), off(digits, training=True), rtol=1e-5, atol=1e-6)
    on = models.build_model(name)
    assert not np.allclose(on(digits, training=True), on(digits, training=True))


def test_a_dropout_scale_that_would_make_a_rate_reach_one_is_refused():
    with pytest.raises(ValueError, match="dropout_scale=2.5 makes .* rate 1; it must be in \\[0, 1\\)"):
        models.build_model("cnn", dropout_scale=2.5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_weight_decay_shrinks_kernels_only_and_zero_keeps_plain_adam(weight_decay):
    from digits import config as config_lib
    from digits.train import optimizer

    config = config_lib.resolve("default", {"weight_decay": str(weight_decay), "warmup_epochs": "0"})
    model = models.build_model("cnn_pool")  # convs, batch norms and a dense layer with bias
    adam = optimizer(config, steps_per_epoch=10)
    assert type(adam).__name__ == ("AdamW" if weight_decay else "Adam")
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:  # non-zero everywhere, so a wrong decay of beta or a bias shows too
        v.assign(rng.normal(size=v.shape).astype("float32"))
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    # zero gradients: Adam's own step is 0, so whatever moves is the decay (at the peak rate, no warm-up)
    adam.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    shrink = 1 - config.learning_rate * weight_decay
    kinds = set()
    for v in model.trainable_variables:
        kind = v.path.rsplit("/", 1)[-1]
        kinds.add(kind)
        expected = before[v.path] * (shrink if kind == "kernel" else 1.0)
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, err_msg=v.path)
    assert {"kernel", "gamma", "beta", "bias"} <= kinds


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_fused_batch_norm_computes_what_keras_batch_norm_does(precision):
    """Outputs, gradients and moving statistics of one training step, and inference, against Keras' own layer
    with the same weights; in bfloat16 to bfloat16's rounding."""
    import tensorflow as tf

    fused_kind = models.fused_batch_norm_layer()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (16, 6, 6, 5)).astype(np.float32))
    with models.precision_policy(precision):
        fused, plain = fused_kind(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (fused, plain):
        layer.build(x.shape)
        layer.gamma.assign(rng.uniform(0.5, 1.5, 5).astype(np.float32) if layer is fused else fused.gamma.numpy())
        layer.beta.assign(rng.uniform(-1, 1, 5).astype(np.float32) if layer is fused else fused.beta.numpy())
    # a weight per output value: with one weight per channel, gamma's gradient (the weight times the sum of the
    # channel's normalised values) would be 0 up to rounding, and the test a measure of the kernels' cancellation
    # error (2.8e-4 with AVX2's oneDNN kernels, session 18) instead of what the layer computes
    weights = tf.constant(rng.normal(size=x.shape).astype(np.float32))
    results = {}
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results[layer is fused] = [y, *grads, layer.moving_mean, layer.moving_variance, layer(x, training=False)]
    assert results[True][0].dtype == results[False][0].dtype == ("bfloat16" if precision == "bfloat16" else "float32")
    tolerance = {"float32": 1e-4, "bfloat16": 3e-2}[precision]
    names = ("outputs", "input gradient", "gamma gradient", "beta gradient", "moving mean", "moving variance")
    for name, mine, theirs in zip((*names, "inference"), results[True], results[False], strict=True):
        mine, theirs = np.asarray(tf.cast(mine, tf.float32)), np.asarray(tf.cast(theirs, tf.float32))
        scale = max(1.0, float(np.abs(theirs).max()))
        assert np.abs(mine - theirs).max() <= tolerance * scale, name
    assert not np.allclose(results[True][4], 0)  # the moving mean moved (towards 2)


def test_models_train_with_the_fused_batch_norm_and_save_keras_own(tmp_path):
    model = models.build_model("cnn")
    kinds = {type(layer) for layer in model.layers}
    assert models.fused_batch_norm_layer() in kinds and keras.layers.BatchNormalization not in kinds
    plain = models.build_model("cnn", fused_batch_norm=False)  # make bench's plain baseline
    assert models.fused_batch_norm_layer() not in {type(layer) for layer in plain.layers}
    assert [w.shape for w in plain.weights] == [w.shape for w in model.weights]
    saved = models.inference_model(model, fold_batch_norm=False)
    assert {type(layer) for layer in saved.layers} == {
        keras.layers.BatchNormalization if kind is models.fused_batch_norm_layer() else kind for kind in kinds
    }
    saved.save(tmp_path / "model.keras")
    assert "FusedBatchNormalization" not in (tmp_path / "model.keras").read_bytes().decode("latin-1")
