"""Fold assignment and configuration: pure functions, no training."""

from __future__ import annotations

import numpy as np
import pytest

from digits import config as config_lib
from digits import folds
from digits.config import ConfigError


@pytest.fixture(scope="module")
def labels(sample_train):
    return sample_train.labels


@pytest.mark.parametrize("k", [2, 5, 10])
def test_folds_are_disjoint_cover_every_row_and_are_stratified(labels, k):
    fold_ids = folds.assign_folds(labels, k=k, seed=7)
    assert fold_ids.shape == labels.shape
    assert set(fold_ids.tolist()) == set(range(k))  # every row in exactly one fold, no holdout
    for digit in range(10):
        per_fold = np.bincount(fold_ids[labels == digit], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1, (digit, per_fold)


def test_folds_are_seeded(labels):
    assert np.array_equal(folds.assign_folds(labels, 5, seed=1), folds.assign_folds(labels, 5, seed=1))
    assert not np.array_equal(folds.assign_folds(labels, 5, seed=1), folds.assign_folds(labels, 5, seed=2))


def test_holdout_is_stratified_and_outside_every_fold(labels):
    fold_ids = folds.assign_folds(labels, 5, seed=3, holdout=0.1)
    holdout = fold_ids == folds.HOLDOUT_FOLD
    assert abs(holdout.sum() - 0.1 * len(labels)) <= 1
    expected = np.bincount(labels, minlength=10) * 0.1
    assert np.all(np.abs(np.bincount(labels[holdout], minlength=10) - expected) <= 1.5)
    assert set(fold_ids[~holdout].tolist()) == set(range(5))


def test_holdout_seed_picks_the_holdout_rows_and_seed_the_folds(labels):
    base = folds.assign_folds(labels, 5, seed=42, holdout=0.1)
    other = folds.assign_folds(labels, 5, seed=7, holdout=0.1, holdout_seed=42)
    held_out = base == folds.HOLDOUT_FOLD
    assert np.array_equal(other == folds.HOLDOUT_FOLD, held_out)  # the same rows held out
    assert np.array_equal(folds.assign_folds(labels, 5, seed=42, holdout=0.1, holdout_seed=42), base)
    # the other rows are split by SEED: as seed 7 splits them, not as seed 42 does
    assert not np.array_equal(other[~held_out], base[~held_out])
    alone = folds.assign_folds(labels, 5, seed=7, holdout=0.1)
    assert not np.array_equal(alone == folds.HOLDOUT_FOLD, held_out)  # without HOLDOUT_SEED, seed 7's own holdout
    assert set(other[~held_out].tolist()) == set(range(5))
    for digit in range(10):
        per_fold = np.bincount(other[~held_out & (labels == digit)], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (digit, per_fold)


def test_holdout_seed_is_part_of_the_run_and_defaults_to_seed():
    config = config_lib.resolve("default", {"seed": "7", "holdout": "0.1", "holdout_seed": "42"})
    assert (config.seed, config.holdout_seed, config.holdout_rows_seed()) == (7, 42, 42)
    assert config_lib.resolve("default", {"seed": "7", "holdout": "0.1"}).holdout_rows_seed() == 7
    assert config.identity() != config_lib.resolve("default", {"seed": "7", "holdout": "0.1"}).identity()
    # HOLDOUT_SEED equal to SEED is the run without it (resuming with it is no change)
    same = config_lib.resolve("default", {"seed": "7", "holdout": "0.1", "holdout_seed": "7"})
    assert same.identity() == config_lib.resolve("default", {"seed": "7", "holdout": "0.1"}).identity()
    # a config.json written before HOLDOUT_SEED existed: its holdout was SEED's
    old = {key: value for key, value in config_lib.resolve("default", {"seed": "3"}).to_dict().items()}
    del old["holdout_seed"]
    assert (config_lib.from_dict(old).holdout_seed, config_lib.from_dict(old).holdout_rows_seed()) == (None, 3)


def test_folds_larger_than_smallest_class_is_refused():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ConfigError, match=r"FOLDS=4 is larger than the smallest class \(3 rows\)"):
        folds.assign_folds(labels, k=4, seed=0)


def test_folds_csv_round_trip_and_mismatch(tmp_path, labels):
    fold_ids = folds.assign_folds(labels, 3, seed=0)
    path = tmp_path / "folds.csv"
    folds.write_folds(path, labels, fold_ids)
    assert path.read_text().splitlines()[0] == "row_id,label,fold"
    assert np.array_equal(folds.read_folds(path, labels), fold_ids)
    with pytest.raises(ConfigError, match="different train.csv"):
        folds.read_folds(path, labels[:-1])


def test_presets_resolve_and_overrides_are_typed():
    config = config_lib.resolve("quick", {"epochs": "7", "only": "0,2", "holdout": "0.1", "augment": "false"})
    assert (config.preset, config.epochs, config.only, config.holdout, config.augment) == (
        "quick",
        7,
        (0, 2),
        0.1,
        False,
    )
    assert config.fold_ids() == [0, 2]
    assert config_lib.resolve("default").folds == 5
    # every preset trains without dropout (the holdouts' choice); max is the default's recipe on 10 folds
    assert [config_lib.resolve(preset).dropout_scale for preset in ("quick", "default", "max")] == [0.0, 0.0, 0.0]
    assert [(config_lib.resolve(p).folds, config_lib.resolve(p).epochs) for p in ("default", "max")] == [
        (5, 24),
        (10, 24),
    ]
    assert config_lib.resolve("default", {"dropout_scale": "1"}).dropout_scale == 1.0  # DROPOUT=1 brings it back
    # ONLY does not change what a run is: folds of one run may be trained by different processes
    assert config.identity() == config_lib.resolve("quick", {"epochs": 7, "holdout": 0.1, "augment": False}).identity()


def test_mixed_models_take_the_folds_in_turn():
    config = config_lib.resolve("default", {"model": "cnn, cnn_pool", "folds": "5"})
    assert config.model == "cnn,cnn_pool"  # one spelling: a resume does not hang on spaces
    assert config.identity() == config_lib.resolve("default", {"model": "cnn,cnn_pool"}).identity()
    assert config.model_names() == ["cnn", "cnn_pool"]
    assert [config.fold_model(k) for k in range(5)] == ["cnn", "cnn_pool", "cnn", "cnn_pool", "cnn"]
    assert [config_lib.resolve("default").fold_model(k) for k in range(5)] == ["cnn"] * 5


def test_config_round_trips_through_json():
    config = config_lib.resolve("max", {"only": "1"})
    assert config_lib.from_dict(config.to_dict()) == config
    student = config_lib.resolve("default", {"pseudo": "teacher", "pseudo_confidence": "0.999"})
    assert (student.pseudo, student.pseudo_confidence) == ("teacher", 0.999)
    assert config_lib.from_dict(student.to_dict()) == student
    assert student.identity() != config_lib.resolve("default", {"pseudo": "other"}).identity()
    # a config.json written before dropout_scale existed keeps the dropout it trained with
    old = {key: value for key, value in config_lib.resolve("quick").to_dict().items() if key != "dropout_scale"}
    assert config_lib.from_dict(old).dropout_scale == 1.0
    # and one written before precision existed trained in float32
    old = {key: value for key, value in config_lib.resolve("quick").to_dict().items() if key != "precision"}
    assert config_lib.from_dict(old).precision == "float32"


def test_precision_auto_is_bfloat16_only_on_a_cpu_with_native_bfloat16(tmp_path):
    from digits import bench

    native = bool({"amx_bf16", "avx512_bf16"} & set(bench.cpu_info()["flags"] or []))
    auto = config_lib.resolve("default", {"precision": "auto"})
    assert auto.precision == ("bfloat16" if native else "float32") == config_lib.fast_precision()
    for flags in (["avx2", "avx512f", "avx512_bf16", "amx_bf16"], ["avx2", "avx512f", "avx512_bf16"]):
        assert config_lib.fast_precision({"model": "Xeon or EPYC", "flags": flags}) == "bfloat16"
    for flags in (["avx2", "avx512f"], ["avx2"], None):  # emulated, or unknown
        assert config_lib.fast_precision({"model": "EPYC", "flags": flags}) == "float32"
    assert auto.to_dict()["precision"] in ("float32", "bfloat16")  # what the run records: never "auto"
    for preset in config_lib.PRESETS:  # every preset trains in the fast precision for this machine
        assert config_lib.resolve(preset).precision == config_lib.fast_precision()
    assert config_lib.Config().precision == "float32"  # what a config.json without the field trained in
    assert config_lib.resolve("default", {"precision": " BFloat16 "}).precision == "bfloat16"
    bfloat16 = config_lib.resolve("default", {"precision": "bfloat16"})
    assert bfloat16.identity() != config_lib.resolve("default", {"precision": "float32"}).identity()
    gpus = tmp_path / "gpus"  # as /proc/driver/nvidia/gpus lists an installed GPU
    (gpus / "0000:00:1e.0").mkdir(parents=True)
    xeon = {"model": "Xeon", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]}
    assert config_lib.fast_precision(xeon, gpus=gpus) == "float32"
    assert config_lib.fast_precision(xeon, gpus=tmp_path / "none") == "bfloat16"


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("fast", {}, "unknown preset 'fast'; choose one of: quick, default, max"),
        ("default", {"epoch": "3"}, "unknown setting 'epoch'"),
        ("default", {"model": "resnet999"}, "unknown model 'resnet999'; choose one of"),
        ("default", {"model": "cnn,resnet9"}, "MODEL=cnn,resnet9: unknown model 'resnet9'; choose one of"),
        ("default", {"model": "cnn,"}, "MODEL=cnn,: unknown model ''"),
        ("default", {"model": "cnn,cnn_pool,tiny", "folds": "2"}, "names 3 models but FOLDS=2"),
        ("default", {"model": "cnn,cnn"}, "MODEL=cnn,cnn names a model twice"),
        ("default", {"elastic": "-1"}, "elastic=-1.0 must not be negative"),
        ("default", {"elastic_sigma": "0"}, "elastic_sigma=0.0 must be positive"),
        ("default", {"dropout_scale": "-0.5"}, r"DROPOUT=-0.5 \(dropout_scale\) must be in \[0, 2\]: it multiplies"),
        ("default", {"dropout_scale": "3"}, r"DROPOUT=3.0 \(dropout_scale\) must be in \[0, 2\]"),
        ("default", {"weight_decay": "-0.1"}, r"weight_decay=-0.1 must be at least 0, and small enough"),
        ("default", {"weight_decay": "5"}, r"weight_decay=5.0 .* \(learning_rate x weight_decay < 0.01"),
        ("default", {"folds": "1"}, "FOLDS=1: k-fold training needs at least 2 folds"),
        ("default", {"folds": "two"}, "folds='two' is not an integer"),
        ("default", {"epochs": "0"}, "EPOCHS=0: train for at least 1 epoch"),
        ("default", {"epochs": "2.5"}, "epochs='2.5' is not an integer"),
        ("default", {"only": "0,5"}, r"ONLY=0,5: fold\(s\) \[5\] do not exist; with FOLDS=5 the folds are 0..4"),
        ("default", {"only": "x"}, "only='x' is not integers separated by commas"),
        ("default", {"holdout": "-0.1"}, r"HOLDOUT=-0.1: the holdout is a fraction of train.csv in \[0, 0.5\)"),
        ("default", {"holdout_seed": "42"}, "HOLDOUT_SEED=42 chooses the holdout rows, but HOLDOUT is 0"),
        ("default", {"holdout": "0.1", "holdout_seed": "-1"}, "HOLDOUT_SEED=-1 must be a whole number from 0 to"),
        ("default", {"holdout": "0.1", "holdout_seed": "x"}, "holdout_seed='x' is not an integer"),
        ("default", {"batch": "0"}, "BATCH=0"),
        (
            "default",
            {"precision": "float16"},
            r"PRECISION=float16: choose one of float32, bfloat16, or auto \(bfloat16 on CPUs with AMX",
        ),
        ("default", {"augment": "maybe"}, "augment='maybe' is not true or false"),
        ("default", {"pseudo": " "}, "PSEUDO is empty: give the name of a finished run"),
        ("default", {"pseudo": "t", "pseudo_confidence": "0"}, r"pseudo_confidence=0.0 must be in \(0, 1\]"),
        ("default", {"pseudo_confidence": "high"}, "pseudo_confidence='high' is not a number"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(preset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.resolve(preset, overrides)
