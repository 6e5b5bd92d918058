"""The model registry: one architecture is one entry, a function `(num_classes) -> keras.Model`.

Every model takes raw 0..255 pixels of shape (28, 28, 1) (`Rescaling` is inside the model, so a
saved model needs no preprocessing) and returns class probabilities (softmax).
Augmentation is separate (`augmenter`), applied only while training.

Importing this module does not import Keras (each function imports it when called): the registry's
names are known to the `make train` process, which only checks the config and waits for its folds'
processes, without the ~600 MB that TensorFlow's libraries take.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

INPUT_SHAPE = (28, 28, 1)
ModelBuilder = Callable[[int], "keras.Model"]
MODELS: dict[str, ModelBuilder] = {}
# The precisions of training (`precision_policy`, PRECISION= of a config) and of prediction (`inference_model`):
# name -> Keras dtype policy.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


@contextlib.contextmanager
def precision_policy(precision: str = "float32") -> Iterator[None]:
    """Models built inside compute in `precision` (a name of PRECISIONS): Keras' global dtype policy for the
    duration, restored afterwards (the layers keep theirs). With "bfloat16" the convs and activations run in
    bfloat16 while the weights, the optimizer's state and every model's softmax (`dtype="float32"`) stay float32;
    bfloat16 keeps float32's exponent range, so no loss scaling is needed."""
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(builder: ModelBuilder) -> ModelBuilder:
        MODELS[name] = builder
        return builder

    return add


# Whether `_conv_bn` builds the fused batch norm (`build_model`'s `fused_batch_norm`, for the duration of a build).
_FUSED_BATCH_NORM = contextvars.ContextVar("fused_batch_norm", default=True)


def build_model(
    name: str, num_classes: int = 10, dropout_scale: float = 1.0, fused_batch_norm: bool = True
) -> keras.Model:
    """The registry's model `name`, with every dropout rate multiplied by `dropout_scale` (1 keeps the
    architecture's own rates; 0 turns dropout off, as short schedules that underfit may want).
    `fused_batch_norm=False`: Keras' own BatchNormalization instead of `FusedBatchNormalization` (the same
    function and weights, trained by Keras' generic ops: the plain baseline of `make bench`)."""
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))}")
    token = _FUSED_BATCH_NORM.set(fused_batch_norm)
    try:
        model = MODELS[name](num_classes)
    finally:
        _FUSED_BATCH_NORM.reset(token)
    if dropout_scale != 1.0:
        from keras import layers

        for layer in model.layers:
            if isinstance(layer, layers.Dropout):
                rate = layer.rate * dropout_scale
                if not 0.0 <= rate < 1.0:
                    raise ValueError(
                        f"dropout_scale={dropout_scale} makes {layer.name}'s rate {rate:g}; it must be in [0, 1)"
                    )
                layer.rate = rate  # read when the layer is called, and saved by get_config
    return model


def _conv_bn(x, filters: int, kernel: int, strides: int = 1, padding: str = "valid"):
    from keras import layers

    # Conv without bias (batch norm supplies it), then BN, then ReLU. BN momentum 0.9 rather than
    # Keras' 0.99: the moving statistics settle within ~50 steps, so short runs on small data (the
    # demo's few hundred steps) validate well too; on the full data it makes no difference.
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False)(x)
    batch_norm = fused_batch_norm_layer() if _FUSED_BATCH_NORM.get() else layers.BatchNormalization
    x = batch_norm(momentum=0.9)(x)
    return layers.Activation("relu")(x)


@functools.cache
def fused_batch_norm_layer() -> type:
    """Keras' BatchNormalization, trained by TensorFlow's fused kernel (`FusedBatchNormV3`: one op forward, one
    backward, oneDNN's on x86) instead of Keras' generic ones (moments, then the normalisation, each a chain of
    elementwise ops, with casts to and from float32 around them in bfloat16). The same function, weights and
    moving statistics (batch statistics in float32 whatever the input's precision); the train step of the
    default model ran about 2x faster with it in bfloat16 on an AMX CPU (docs/experiments.md). Inference (and
    any case the fused kernel does not cover: not 4-D, not channels-last, masked, frozen) is Keras' own code.
    A saved model holds Keras' BatchNormalization in its place (`inference_model(..., fold_batch_norm=False)`),
    so model.keras loads without this project's code."""
    import tensorflow as tf
    from keras import layers

    class FusedBatchNormalization(layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            if not (training and self.trainable) or mask is not None or len(inputs.shape) != 4 or self.axis != -1:
                return super().call(inputs, training=training, mask=mask)
            channels = inputs.shape[-1]
            gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32)
            beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,), tf.float32)
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            # as Keras updates them: with the batch's biased variance, as Keras' moments give it (the fused kernel
            # returns it with Bessel's correction, n / (n - 1), for n values per channel)
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
            variance = variance * tf.maximum(count - 1, 1) / count
            momentum = self.momentum
            self.moving_mean.assign(
                self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype) * (1 - momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * momentum + tf.cast(variance, self.moving_variance.dtype) * (1 - momentum)
            )
            return tf.cast(outputs, self.compute_dtype)

    return FusedBatchNormalization


