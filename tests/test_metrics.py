import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax import metrics


def _numpy_hist(labels, predictions, n):
    keep = (labels >= 0) & (labels < n)
    return np.bincount(n * labels[keep] + predictions[keep], minlength=n * n).reshape(n, n)


def test_confusion_matrix_matches_numpy_with_void():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(3, 7, 9))
    labels[rng.random(labels.shape) < 0.2] = 255
    predictions = rng.integers(0, 4, size=(3, 7, 9))
    got = jax.jit(metrics.confusion_matrix, static_argnums=2)(labels, predictions, 4)
    np.testing.assert_array_equal(got, _numpy_hist(labels, predictions, 4))


def test_scores_follow_reference_nan_rules():
    # Class 2 is never in the ground truth but predicted once: IoU 0 that counts;
    # class 3 is absent everywhere: NaN, skipped.
    hist = np.array([[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = metrics.scores(hist)
    np.testing.assert_allclose(s["pixel_accuracy"], 8 / 12)
    np.testing.assert_allclose(s["mean_accuracy"], (5 / 6 + 3 / 6) / 2)
    iou = [5 / (6 + 7 - 5), 3 / (6 + 4 - 3), 0.0]
    np.testing.assert_allclose(s["per_class_iou"][:3], iou)
    assert np.isnan(s["per_class_iou"][3])
    np.testing.assert_allclose(s["mean_iou"], np.mean(iou))
    np.testing.assert_allclose(s["fw_iou"], 0.5 * iou[0] + 0.5 * iou[1])


def test_clu_metric_excludes_padding_examples_and_merges():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=(4, 5, 5))
    logits = rng.normal(size=(4, 5, 5, 3))
    mask = np.array([True, True, True, False])
    first = metrics.ConfusionMatrix.from_model_output(
        logits=jnp.asarray(logits), labels=jnp.asarray(labels), example_mask=jnp.asarray(mask)
    )
    total = first.merge(first)
    want = 2 * _numpy_hist(labels[:3], logits[:3].argmax(-1), 3)
    np.testing.assert_array_equal(total.matrix, want)
    assert total.compute()["mean_iou"] == metrics.scores(want)["mean_iou"]
