"""Tests for fcn_jax.restore: one loader of trained models, and its refusals."""

import pathlib

import jax
import numpy as np
import pytest

from fcn_jax import checkpoint, class_info, restore, steps
from tests.helpers import random_variables, tiny_config

PTH = pathlib.Path(__file__).parent / "testdata" / "parity" / "fcn8s_random.pth"


def _config(**overrides):
    return tiny_config("unused", **{"model": "fcn8s", "width": 1 / 64, **overrides})


def _save_best(workdir: pathlib.Path, variables: dict) -> None:
    with checkpoint.Checkpoints(str(workdir), max_to_keep=1) as saved:
        saved.save_best(3, variables, mean_iou=0.5)


def test_a_workdir_gives_its_best_checkpoint_for_the_config_model(tmp_path):
    model = steps.create_model(_config(), 5)
    variables = random_variables(model)
    _save_best(tmp_path, variables)
    restored_model, restored = restore.trained_model(_config(), str(tmp_path), 5)
    assert restored_model == model
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_pytorch_file_gives_the_same_variables_as_load_variables():
    model, variables = restore.trained_model(_config(), str(PTH), 5, platform="tpu")
    assert model.fast.names() == ()  # built for where it will run
    again = restore.load_variables(str(PTH), _config(), "fcn8s")
    assert jax.tree.structure(variables) == jax.tree.structure(again)


def test_a_checkpoint_of_another_model_is_refused_naming_the_variable(tmp_path):
    _save_best(tmp_path, random_variables(steps.create_model(_config(), 5)))
    with pytest.raises(ValueError, match=r"conv1_1/bias has shape \(1,\), .* expects \(2,\)"):
        restore.trained_model(_config(width=1 / 32), str(tmp_path), 5)
    with pytest.raises(ValueError, match=r"score_fr/bias has shape \(5,\)"):
        restore.trained_model(_config(), str(tmp_path), 7)


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*--weights"):
        restore.check_source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        restore.load_variables(str(tmp_path / "missing.pth"), _config())


def test_trained_run_checks_its_source_before_preparing_any_dataset(tmp_path):
    config = _config(**{"dataset.data_dir": str(tmp_path / "tfds")})
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        restore.trained_run(config, str(tmp_path / "mistyped"))
    assert not (tmp_path / "tfds").exists()


def test_trained_run_takes_the_classes_from_the_workdir_record(tmp_path):
    model = steps.create_model(_config(), 5)
    _save_best(tmp_path, random_variables(model))
    names = ("background", "a", "b", "c", "d")
    recorded = class_info.ClassInfo(names, [(i, i, i) for i in range(5)])
    class_info.save(recorded, str(tmp_path))
    config = _config(**{"dataset.data_dir": str(tmp_path / "tfds")})  # no dataset there
    _, _, classes = restore.trained_run(config, str(tmp_path))
    assert classes == recorded
