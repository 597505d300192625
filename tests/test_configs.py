import importlib
import pathlib

import jax
import pytest

from fcn_jax import config_checks
from tests.helpers import tiny_config

CONFIGS = sorted(p.stem for p in pathlib.Path("configs").glob("*.py") if p.stem != "__init__")


def test_every_config_file_is_listed():
    assert {"default", "quickstart", "fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name, synthetic_data_dir, tmp_path):
    config = importlib.import_module(f"configs.{name}").get_config()
    # The reference batch is 1 image; the test machine simulates 4 devices.
    config.batch_size = jax.device_count()  # eval_batch_size: None or a multiple of it
    config.dataset.data_dir = synthetic_data_dir
    if config.dataset.name == "segmentation_folder":
        config.dataset.manual_dir = str(tmp_path)  # the check asks for an existing folder
    config_checks.validate_config(config)
    assert config.model in ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")


@pytest.mark.parametrize(
    "name, lr, init",
    [("fcn32s", 1e-10, "vgg16"), ("fcn16s", 1e-12, "stage"), ("fcn8s", 1e-14, "stage"),
     ("fcn8s_atonce", 1e-10, "vgg16")],
)  # fmt: skip
def test_reference_recipes(name, lr, init):
    # docs/reference.md §4.1.
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.model == name and config.init.kind == init
    assert config.optimizer.learning_rate == lr and config.optimizer.momentum == 0.99
    assert config.optimizer.weight_decay == 5e-4 and config.optimizer.bias_lr_multiplier == 2
    assert config.loss_reduction == "sum" and not config.learnable_upsampling
    assert config.dataset.name == "voc_segmentation/sbd"
    assert config.dataset.eval_split == "seg11valid"


@pytest.mark.parametrize("name", ["simple_fcn8s", "quickstart_simple"])
def test_simple_geometry_recipes(name):
    # Issue #14: the course-notes geometry starts partly from scratch.
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.model_geometry == "simple" and config.model == "fcn8s"
    assert config.loss_reduction == "mean" and config.batch_size > 1 and config.dataset.augment
    assert all(side % 32 == 0 for side in config.dataset.canvas_size)


def test_model_geometry_is_validated():
    config = importlib.import_module("configs.fcn8s_atonce").get_config()
    config.model_geometry = "simple"
    with pytest.raises(ValueError, match="the simple geometry has"):
        config_checks.validate_config(config)
    config.model_geometry = "course"
    with pytest.raises(ValueError, match="model_geometry='course'"):
        config_checks.validate_config(config)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"dataset.preprocessing": "bgr"}, "preprocessing"),
        ({"dataset.canvas_size": (0, 64)}, "canvas_size"),
        ({"batch_size": 6}, "batch_size"),  # 4 simulated devices
        ({"dataset.min_scale": 2.0}, "min_scale"),
    ],
)
def test_bad_data_config_names_the_field(synthetic_data_dir, overrides, field):
    with pytest.raises(ValueError, match=field):
        config_checks.validate_data_config(tiny_config(synthetic_data_dir, **overrides))


@pytest.mark.parametrize(
    "batch, explicit, want", [(1, None, 4), (4, None, 4), (5, None, 8), (1, 12, 12)]
)
def test_eval_batch_defaults_to_the_train_batch_rounded_to_the_devices(batch, explicit, want):
    config = tiny_config("unused", batch_size=batch, eval_batch_size=explicit)
    assert jax.device_count() == 4  # tests/conftest.py
    assert config_checks.eval_batch_size(config) == want
