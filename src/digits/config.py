"""Training configuration: a frozen dataclass, named presets, typed overrides.

`resolve(preset, overrides)` starts from a preset and applies overrides such as
`{"epochs": "30", "only": "0,2"}` (strings from the command line are converted to the field's type;
an unknown key, a wrong type or an impossible value is a ConfigError that says what to do).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Config:
    preset: str = "default"
    # a registry name, or several separated by commas: fold k then trains the (k mod n)-th, so the fold
    # ensemble mixes architectures at no extra cost (`fold_model`)
    model: str = "cnn"
    folds: int = 5
    epochs: int = 24
    batch: int = 128
    seed: int = 42
    holdout: float = 0.0  # fraction of train.csv kept out of every fold to score the ensemble honestly
    # which rows the holdout takes: None = SEED's. Runs with other SEEDs (other folds, initial weights and
    # augmentation) but one holdout seed hold out the same rows, so `make ensemble` can blend them and score the
    # blend on rows none of them trained on
    holdout_seed: int | None = None
    # optimisation: Adam, linear warm-up then cosine decay to zero, so the last epoch is annealed
    # whatever the budget (a fixed 0.95^epoch decay is still hot at 20 epochs)
    learning_rate: float = 2e-3
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    # decoupled weight decay (AdamW): every conv and dense kernel shrinks by learning rate x weight_decay per step;
    # batch-norm scales and offsets and biases are exempt. 0 = plain Adam
    weight_decay: float = 0.0
    # every dropout rate of the model times this (1 = the architecture's own rates, 0 = no dropout). The field's
    # default stays 1 although the quick and default presets say 0: a config.json written before this setting
    # existed is read with the dropout it trained with
    dropout_scale: float = 1.0
    # augmentation, applied to training batches only
    augment: bool = True
    rotation: float = 10.0  # degrees
    zoom: float = 0.1
    shift: float = 0.1
    # elastic distortion (Simard et al. 2003): displacement fields smoothed by a Gaussian of elastic_sigma pixels,
    # scaled by elastic (alpha; 0 = off, 34 with sigma 4 is Simard's MNIST setting)
    elastic: float = 0.0
    elastic_sigma: float = 4.0
    deterministic: bool = False
    # the precision of the training arithmetic: "float32", or "bfloat16" (Keras' mixed_bfloat16: bfloat16 convs and
    # activations, float32 weights, optimizer and softmax). With the fused batch norm bfloat16 trains about 1.8x
    # faster on CPUs with AMX, 1.4x with AVX512-BF16 alone, slower without either (emulated); `resolve` turns
    # "auto" (every preset's choice) into the fast one for this machine. The field's default stays float32, so a
    # config.json written before this setting existed reads as it trained
    precision: str = "float32"
    # pseudo-labels: the test digits that a finished run (the teacher) predicts with at least this confidence join
    # each fold's training rows, labelled with the teacher's digit. Fold k learns only from the teacher's fold k,
    # which never saw fold k's validation rows or the holdout, so the OOF and holdout figures stay honest.
    pseudo: str | None = None
    pseudo_confidence: float = 0.99
    # which folds this process trains; not part of the run's identity (folds of one run may be
    # trained by different processes or machines)
    only: tuple[int, ...] | None = field(default=None, compare=False)

    def identity(self) -> dict:
        """The fields that define a run: resuming requires them to be equal."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.compare and f.name != "preset"}
        # the holdout's seed as it acts: HOLDOUT_SEED=42 on a SEED=42 run is that run, and without a holdout it is moot
        values["holdout_seed"] = self.holdout_rows_seed() if self.holdout > 0 else None
        return values

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["only"] = list(self.only) if self.only is not None else None
        return data

    def holdout_rows_seed(self) -> int:
        """The seed that picks the holdout rows (HOLDOUT_SEED, or SEED when it is not given)."""
        return self.seed if self.holdout_seed is None else self.holdout_seed

    def fold_ids(self) -> list[int]:
        return list(self.only) if self.only is not None else list(range(self.folds))

    def model_names(self) -> list[str]:
        return [name.strip() for name in self.model.split(",")]

    def fold_model(self, fold: int) -> str:
        """The registry name of the model that fold `fold` trains."""
        names = self.model_names()
        return names[fold % len(names)]


