import flax
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from fcn_jax import input_pipeline, losses, models, steps
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("fewer_xla_optimizations")


@pytest.mark.slow
def test_sharded_step_equals_single_device_step(synthetic_data_dir):
    config = tiny_config(synthetic_data_dir)
    model = steps.create_model(config, 5)
    # Host copies: each run's donated device state must not alias the other's inputs.
    variables = jax.device_get(models.init_variables(model, jax.random.PRNGKey(0)))
    batch = next(input_pipeline.create_train_iterator(config))
    results = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = Mesh(np.array(devices), (steps.DATA_AXIS,))
        state, tx = steps.create_train_state(config, variables, jax.random.PRNGKey(1))
        state = jax.device_put(state, steps.replicated(mesh))
        step = steps.jit_train_step(config, model, tx, mesh)
        for _ in range(2):
            state, out = step(state, steps.global_batch(mesh, batch))
        results.append((jax.device_get(state.params), float(out["loss"])))
    (sharded, loss_a), (single, loss_b) = results
    assert len(jax.devices()) == 4
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), sharded, single
    )


def _random_variables(model, key) -> dict:
    """Variables of `model` with random biases and score layers (the init zeroes them)."""
    variables = jax.device_get(models.init_variables(model, key))
    flat = flax.traverse_util.flatten_dict(variables["params"])
    keys = jax.random.split(key, len(flat))
    for k, (path, value) in zip(keys, sorted(flat.items()), strict=True):
        if path[-1] == "bias" or path[0].startswith("score"):
            flat[path] = np.asarray(0.1 * jax.random.normal(k, value.shape))
    return {**variables, "params": flax.traverse_util.unflatten_dict(flat)}


def _one_step(config, model, variables, batch) -> tuple[dict, dict, dict]:
    """(params, frozen variables, step outputs) after one jitted train step from `variables`."""
    mesh = steps.make_mesh()
    state, tx = steps.create_train_state(config, variables, jax.random.PRNGKey(1))
    step = steps.jit_train_step(config, model, tx, mesh)
    state, out = step(
        jax.device_put(state, steps.replicated(mesh)), steps.global_batch(mesh, batch)
    )
    return jax.device_get((state.params, state.frozen, out))


@pytest.mark.slow
def test_one_sgd_step_updates_each_parameter_group_as_the_reference(synthetic_data_dir):
    # Plain SGD with lr 1 gives the gradient g itself; the reference groups must then give
    # weights w - lr (g + wd w), biases b - m lr g (no decay), and leave the frozen
    # upsampling kernels alone (§4.1); momentum has no say in a first step (its trace starts
    # at zero). Dropout masks are the same in both runs (same rng, same step).
    plain = tiny_config(
        synthetic_data_dir,
        model="fcn16s",
        **{
            "optimizer.name": "sgd",
            "optimizer.learning_rate": 1.0,
            "optimizer.momentum": 0.0,
            "optimizer.weight_decay": 0.0,
            "optimizer.bias_lr_multiplier": 1.0,
        },
    )
    groups = tiny_config(
        synthetic_data_dir,
        model="fcn16s",
        **{
            "optimizer.name": "sgd",
            "optimizer.learning_rate": 0.01,
            "optimizer.momentum": 0.9,
            "optimizer.weight_decay": 0.1,
            "optimizer.bias_lr_multiplier": 2.0,
        },
    )
    model = steps.create_model(groups, 5)
    variables = _random_variables(model, jax.random.PRNGKey(0))
    batch = next(input_pipeline.create_train_iterator(groups))
    plain_params, _, _ = _one_step(plain, model, variables, batch)
    params, frozen, _ = _one_step(groups, model, variables, batch)

    opt = groups.optimizer
    before = flax.traverse_util.flatten_dict(variables["params"])
    grads = {k: before[k] - v for k, v in flax.traverse_util.flatten_dict(plain_params).items()}
    after = flax.traverse_util.flatten_dict(params)
    assert set(after) == set(before) and {k[-1] for k in after} == {"kernel", "bias"}
    for path, value in before.items():
        if path[-1] == "bias":
            want = value - opt.bias_lr_multiplier * opt.learning_rate * grads[path]
        else:
            want = value - opt.learning_rate * (grads[path] + opt.weight_decay * value)
        np.testing.assert_allclose(after[path], want, rtol=1e-5, atol=1e-6, err_msg=str(path))
        assert not np.allclose(after[path], value, rtol=0, atol=1e-7), path
    assert set(frozen["upsampling"]) == {"upscore2", "upscore16"}
    jax.tree.map(
        np.testing.assert_array_equal,
        frozen,
        {k: v for k, v in variables.items() if k != "params"},
    )


class _WithoutDropout:
    """The FCN run as in evaluation (no dropout), so micro-batches can match a big batch."""

    def __init__(self, model: models.FCNModel):
        self.model = model

    def apply(self, variables, *args, **kwargs):
        kwargs.update(train=False, rngs=None)
        return self.model.apply(variables, *args, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_accumulation_equals_one_big_batch(synthetic_data_dir, reduction):
    # Real batches of the pipeline: void boundaries and canvas padding give each image its
    # own number of valid pixels, which 'mean' must weight by.
    config = tiny_config(
        synthetic_data_dir,
        model="fcn32s",
        loss_reduction=reduction,
        **{"optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0},
    )
    config.optimizer.learning_rate = 1.0 if reduction == "mean" else 1e-3
    model = steps.create_model(config, 5)
    variables = _random_variables(model, jax.random.PRNGKey(0))
    batch = next(input_pipeline.create_train_iterator(config))
    valid = np.sum(batch["label"] != losses.VOID, axis=(1, 2))
    assert len(set(valid.tolist())) == len(valid), valid  # every image its own count

    # One big batch, then four micro-batches of one image each: the same update.
    whole_params, _, whole = _one_step(config, _WithoutDropout(model), variables, batch)
    config.grad_accum_steps = 4
    params, _, micro = _one_step(config, _WithoutDropout(model), variables, batch)
    assert int(whole["valid_pixels"]) == int(micro["valid_pixels"]) == valid.sum()
    np.testing.assert_allclose(micro["loss"], whole["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b, w: np.testing.assert_allclose(
            a - w, b - w, rtol=1e-3, atol=1e-3 * np.abs(b - w).max()
        ),
        params,
        whole_params,
        variables["params"],
    )