@register("cnn")
def cnn(num_classes: int = 10) -> keras.Model:
    """The default: a no-pooling conv stack of the kind that scores ~0.996+ here (~0.33 M parameters).

    Two blocks of [3x3 conv, 3x3 conv, strided 5x5 conv] with batch norm and dropout, then a 4x4
    conv down to 1x1 and a dense softmax. The strided 5x5 convs learn their own downsampling instead
    of max pooling.
    """
    import keras
    from keras import layers

    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64):
        x = _conv_bn(x, filters, 3)
        x = _conv_bn(x, filters, 3)
        x = _conv_bn(x, filters, 5, strides=2, padding="same")
        x = layers.Dropout(0.4)(x)
    x = _conv_bn(x, 128, 4)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="cnn")


@register("cnn_pool")
def cnn_pool(num_classes: int = 10) -> keras.Model:
    """A second family, for ensembles with `cnn`: max pooling and a dense head (~0.21 M parameters, about
    two thirds of `cnn`'s arithmetic per image). Two blocks of [3x3 conv, 3x3 conv, 2x2 max pool, dropout],
    a 3x3 conv to 2x2, then a 128-unit dense layer and the softmax.
    """
    import keras
    from keras import layers

    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64):
        x = _conv_bn(x, filters, 3)
        x = _conv_bn(x, filters, 3)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(0.25)(x)
    x = _conv_bn(x, 128, 3)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="cnn_pool")


@register("tiny")
def tiny(num_classes: int = 10) -> keras.Model:
    """A few thousand parameters: for tests and smoke runs, not for scores."""
    import keras
    from keras import layers

    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = _conv_bn(x, 8, 3, strides=2, padding="same")
    x = _conv_bn(x, 16, 3, strides=2, padding="same")
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="tiny")


def augmenter(
    rotation_degrees: float,
    zoom: float,
    shift: float,
    seed: int | None = None,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> keras.layers.Pipeline:
    """Random rotation, zoom and shift (no flips: a flipped 2 is not a 2), and optionally an elastic
    distortion (`elastic_alpha` > 0), as one Keras pipeline.

    Keras preprocessing layers act only when called with training=True, so the same pipeline is
    safe in any position; here it is mapped over the training tf.data stream only.
    """
    import keras
    from keras import layers

    steps = []
    if elastic_alpha > 0:
        steps.append(_elastic_layer()(elastic_alpha, elastic_sigma, seed=seed))
    if rotation_degrees > 0:
        steps.append(layers.RandomRotation(rotation_degrees / 360.0, fill_mode="constant", seed=seed))
    if zoom > 0:
        steps.append(layers.RandomZoom(zoom, zoom, fill_mode="constant", seed=seed))
    if shift > 0:
        steps.append(layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed))
    return keras.layers.Pipeline(steps, name="augment")


