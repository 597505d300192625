"""One check of a whole config before anything compiles: `validate_config`."""

import jax
import ml_collections

from fcn_jax import input_pipeline, losses, models, optim, steps

INIT_KINDS = ("random", "vgg16", "pytorch_fcn", "stage")
_INTERVALS = ("num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every config field before anything compiles.

    Raises:
      ValueError: naming the first bad field.
    """
    if config.model not in models.MODELS:
        raise ValueError(f"config.model={config.model!r}: use one of {sorted(models.MODELS)}")
    models.get_model(config.model, 1, config.model_geometry)  # ValueError names the problem
    if config.compute_dtype not in steps.DTYPES:
        raise ValueError(
            f"config.compute_dtype={config.compute_dtype!r}: use one of {list(steps.DTYPES)}"
        )
    if config.init.kind not in INIT_KINDS:
        raise ValueError(f"config.init.kind={config.init.kind!r}: use one of {INIT_KINDS}")
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
    input_pipeline.validate_config(config)
