"""The train and eval steps, jitted data-parallel over a device mesh, and their state.

Parameters and optimiser state are replicated over a one-axis `Mesh` ('data'); batches are
sharded along it; the steps are written as single-device code and `jax.jit` inserts the
reductions. Global batches are assembled from each process's share with
`jax.make_array_from_process_local_data`, so the same code runs on one CPU, a GPU, a TPU pod
slice, or several hosts.

This module needs only JAX, Flax and Optax (no TensorFlow): a loop with any data loader can
use it; `fcn_jax.train` is ours, with the tf.data pipeline, checkpoints and writers.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fcn_jax import losses, metrics, models, optim, preprocessing

DATA_AXIS = "data"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position (which is `step`)."""

    step: jax.Array
    params: Any
    frozen: Any  # variables the optimiser never sees (the bilinear upsampling kernels)
    opt_state: Any
    rng: jax.Array

    def variables(self) -> dict:
        """The model's variables for `apply`."""
        return {"params": self.params, **self.frozen}


# ---------------------------------------------------------------------------- state


def create_model(
    config: ml_collections.ConfigDict,
    num_classes: int,
    platform: str | Sequence[str] | None = None,
) -> models.FCNModel:
    """The FCN of `config.model` in `config.model_geometry`, with the config's options.

    Args:
      config: reads `model`, `model_geometry`, `width`, `compute_dtype`,
        `learnable_upsampling` and `fast_paths`.
      num_classes: the number of output classes.
      platform: where the model will run (`fcn_jax.models.get_model`); None: this process's
        backend.
    """
    return models.get_model(
        config.model,
        num_classes,
        config.model_geometry,
        fast_paths=config.fast_paths,
        platform=platform,
        width=config.width,
        dtype=DTYPES[config.compute_dtype],
        learnable_upsampling=config.learnable_upsampling,
    )


def create_train_state(
    config: ml_collections.ConfigDict, variables: dict, rng: jax.Array
) -> tuple[TrainState, optax.GradientTransformation]:
    """The initial train state and the optimiser for `variables`."""
    params = variables["params"]
    frozen = {k: v for k, v in variables.items() if k != "params"}
    tx = optim.create_optimizer(config, params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        # One compiled computation. Run eagerly, optax's init dispatches an operation per
        # parameter, each compiled and cached by JAX for the life of the process: the
        # course-notes FCN-8s train step peaked 0.02-0.04 GiB higher (docs/benchmarks.md).
        opt_state=jax.jit(tx.init)(params),
        rng=rng,
    )
    return state, tx


# ---------------------------------------------------------------------------- steps


def model_input(batch: dict, preprocessing_name: str) -> jax.Array:
    """The network's float input from a batch's uint8 images, normalised on the device."""
    return preprocessing.normalize(batch["image"], preprocessing_name)


def loss_fn(
    params: Any,
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    model: models.FCNModel,
    reduction: str,
    preprocessing_name: str,
) -> tuple[jax.Array, jax.Array]:
    """Loss of one (micro-)batch and its number of valid pixels.

    Each example is computed as its image alone at its own size (`batch['size']`), so with
    the summed reduction the loss is the reference's per-image loss (docs/reference.md §4.2).
    """
    logits = model.apply(
        {"params": params, **state.frozen},
        model_input(batch, preprocessing_name),
        sizes=batch["size"],
        train=True,
        rngs={"dropout": rng},
    )
    return losses.pixel_cross_entropy(logits, batch["label"], reduction=reduction)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model: models.FCNModel,
    tx: optax.GradientTransformation,
    reduction: str,
    grad_accum_steps: int,
    preprocessing_name: str,
) -> tuple[TrainState, dict]:
    """One optimiser update from a batch, accumulated over `grad_accum_steps` micro-batches."""
    rng = jax.random.fold_in(state.rng, state.step)
    loss = functools.partial(
        loss_fn, model=model, reduction=reduction, preprocessing_name=preprocessing_name
    )
    grad_fn = jax.value_and_grad(loss, has_aux=True)
    if grad_accum_steps == 1:
        (loss, valid), grads = grad_fn(state.params, state, batch, rng)
    else:
        loss, valid, grads = _accumulate(grad_fn, state, batch, rng, reduction, grad_accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
    )
    return new_state, {"loss": loss, "valid_pixels": valid}


def _accumulate(
    grad_fn: Callable,
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    reduction: str,
    num_micro: int,
) -> tuple[jax.Array, jax.Array, Any]:
    """(loss, valid pixels, gradients) of `batch` from `num_micro` micro-batches, as one batch.

    Micro-batch i takes examples i, i + k, i + 2k...: every device holds a share of each.
    'sum' divides by the images, equally many in each micro-batch, so the big batch's value
    is the micro-batches' average. 'mean' divides by the valid pixels, which differ between
    micro-batches (void, canvas padding): each micro-batch's mean is weighted by its count,
    which sums the micro-batches' sums, and the total is divided once by all valid pixels.
    """
    micro = jax.tree.map(lambda x: x.reshape(-1, num_micro, *x.shape[1:]).swapaxes(0, 1), batch)

    def add(carry, inputs):
        index, micro_batch = inputs
        (loss, valid), grads = grad_fn(
            state.params, state, micro_batch, jax.random.fold_in(rng, index)
        )
        weight = valid.astype(jnp.float32) if reduction == "mean" else jnp.ones(())
        weighted = jax.tree.map(lambda x: weight * x, (loss, grads))
        return jax.tree.map(jnp.add, carry, (weighted, valid, weight)), None

    zeros = (
        (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params)),
        jnp.zeros((), jnp.int32),
        jnp.zeros(()),
    )
    ((loss, grads), valid, total_weight), _ = jax.lax.scan(
        add, zeros, (jnp.arange(num_micro), micro)
    )
    loss, grads = jax.tree.map(lambda x: x / jnp.maximum(total_weight, 1.0), (loss, grads))
    return loss, valid, grads


def eval_step(
    variables: dict, batch: dict, *, model: models.FCNModel, preprocessing_name: str
) -> tuple[Any, jax.Array]:
    """The confusion matrix of one batch (padding examples excluded) and the predictions.

    Each example is computed as its image alone at its own size (`batch['size']`): the
    reference's per-image evaluation (docs/reference.md §5.1) on a static shape.
    """
    logits = model.apply(
        variables, model_input(batch, preprocessing_name), sizes=batch["size"], train=False
    )
    metric = metrics.ConfusionMatrix.from_model_output(
        logits=logits, labels=batch["label"], example_mask=batch["mask"]
    )
    return metric, jnp.argmax(logits, -1).astype(jnp.uint8)


# ---------------------------------------------------------------------------- sharding


def make_mesh() -> Mesh:
    """A one-axis mesh over every device of every process."""
    return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of values every device holds whole (parameters, optimiser state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: split along the leading (example) axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the global batch from this process's share."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def jit_train_step(
    config: ml_collections.ConfigDict,
    model: models.FCNModel,
    tx: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The train step jitted over `mesh`: state replicated and donated, batch sharded."""
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        reduction=config.loss_reduction,
        grad_accum_steps=config.grad_accum_steps,
        preprocessing_name=config.dataset.preprocessing,
    )
    return jax.jit(
        step,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(model: models.FCNModel, mesh: Mesh, preprocessing_name: str) -> Callable:
    """The eval step jitted over `mesh`, for images normalised as `preprocessing_name` says."""
    return jax.jit(
        functools.partial(eval_step, model=model, preprocessing_name=preprocessing_name),
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), batch_sharding(mesh)),
    )
