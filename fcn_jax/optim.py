"""The optimiser: Optax SGD with the reference's per-parameter groups (§4.1, §4.3).

* weights (every convolution kernel): lr x 1, weight decay;
* biases: lr x `bias_lr_multiplier` (2 in the reference), no decay;
* frozen upsampling kernels are not in `params` at all (fcn_jax.models), so nothing touches
  them.

Caffe's SGD, v <- mu v + lr (g + wd w), w <- w - v, is `add_decayed_weights` followed by
`sgd(lr, momentum)` with a constant learning rate.
"""

import ml_collections
import optax
from flax import traverse_util

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")


def parameter_groups(params) -> dict:
    """Labels every parameter 'weight' or 'bias' by its leaf name."""
    flat = traverse_util.flatten_dict(params)
    labels = {path: "bias" if path[-1] == "bias" else "weight" for path in flat}
    return traverse_util.unflatten_dict(labels)


def learning_rate_schedule(config: ml_collections.ConfigDict, scale: float = 1.0):
    """The base learning rate times `scale`, constant or cosine-decayed over training."""
    opt = config.optimizer
    if opt.schedule == "constant":
        return optax.constant_schedule(opt.learning_rate * scale)
    return optax.warmup_cosine_decay_schedule(
        0.0, opt.learning_rate * scale, opt.warmup_steps, config.num_train_steps
    )


def _base(config: ml_collections.ConfigDict, scale: float) -> optax.GradientTransformation:
    opt = config.optimizer
    lr = learning_rate_schedule(config, scale)
    if opt.name == "sgd":
        return optax.sgd(lr, momentum=opt.momentum or None, nesterov=False)
    return optax.adam(lr)


def create_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
    """SGD or Adam with the weight/bias groups of the reference, for `params`."""
    opt = config.optimizer
    weights = optax.chain(optax.add_decayed_weights(opt.weight_decay), _base(config, 1.0))
    biases = _base(config, opt.bias_lr_multiplier)
    return optax.multi_transform({"weight": weights, "bias": biases}, parameter_groups(params))


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming a bad optimizer field."""
    opt = config.optimizer
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name={opt.name!r}: use one of {OPTIMIZERS}")
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: use one of {SCHEDULES}")
    if not opt.learning_rate > 0:
        raise ValueError(f"config.optimizer.learning_rate={opt.learning_rate} must be > 0")
    if opt.schedule == "cosine" and not 0 <= opt.warmup_steps < config.num_train_steps:
        raise ValueError(
            f"config.optimizer.warmup_steps={opt.warmup_steps} must be in "
            f"[0, num_train_steps={config.num_train_steps})"
        )
    if opt.weight_decay < 0 or not 0 <= opt.momentum < 1:
        raise ValueError("config.optimizer: need weight_decay >= 0 and 0 <= momentum < 1")
