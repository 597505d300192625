import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import frame, models
from fcn_jax.models import reference
from tests.helpers import random_variables

pytestmark = pytest.mark.usefixtures("fewer_xla_optimizations")  # compiles dominate

VGG16_FRAMED = tuple(n for _, n, _ in models.VGG16_BLOCKS[: reference.FRAMED_BLOCKS])


@pytest.mark.slow
def test_every_image_size_up_to_2048_gets_a_plan_with_smaller_maps():
    # axis_plan raises if an edge could reach the core anywhere in blocks 1-3.
    for size in range(1, 2049):
        plan = frame.axis_plan(size, reference.CONV1_1_PADDING, VGG16_FRAMED)
        full_pool1 = -(-(size + 2 * reference.CONV1_1_PADDING - 2) // 2)
        assert plan.after_pool[1][1].size < full_pool1
        # Block 3's output gets back exactly the full pool3 extent (§2.5: ceil((H + 198) / 8)).
        assert plan.after_pool[3][1].size == -(-(size + 2 * reference.CONV1_1_PADDING - 2) // 8)
        # Planned once per size: tracing a model again does not plan again.
        assert frame.axis_plan(size, reference.CONV1_1_PADDING, VGG16_FRAMED) is plan


def test_resize_runs_drops_and_copies_run_rows_only():
    have = frame.AxisLayout(lead_edge=1, lead_run=4, core=3, trail_run=2, trail_edge=2)
    rows = np.array([9, 5, 5, 5, 5, 1, 2, 3, 7, 7, 8, 6], np.float32)
    x = jnp.asarray(rows).reshape(1, -1, 1, 1)
    want = have.with_runs(2, 5)
    short = frame.resize_runs(x, 1, have, want)
    np.testing.assert_array_equal(short[0, :, 0, 0], [9, 5, 5, 1, 2, 3, 7, 7, 7, 7, 7, 8, 6])
    np.testing.assert_array_equal(frame.resize_runs(short, 1, want, have), x)
    with pytest.raises(ValueError, match="beyond their runs"):
        frame.resize_runs(x, 1, have, frame.AxisLayout(1, 4, 4, 1, 2))


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_name, height, width",
    [("fcn8s", 1, 1), ("fcn8s", 37, 45), ("fcn8s", 64, 33), ("fcn32s", 26, 27)],
)
def test_skipping_the_frame_changes_no_output_or_gradient(model_name, height, width):
    framed = models.get_model(model_name, num_classes=3, width=1 / 16, fast_paths="all")
    x = jax.random.normal(jax.random.key(0), (1, height, width, 3))
    variables = random_variables(framed, seed=2)

    def logits_and_grads(model):
        def loss(params):
            logits = model.apply({**variables, "params": params}, x)
            # A fixed random cotangent: the random weights make logits of ~1e6, where a
            # nonlinear loss such as sum(sin(logits)) would turn float rounding into noise.
            cotangent = jax.random.normal(jax.random.key(1), logits.shape)
            return jnp.sum(logits * cotangent), logits

        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    grads, logits = logits_and_grads(framed)
    # The full maps of the reference, every other trick the same. Tolerances are relative to
    # the largest value, as logits of ~1e6 cancel down to ~1e4 in places.
    want_grads, want_logits = logits_and_grads(framed.clone(framed_blocks=0))
    np.testing.assert_allclose(
        logits, want_logits, rtol=1e-5, atol=1e-5 * np.abs(want_logits).max()
    )
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
