import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from fcn_jax import input_pipeline, models, steps
from tests.helpers import tiny_config


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


class _TinyNet(nn.Module):
    """No dropout, so micro-batched and whole-batch gradients must agree exactly."""

    @nn.compact
    def __call__(self, images, sizes=None, train=False):
        del sizes, train
        return nn.Conv(3, (3, 3))(images)


def test_gradient_accumulation_equals_one_big_batch(synthetic_data_dir):
    config = tiny_config(synthetic_data_dir, loss_reduction="sum")
    model = _TinyNet()
    variables = jax.device_get(model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3))))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8),
        "label": rng.integers(0, 3, size=(4, 8, 8)).astype(np.int32),
        "size": np.full((4, 2), 8, np.int32),
    }
    results = []
    for accum in (1, 2, 4):
        state, tx = steps.create_train_state(config, variables, jax.random.PRNGKey(1))
        step = jax.jit(
            lambda s, b, tx=tx, accum=accum: steps.train_step(
                s,
                b,
                model=model,
                tx=tx,
                reduction="sum",
                grad_accum_steps=accum,
                preprocessing_name="caffe",
            )
        )
        state, out = step(state, batch)
        results.append((jax.device_get(state.params), float(out["loss"])))
    for params, loss in results[1:]:
        np.testing.assert_allclose(loss, results[0][1], rtol=1e-5)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), params, results[0][0]
        )
