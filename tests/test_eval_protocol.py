"""`--mode=eval` on the canvas scores what the reference's per-image evaluation scores."""

import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from fcn_jax import evaluation, metrics, preprocessing, restore, steps
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("fewer_xla_optimizations")  # one compile per size

PARITY = pathlib.Path(__file__).parent / "testdata" / "parity"


def _own_size_confusion(config, variables, model) -> np.ndarray:
    """The reference protocol (docs/reference.md §5.1): each image alone, one matrix summed."""
    builder = tfds.builder(config.dataset.name, data_dir=config.dataset.data_dir)
    forward = jax.jit(lambda v, x: model.apply(v, preprocessing.normalize(x, "caffe")))
    num_classes = model.num_classes
    total = np.zeros((num_classes, num_classes), np.int64)
    for example in tfds.as_numpy(builder.as_dataset(split=config.dataset.eval_split)):
        prediction = np.asarray(forward(variables, example["image"][None]))[0].argmax(-1)
        label = example["segmentation_mask"][..., 0].astype(np.int64)
        valid = label < num_classes
        total += np.bincount(
            num_classes * label[valid] + prediction[valid], minlength=num_classes**2
        ).reshape(num_classes, num_classes)
    return total


@pytest.mark.slow
@pytest.mark.parametrize("geometry, pth", [("reference", "fcn8s"), ("simple", "simple_fcn8s")])
def test_eval_mode_scores_equal_a_per_image_own_size_evaluation(
    tmp_path, synthetic_data_dir, geometry, pth
):
    # Random weights (5 classes, width 1/64) whose predictions depend on every pixel in view:
    # the canvas's padding would change them. 40 of the 160 images, as each own-size forward
    # is a compile of its own.
    config = tiny_config(
        synthetic_data_dir,
        model="fcn8s",
        width=1 / 64,
        model_geometry=geometry,
        **{"dataset.eval_split": "validation[:40]"},
    )
    weights = str(PARITY / f"{pth}_random.pth")
    scores = evaluation.evaluate_model(config, str(tmp_path), weights_path=weights)
    model = steps.create_model(config, 5)
    variables = restore.load_variables(weights, config, "fcn8s")
    confusion = _own_size_confusion(config, variables, model)
    want = metrics.scores(confusion)
    assert all(iou > 0 for iou in want["per_class_iou"])  # every class is predicted
    # A canvas batch sums in another order than one image alone (other GEMM blocks), which
    # can flip a pixel whose two best logits are within rounding: some CPUs flip a few of the
    # ~10^5 pixels. Padding seen by the model would change far more.
    flips_allowed = 5 / confusion.sum()
    assert abs(scores["pixel_accuracy"] - want["pixel_accuracy"]) <= flips_allowed
    assert abs(scores["mean_iou"] - want["mean_iou"]) <= 1e-4
