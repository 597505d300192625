"""Pixel-wise softmax cross-entropy with a void label (docs/reference.md §4.2).

The loss computes its gradient with respect to the logits in its forward pass: the train
step then keeps that gradient (as large as the logits) only until the backward pass starts,
instead of the logits, their softmax sums and the loss's own reduction to its end.
"""

import jax
import jax.numpy as jnp

from fcn_jax.layers import after

VOID = 255  # the void / ignore label of VOC masks and canvas padding (§4.2, §5.1)
REDUCTIONS = ("sum", "mean")


def pixel_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, reduction: str = "sum", ignore_label: int = VOID
) -> tuple[jax.Array, jax.Array]:
    """Softmax cross-entropy over the pixels whose label is not `ignore_label`.

    Args:
      logits: float (N, H, W, C).
      labels: int (N, H, W); `ignore_label` (and anything outside 0..C-1) is excluded.
      reduction: 'sum' is the reference's unnormalised loss: summed over valid pixels and
        divided by the number of images (Caffe `normalize: false`, §4.2; pairs with lr 1e-10).
        'mean' averages over valid pixels (pairs with ordinary learning rates).
      ignore_label: the void label (255 in VOC).

    Returns:
      (loss, number of valid pixels).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; use one of {REDUCTIONS}")
    num_classes = logits.shape[-1]
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    total = _summed_nll(logits, jnp.where(valid, labels, 0), valid)
    count = jnp.sum(valid)
    if reduction == "sum":
        return total / logits.shape[0], count
    return total / jnp.maximum(count, 1), count


def _nll_and_grad(
    logits: jax.Array, labels: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The negative log-likelihood summed over the valid pixels, and its gradient."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    grad = jnp.where(valid[..., None], jnp.exp(log_probs) - one_hot, 0.0)
    # Tied to the total, so that XLA computes the loss before the backward pass rather than
    # keeping the logits for it until the step's end.
    grad = after(grad, total)
    return total, grad.astype(logits.dtype)


@jax.custom_vjp
def _summed_nll(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """The sum over the `valid` pixels of -log softmax(logits)[label]; labels in 0..C-1."""
    return _nll_and_grad(logits, labels, valid)[0]


def _summed_nll_bwd(grad, total_grad):
    return total_grad.astype(grad.dtype) * grad, None, None


_summed_nll.defvjp(_nll_and_grad, _summed_nll_bwd)  # the gradient is the residual