PRESETS: dict[str, dict] = {
    # a first real run in about 5 minutes on 2 cores (the demo uses it on the bundled sample). Batch 64, a
    # quarter-epoch warm-up and no dropout: in 4 epochs the models underfit, so the extra steps count and
    # dropout only slows learning (holdout ensemble 0.9931-0.9938 without dropout, 0.9910-0.9924 with it;
    # docs/experiments.md)
    "quick": {"folds": 3, "epochs": 4, "batch": 64, "warmup_epochs": 0.25, "dropout_scale": 0.0, "precision": "auto"},
    # the measured default: 5 folds in about 40 minutes on 2 CPU cores in float32, 22 in bfloat16 on an AMX CPU
    # (`auto`, with the fused batch norm; bfloat16 with AVX512-BF16 too since session 22). No dropout:
    # on two holdouts (seeds 42 and 7) its fold ensemble made 14 and 9 errors against 18 and 13 with dropout, and
    # its OOF rows are as good (docs/experiments.md)
    "default": {"dropout_scale": 0.0, "precision": "auto"},
    # the default's recipe on 10 folds: ten models, each trained on 90% of the rows instead of 80% (about 2.25x
    # the default's time). On seed 42's holdout its OOF rows had 158 errors against the default's 177 (the best
    # of any recipe measured) and its fold ensemble 13 against 14. The earlier max (40 epochs, with dropout) made
    # 32 holdout errors over two seeds against the default's 23 (docs/experiments.md)
    "max": {"folds": 10, "dropout_scale": 0.0, "precision": "auto"},
}


def fast_precision(cpu: dict | None = None, gpus: Path = Path("/proc/driver/nvidia/gpus")) -> str:
    """ "bfloat16" on a CPU with native bfloat16: AMX (Intel Xeon since Sapphire Rapids; the default model's
    training 1.8-1.9x faster than in float32) or AVX512-BF16 (AMD EPYC since Zen 4, Intel Cooper Lake: 1.36-1.43x
    with the fused batch norm in two `make bench` runs of session 22; with Keras' batch norm it was no faster,
    docs/experiments.md). Else "float32": without either, bfloat16 is emulated and slower. float32 too where an
    NVIDIA GPU is installed (`gpus` lists one): the model then trains there, and bfloat16 was never measured on a
    GPU. With AMX, the default model trained as accurately in bfloat16 as in float32 on two holdouts (24 errors
    of 8,400, 25 with the fused batch norm, against 23); with AVX512-BF16, `max` made 10 errors on seed 7's
    holdout (the float32 default 9). `cpu`: `bench.cpu_info()`'s record (default: this machine's)."""
    from digits.bench import cpu_info, native_bfloat16

    if gpus.is_dir() and any(gpus.iterdir()):
        return "float32"
    return "bfloat16" if native_bfloat16(cpu or cpu_info()) else "float32"


def resolve(preset: str = "default", overrides: dict | None = None) -> Config:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    values: dict = {"preset": preset, **PRESETS[preset]}
    known = {f.name: f for f in fields(Config)}
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in known:
            raise ConfigError(f"unknown setting '{key}'; known settings: {', '.join(sorted(known))}")
        values[key] = _convert(key, raw, known[key].type)
    if "precision" in values:
        values["precision"] = values["precision"].strip().lower()  # "BFloat16" is bfloat16
        if values["precision"] == "auto":
            values["precision"] = fast_precision()  # a run records the precision it trained with, never "auto"
    config = Config(**values)
    # one spelling per model list ("cnn, cnn_pool" is "cnn,cnn_pool"), so resuming does not hang on spaces
    config = dataclasses.replace(config, model=",".join(config.model_names()))
    validate(config)
    return config


def from_dict(data: dict) -> Config:
    """Rebuild a Config saved as JSON (config.json of a run)."""
    known = {f.name: f for f in fields(Config)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"saved config has unknown setting(s) {sorted(unknown)}; was it written by a newer version?")
    return Config(**{key: _convert(key, value, known[key].type) for key, value in data.items()})