@functools.cache
def _elastic_layer() -> type:
    """Simard et al. (2003)'s elastic distortion as a Keras layer (TensorFlow ops, so it runs in tf.data).

    Every image gets its own displacement field: uniform noise in [-1, 1] per pixel and axis, smoothed
    by a Gaussian of `sigma` pixels and scaled by `alpha` (alpha 34 and sigma 4 move pixels by about
    1.4 pixels, smoothly, as a hand would). The image is resampled bilinearly, with background (0)
    outside the frame. Acts only when called with training=True.
    """
    import tensorflow as tf
    from keras import layers

    class ElasticDistortion(layers.Layer):
        def __init__(self, alpha: float, sigma: float, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.alpha, self.sigma, self.seed = float(alpha), float(sigma), seed
            radius = max(1, int(np.ceil(3 * self.sigma)))
            taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / self.sigma) ** 2)
            self._taps = (taps / taps.sum()).astype(np.float32)

        def get_config(self) -> dict:
            return {**super().get_config(), "alpha": self.alpha, "sigma": self.sigma, "seed": self.seed}

        def call(self, images, training=True):
            if not training:
                return images
            shape = tf.shape(images)
            noise = tf.random.uniform(tf.stack([shape[0], shape[1], shape[2], 2]), -1.0, 1.0, seed=self.seed)
            taps = tf.constant(self._taps)
            row_kernel = tf.tile(tf.reshape(taps, (1, -1, 1, 1)), (1, 1, 2, 1))
            column_kernel = tf.tile(tf.reshape(taps, (-1, 1, 1, 1)), (1, 1, 2, 1))
            field = tf.nn.depthwise_conv2d(noise, row_kernel, (1, 1, 1, 1), "SAME")
            field = self.alpha * tf.nn.depthwise_conv2d(field, column_kernel, (1, 1, 1, 1), "SAME")
            return self.warp(images, field)

        @staticmethod
        def warp(images, field):
            """Output pixel (r, c) of each (N, H, W, 1) image is the input, bilinearly sampled, at
            (r + field[..., 0], c + field[..., 1]); background (0) outside the frame."""
            images = tf.convert_to_tensor(images, tf.float32)
            field = tf.convert_to_tensor(field, tf.float32)
            shape = tf.shape(images)
            batch, height, width = shape[0], shape[1], shape[2]
            rows = tf.cast(tf.range(height), tf.float32)[None, :, None] + field[..., 0]
            columns = tf.cast(tf.range(width), tf.float32)[None, None, :] + field[..., 1]
            top, left = tf.floor(rows), tf.floor(columns)
            down, right = rows - top, columns - left  # bilinear weights
            flat = tf.reshape(images, (-1,))
            first = tf.range(batch)[:, None, None] * height * width

            def pixel(row, column):
                inside = (row >= 0) & (row <= tf.cast(height - 1, tf.float32))
                inside &= (column >= 0) & (column <= tf.cast(width - 1, tf.float32))
                r = tf.clip_by_value(tf.cast(row, tf.int32), 0, height - 1)
                c = tf.clip_by_value(tf.cast(column, tf.int32), 0, width - 1)
                return tf.where(inside, tf.gather(flat, first + r * width + c), 0.0)

            warped = (
                (1 - down) * (1 - right) * pixel(top, left)
                + (1 - down) * right * pixel(top, left + 1)
                + down * (1 - right) * pixel(top + 1, left)
                + down * right * pixel(top + 1, left + 1)
            )
            return tf.reshape(warped, shape)

        def compute_output_shape(self, input_shape):
            return input_shape

    return ElasticDistortion


@functools.cache
def _folded_away_layer() -> type:
    """The layer that stands where a batch norm was folded into the conv before it: passes its input through."""
    from keras import layers

    class FoldedAway(layers.Layer):
        def call(self, inputs, training=None, mask=None):
            return inputs

    return FoldedAway


def _folds_into(model: keras.Model) -> dict[str, keras.layers.BatchNormalization]:
    """{conv name: batch norm} for every channels-last Conv2D whose output only a batch norm reads.

    Both layers must be used once (a shared layer cannot be folded for one use only), the conv
    linear (no activation before the batch norm) and not itself a model output.
    """
    import keras
    from keras import layers

    outputs = {id(t) for t in model.outputs}
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        before = layer.input._keras_history.operation
        if (
            isinstance(before, layers.Conv2D)
            and len(before._inbound_nodes) == 1
            and len(before._outbound_nodes) == 1
            and id(before.output) not in outputs
            and before.activation is keras.activations.linear
            and before.data_format == "channels_last"
            and layer.axis in (-1, 3)
        ):
            pairs[before.name] = layer
    return pairs


def is_graph_model(model) -> bool:
    """True for functional and Sequential models (what `inference_model` can rewrite)."""
    import keras

    return isinstance(model, keras.Sequential) or hasattr(model, "_run_through_graph")


