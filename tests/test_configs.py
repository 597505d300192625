import importlib
import pathlib

import jax
import pytest

from fcn_jax import config_checks

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
    with pytest.raises(ValueError, match="at-once is reference-only"):
        config_checks.validate_config(config)
    config.model_geometry = "course"
    with pytest.raises(ValueError, match="unknown geometry"):
        config_checks.validate_config(config)
