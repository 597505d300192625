"""`--mode=eval` on the canvas scores what the reference's per-image evaluation scores."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from fcn_jax import checkpoint, evaluation, metrics, preprocessing, steps, train
from tests.helpers import tiny_config


def _own_size_scores(config, variables, model) -> dict:
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
    return metrics.scores(total)


@pytest.mark.parametrize("geometry", ["reference", "simple"])
def test_eval_mode_scores_equal_a_per_image_own_size_evaluation(
    tmp_path, synthetic_data_dir, geometry
):
    config = tiny_config(
        synthetic_data_dir, num_train_steps=6, eval_every_steps=6, model_geometry=geometry
    )
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    scores = evaluation.evaluate_model(config, workdir)
    model = steps.create_model(config, 5)
    want = _own_size_scores(config, checkpoint.restore_variables(workdir), model)
    assert 0.05 < want["mean_iou"] < 0.95  # a model that predicts more than one class
    assert abs(scores["mean_iou"] - want["mean_iou"]) <= 1e-4
    assert abs(scores["pixel_accuracy"] - want["pixel_accuracy"]) <= 1e-6
