import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import losses, models


def test_zero_scores_give_ln21_per_valid_pixel():
    # docs/reference.md §4.2 / §7.2: score layers at zero -> the loss is ln 21 per valid pixel.
    model = models.get_model("fcn8s", width=1 / 32)
    variables = models.init_variables(model, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (2, 23, 31, 3))
    labels = jax.random.randint(jax.random.key(2), (2, 23, 31), 0, 21)
    labels = labels.at[0, :5].set(255)  # void pixels do not count
    loss, valid = losses.pixel_cross_entropy(model.apply(variables, images), labels)
    assert int(valid) == 2 * 23 * 31 - 5 * 31
    # "sum" divides by the number of images (§4.2).
    # float32 sums over ~1,300 pixels: agree to a few ulps per pixel.
    np.testing.assert_allclose(float(loss) * 2 / int(valid), math.log(21), rtol=1e-4)
    mean, _ = losses.pixel_cross_entropy(model.apply(variables, images), labels, reduction="mean")
    np.testing.assert_allclose(float(mean), math.log(21), rtol=1e-4)


def test_loss_matches_numpy_and_ignores_void_and_out_of_range():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 4, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(1, 4, 5))
    labels[0, 0, :2] = 255
    labels[0, 1, 0] = 7  # outside 0..C-1: excluded like void
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels < 3
    want = -sum(
        log_probs[0, i, j, labels[0, i, j]] for i, j in zip(*np.nonzero(valid[0]), strict=True)
    )
    loss, count = losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert int(count) == valid.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        losses.pixel_cross_entropy(
            jnp.zeros((1, 2, 2, 3)), jnp.zeros((1, 2, 2), int), reduction="avg"
        )


@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
def test_gradient_is_softmax_minus_one_hot_on_valid_pixels(reduction):
    # The loss computes its own gradient (in its forward pass): checked against the textbook
    # formula, (softmax - one-hot) / divisor on valid pixels and zero on void ones.
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 3, 4))
    labels[0, 0] = 255
    labels[1, 2, 1] = 9  # outside 0..C-1: no gradient either
    valid = labels < 5
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    want = (probs - np.eye(5)[np.where(valid, labels, 0)]) * valid[..., None]
    want /= 2 if reduction == "sum" else valid.sum()

    def loss(x):
        return losses.pixel_cross_entropy(x, jnp.asarray(labels), reduction=reduction)[0]

    for grad in (jax.grad(loss), jax.jit(jax.grad(loss))):
        np.testing.assert_allclose(grad(jnp.asarray(logits)), want, rtol=1e-5, atol=1e-7)
    # A scaled cotangent scales the gradient.
    _, vjp = jax.vjp(loss, jnp.asarray(logits))
    np.testing.assert_allclose(vjp(jnp.float32(3.0))[0], 3 * want, rtol=1e-5, atol=1e-7)
