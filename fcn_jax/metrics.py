"""Segmentation metrics from one confusion matrix summed over the whole set (§5).

The matrix is accumulated on the device (a CLU metric merged batch by batch) and pulled to
the host once; the scores are computed from the total, never averaged over batches.
"""

import clu.metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.losses import VOID


def confusion_matrix(
    labels: jax.Array, predictions: jax.Array, num_classes: int, ignore_label: int = VOID
) -> jax.Array:
    """Counts (ground truth, prediction) pairs; jittable.

    Args:
      labels: int array of any shape; `ignore_label` and values outside 0..num_classes-1
        are excluded explicitly (not by out-of-range scatter).
      predictions: int array of the same shape, values in 0..num_classes-1.
      num_classes: n.
      ignore_label: the void label (255 in VOC).

    Returns:
      int32 (n, n): rows are ground-truth classes, columns predicted classes (§5.1).
    """
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    index = jnp.where(valid, labels * num_classes + predictions, 0).reshape(-1)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32)
    counts = counts.at[index].add(valid.reshape(-1).astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict:
    """The four FCN metrics (§5.2) and per-class IoU from a confusion matrix.

    NaN rules of §5.2: a class absent from the ground truth has NaN accuracy and is skipped
    by the mean accuracy; a class absent from both ground truth and predictions has NaN IoU
    and is skipped by the mean IoU, while one predicted but never present gets IoU 0 and
    counts; the frequency-weighted IoU uses the classes present in the ground truth.

    Returns:
      dict with `pixel_accuracy`, `mean_accuracy`, `mean_iou`, `fw_iou` (floats) and
      `per_class_iou` (list of floats, NaN where undefined).
    """
    hist = np.asarray(confusion, np.float64)
    true_pos = np.diag(hist)
    gt, predicted = hist.sum(axis=1), hist.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_accuracy = true_pos / gt
        iou = true_pos / (gt + predicted - true_pos)
        pixel_accuracy = true_pos.sum() / gt.sum()
    present = gt > 0
    fw_iou = float((gt[present] / gt.sum() * iou[present]).sum()) if present.any() else np.nan
    return {
        "pixel_accuracy": float(pixel_accuracy),
        "mean_accuracy": _nanmean(class_accuracy),
        "mean_iou": _nanmean(iou),
        "fw_iou": fw_iou,
        "per_class_iou": [float(v) for v in iou],
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


@flax.struct.dataclass
class ConfusionMatrix(clu.metrics.Metric):
    """CLU metric holding a device-side confusion matrix.

    `counts()` pulls the matrix to the host; `compute()` returns its `scores`.
    """

    matrix: jax.Array

    @classmethod
    def from_model_output(
        cls, *, logits: jax.Array, labels: jax.Array, example_mask: jax.Array, **_
    ) -> "ConfusionMatrix":
        """Builds the metric of one batch; padded examples (mask False) count nowhere."""
        labels = jnp.where(example_mask[:, None, None], labels, VOID)
        return cls(confusion_matrix(labels, jnp.argmax(logits, -1), logits.shape[-1]))

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Sums two matrices (on the device)."""
        return type(self)(self.matrix + other.matrix)

    def counts(self) -> np.ndarray:
        """The matrix on the host: int (n, n), rows ground truth, columns predictions."""
        return np.asarray(jax.device_get(self.matrix))

    def compute(self) -> dict:
        """Pulls the matrix to the host once and returns `scores` of it."""
        return scores(self.counts())