def inference_model(model: keras.Model, precision: str = "float32", fold_batch_norm: bool = True) -> keras.Model:
    """A copy of a trained functional model for prediction only: same outputs, less work.

    Every batch norm that follows a conv is folded into that conv's kernel and bias (exact up to
    float rounding: ~1e-6 on the probabilities). `precision="bfloat16"` also computes in bfloat16
    with float32 weights and a float32 softmax, faster on CPUs with AVX512-BF16 (`make bench`);
    on the default run's 42,000 out-of-fold digits it changed 2 predictions (OOF 0.99555 -> 0.99550),
    so it is an option, never the default. The copy computes in `precision` whatever the model was
    trained in (a PRECISION=bfloat16 model predicts in float32 by default), and its last layer (the
    softmax) always in float32. `fold_batch_norm=False`: the same layers as the model, only the
    precision changed and the fused batch norm made Keras' own (how every fold model is saved).
    """
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    policy = PRECISIONS[precision]
    pairs = _folds_into(model) if fold_batch_norm else {}
    folded = {bn.name for bn in pairs.values()}
    output_layer = model.layers[-1].name

    def clone(layer):
        config = layer.get_config()
        if layer.name in folded:
            return _folded_away_layer()(name=layer.name, dtype=policy)
        if layer.name in pairs:
            config["use_bias"] = True
        if "dtype" in config:
            config["dtype"] = policy if layer.name != output_layer else "float32"
        kind = layer.__class__
        if kind is fused_batch_norm_layer():  # the same layer to Keras, which can load it without our code
            kind = keras.layers.BatchNormalization
        return kind.from_config(config)

    fast = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in folded or not layer.weights:
            continue
        target = fast.get_layer(layer.name)
        if layer.name in pairs:
            bn = pairs[layer.name]
            gamma = bn.gamma.numpy() if bn.scale else 1.0
            beta = bn.beta.numpy() if bn.center else 0.0
            scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
            bias = layer.bias.numpy() if layer.use_bias else 0.0
            target.set_weights([layer.kernel.numpy() * scale, beta + (bias - bn.moving_mean.numpy()) * scale])
        else:
            target.set_weights(layer.get_weights())
    return fast


# --- prediction through TensorFlow Lite's XNNPACK ------------------------------------------------------------

XNNPACK_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def xnnpack_available() -> bool:
    """Whether this TensorFlow still has its built-in Lite interpreter (2.21 has; a later release may drop it,
    and prediction then stays with Keras)."""
    import tensorflow as tf

    return hasattr(getattr(tf, "lite", None), "Interpreter")


@contextlib.contextmanager
def _without_stderr_line(line: str) -> Iterator[None]:
    """Run the block with file descriptor 2 caught, then write back everything but `line`: TensorFlow Lite's C++
    prints its "Created ... delegate" notice there once per process, and no setting of its Python API hides it.
    Anything else written meanwhile (an error) still reaches stderr, in order, also when the block raises; where
    no temporary file can be made, the block runs unfiltered (the notice shows, nothing else changes)."""
    import os
    import sys
    import tempfile

    try:
        caught = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the `with caught` below)
    except OSError:
        yield
        return
    with caught:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(caught.fileno(), 2)
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)  # fd 2 is given back whatever failed above
                os.close(saved)
            caught.seek(0)
            kept = memoryview(
                b"".join(text for text in caught.read().splitlines(keepends=True) if text.strip() != line.encode())
            )
            while kept:
                kept = kept[os.write(2, kept) :]


class XnnpackRunner:
    """A float32 graph model (in practice `inference_model`'s copy) compiled for TensorFlow Lite's XNNPACK
    engine: the same probabilities as Keras to a few 1e-6 (`make bench`), 1.6-2x Keras' speed on an AVX2-only CPU
    and no faster with AVX-512 (docs/experiments.md; `train.fast_engine` picks). `predict` takes uint8 or float
    images (N, 28, 28, 1) and returns float32 probabilities (N, classes); `threads` is how many cores it uses."""

    def __init__(self, model: keras.Model, threads: int):
        import warnings

        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        if any(getattr(layer, "compute_dtype", "float32") != "float32" for layer in model.layers):
            raise ValueError(f"{model.name}: XNNPACK runs float32 models only; predict in bfloat16 with Keras")
        signature = tf.TensorSpec((None, *INPUT_SHAPE), tf.float32)
        call = tf.function(lambda images: model(images, training=False), input_signature=[signature])
        frozen = convert_variables_to_constants_v2(call.get_concrete_function())
        self.flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model).convert()
        with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated": see xnnpack_available
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=self.flatbuffer, num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = 0  # the batch size the interpreter's tensors are allocated for

    def predict(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        parts = []
        for start in range(0, len(images), batch):
            chunk = np.ascontiguousarray(images[start : start + batch], dtype=np.float32)
            if len(chunk) != self.batch:  # a new shape: 0.1 ms to re-plan, so the last, partial batch is not padded
                self.interpreter.resize_tensor_input(self.input, chunk.shape)
                with _without_stderr_line(XNNPACK_NOTICE):
                    self.interpreter.allocate_tensors()
                self.batch = len(chunk)
            self.interpreter.set_tensor(self.input, chunk)
            self.interpreter.invoke()
            parts.append(self.interpreter.get_tensor(self.output).copy())
        if not parts:
            return np.zeros((0, self.interpreter.get_output_details()[0]["shape"][-1]), np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)