def _convert(key: str, raw, annotation):
    target = _resolve_type(annotation)
    if raw is None:
        return None
    try:
        if target is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if target is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            if isinstance(raw, bool):
                raise ValueError
            return int(str(raw).strip()) if not isinstance(raw, (int, float)) else int(raw)
        if target is float:
            return float(raw)
        if target is str:
            return str(raw)
        if target is tuple:
            items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).replace(" ", "").split(",") if s]
            if not items:
                raise ValueError
            return tuple(int(item) for item in items)
    except (TypeError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a number", tuple: "integers separated by commas"}
        raise ConfigError(f"{key}={raw!r} is not {expected.get(target, target.__name__)}") from None
    raise ConfigError(f"setting '{key}' has an unsupported type {annotation}")


def _resolve_type(annotation) -> type:
    hints = {"int": int, "float": float, "str": str, "bool": bool}
    if isinstance(annotation, str):
        annotation = annotation.removesuffix(" | None")
        if annotation in hints:
            return hints[annotation]
        if annotation.startswith("tuple"):
            return tuple
        raise ConfigError(f"unsupported annotation {annotation}")
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _resolve_type(inner[0])
    return origin or annotation


def validate(config: Config) -> None:
    def fail(message: str) -> None:
        raise ConfigError(message)

    from digits import models  # the registry's names (Keras is imported only when a model is built)

    names = config.model_names()
    if len(set(names)) != len(names):
        fail(f"MODEL={config.model} names a model twice; name each architecture once (fold k trains the (k mod n)-th)")
    for name in names:
        if name not in models.MODELS:
            fail(
                f"MODEL={config.model}: unknown model '{name}'; choose one of: {', '.join(sorted(models.MODELS))}, "
                f"or several separated by commas (fold k trains the (k mod n)-th)"
            )
    if config.folds < 2:
        fail(f"FOLDS={config.folds}: k-fold training needs at least 2 folds (5 is the usual choice)")
    if len(names) > config.folds:
        fail(
            f"MODEL={config.model} names {len(names)} models but FOLDS={config.folds}: fold k trains the "
            f"(k mod {len(names)})-th model, so some would never be trained. Use at least {len(names)} folds."
        )
    if config.epochs < 1:
        fail(f"EPOCHS={config.epochs}: train for at least 1 epoch")
    if config.precision not in models.PRECISIONS:
        fail(
            f"PRECISION={config.precision}: choose one of {', '.join(models.PRECISIONS)}, or auto (bfloat16 on CPUs with "
            f"AMX or AVX512-BF16, float32 elsewhere)"
        )
    if config.batch < 1:
        fail(f"BATCH={config.batch}: the batch size must be at least 1 (128 is the default)")
    if not 0.0 <= config.holdout < 0.5:
        fail(f"HOLDOUT={config.holdout}: the holdout is a fraction of train.csv in [0, 0.5), e.g. 0.1")
    if config.holdout_seed is not None:
        if config.holdout == 0:
            fail(
                f"HOLDOUT_SEED={config.holdout_seed} chooses the holdout rows, but HOLDOUT is 0 (no holdout): give "
                f"HOLDOUT=0.1 too, or drop HOLDOUT_SEED"
            )
        if not 0 <= config.holdout_seed < 2**32:
            fail(f"HOLDOUT_SEED={config.holdout_seed} must be a whole number from 0 to 4294967295, e.g. 42")
    if config.learning_rate <= 0:
        fail(f"learning_rate={config.learning_rate} must be positive")
    if config.warmup_epochs < 0 or config.warmup_epochs > config.epochs:
        fail(f"warmup_epochs={config.warmup_epochs} must be between 0 and EPOCHS={config.epochs}")
    if not 0.0 <= config.label_smoothing < 1.0:
        fail(f"label_smoothing={config.label_smoothing} must be in [0, 1)")
    if not 0.0 <= config.weight_decay * config.learning_rate < 0.01:
        fail(
            f"weight_decay={config.weight_decay} must be at least 0, and small enough that a step shrinks a weight by "
            f"less than 1% (learning_rate x weight_decay < 0.01; 0.05 shrinks it by 0.01% at learning_rate 2e-3)"
        )
    if not 0.0 <= config.dropout_scale <= 2.0:
        fail(
            f"DROPOUT={config.dropout_scale} (dropout_scale) must be in [0, 2]: it multiplies the model's dropout "
            f"rates (1 keeps them, 0 turns dropout off)"
        )
    if config.pseudo is not None and not config.pseudo.strip():
        fail("PSEUDO is empty: give the name of a finished run whose test predictions become pseudo-labels")
    if not 0.0 < config.pseudo_confidence <= 1.0:
        fail(
            f"pseudo_confidence={config.pseudo_confidence} must be in (0, 1]: a test digit becomes a "
            f"pseudo-label when the teacher's probability for its digit is at least this (0.99 is the default)"
        )
    for name in ("rotation", "zoom", "shift", "elastic"):
        if getattr(config, name) < 0:
            fail(f"{name}={getattr(config, name)} must not be negative")
    if config.elastic_sigma <= 0:
        fail(f"elastic_sigma={config.elastic_sigma} must be positive: the smoothing of the elastic field in pixels (4)")
    if config.only is not None:
        outside = [fold for fold in config.only if not 0 <= fold < config.folds]
        if outside:
            fail(
                f"ONLY={','.join(map(str, config.only))}: fold(s) {outside} do not exist; "
                f"with FOLDS={config.folds} the folds are 0..{config.folds - 1}"
            )
        if len(set(config.only)) != len(config.only):
            fail(f"ONLY={','.join(map(str, config.only))} names a fold twice")
