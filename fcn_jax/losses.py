"""Pixel-wise softmax cross-entropy with a void label (docs/reference.md §4.2)."""

import jax
import jax.numpy as jnp

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
    safe_labels = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    count = jnp.sum(valid)
    if reduction == "sum":
        return total / logits.shape[0], count
    return total / jnp.maximum(count, 1), count
