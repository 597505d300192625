"""Checks of a whole config before anything is created or compiled.

`validate_config` checks every field and raises one ValueError naming the first bad one. It
needs JAX only (no TensorFlow, no dataset): the data fields are checked here too, and
`eval_batch_size` is the one place that derives the eval batch from them.
"""

import jax
import ml_collections

from fcn_jax import fast_paths, losses, models, optim, steps
from fcn_jax.preprocessing import PREPROCESSING

INIT_KINDS = ("random", "vgg16", "pytorch_fcn", "stage")
_INTERVALS = ("num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every config field before anything is created or compiled.

    Raises:
      ValueError: naming the first bad field.
    """
    geometry = config.model_geometry
    if geometry not in models.GEOMETRIES:
        raise ValueError(
            f"config.model_geometry={geometry!r}: use one of {tuple(models.GEOMETRIES)}"
        )
    if config.model not in models.GEOMETRIES[geometry]:
        raise ValueError(
            f"config.model={config.model!r}: the {geometry} geometry has "
            f"{sorted(models.GEOMETRIES[geometry])}"
        )
    if config.fast_paths not in fast_paths.OPTIONS:
        raise ValueError(
            f"config.fast_paths={config.fast_paths!r}: use one of {fast_paths.OPTIONS}"
        )
    if config.compute_dtype not in steps.DTYPES:
        raise ValueError(
            f"config.compute_dtype={config.compute_dtype!r}: use one of {list(steps.DTYPES)}"
        )
    if not config.width > 0:
        raise ValueError(f"config.width={config.width} must be > 0")
    _validate_init(config.init)
    if config.loss_reduction not in losses.REDUCTIONS:
        raise ValueError(
            f"config.loss_reduction={config.loss_reduction!r}: use {losses.REDUCTIONS}"
        )
    local_batch = config.batch_size // jax.process_count()
    if config.grad_accum_steps < 1 or local_batch % config.grad_accum_steps:
        raise ValueError(
            f"config.grad_accum_steps={config.grad_accum_steps} must divide the per-process "
            f"batch ({local_batch})"
        )
    for field in _INTERVALS:
        if config[field] < 1:
            raise ValueError(f"config.{field}={config[field]} must be >= 1")
    optim.validate_config(config)
    validate_data_config(config)


def _validate_init(init: ml_collections.ConfigDict) -> None:
    if init.kind not in INIT_KINDS:
        raise ValueError(f"config.init.kind={init.kind!r}: use one of {INIT_KINDS}")
    if init.kind == "stage" and init.source_model not in models.NAMES:
        raise ValueError(
            f"config.init.source_model={init.source_model!r}: use one of {models.NAMES}"
        )


def validate_data_config(config: ml_collections.ConfigDict) -> None:
    """Checks the data fields of `config`; raises ValueError naming the first bad field."""
    data = config.dataset
    if data.preprocessing not in PREPROCESSING:
        raise ValueError(
            f"config.dataset.preprocessing={data.preprocessing!r}: use one of {PREPROCESSING}"
        )
    canvas = tuple(data.canvas_size)
    if len(canvas) != 2 or not all(isinstance(s, int) and s > 0 for s in canvas):
        raise ValueError(f"config.dataset.canvas_size={canvas}: need two positive ints (H, W)")
    for field, value in (
        ("batch_size", config.batch_size),
        ("eval_batch_size", eval_batch_size(config)),
    ):
        if value < 1 or value % jax.device_count() or value % jax.process_count():
            raise ValueError(
                f"config.{field}={value} must be a positive multiple of the device count "
                f"({jax.device_count()}) and of the process count ({jax.process_count()})"
            )
    if not 0 < data.min_scale <= data.max_scale:
        raise ValueError(
            f"config.dataset.min_scale={data.min_scale}, max_scale={data.max_scale}: "
            "need 0 < min_scale <= max_scale"
        )
    if data.augment and data.max_scale > 1 and not data.random_crop:
        raise ValueError(
            f"config.dataset.max_scale={data.max_scale} with augment=True can scale an image "
            f"past the canvas {canvas} and stop training: set config.dataset.random_crop=True "
            "(crops each scaled image to the canvas) or max_scale <= 1"
        )
    if data.shuffle_buffer < 1:
        raise ValueError(f"config.dataset.shuffle_buffer={data.shuffle_buffer} must be >= 1")
    if "segmentation_folder" in (data.name, data.get("eval_name")):
        _validate_folder_fields(data)


def _validate_folder_fields(data: ml_collections.ConfigDict) -> None:
    """A user's folder (fcn_jax/datasets/segmentation_folder.py) needs its path.

    Whether the folder (or the data prepared from it) is there is checked when the dataset is
    opened (`segmentation_folder.validate_source`): that needs TensorFlow Datasets.
    """
    if not data.manual_dir:
        raise ValueError(
            "config.dataset.manual_dir is not set: segmentation_folder reads your folder of "
            "images and masks; pass --config.dataset.manual_dir=PATH (docs/own_data.md)."
        )
    if not 0 <= data.val_fraction < 1:
        raise ValueError(f"config.dataset.val_fraction={data.val_fraction} must be in [0, 1)")


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """The global eval batch size, from one place for the pipeline, validation and the loop.

    `config.eval_batch_size` if set; if None (the default), the train batch rounded up to a
    multiple of the device count, which is valid on any host.
    """
    if config.eval_batch_size is not None:
        return config.eval_batch_size
    return -(-config.batch_size // jax.device_count()) * jax.device_count()
