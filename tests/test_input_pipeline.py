import numpy as np
import pytest
import tensorflow as tf

from fcn_jax import input_pipeline, preprocessing
from tests.helpers import tiny_config


def test_train_batches_shapes_padding_and_values(synthetic_data_dir):
    config = tiny_config(synthetic_data_dir, **{"dataset.augment": False})
    batch = next(input_pipeline.create_train_iterator(config))
    assert batch["image"].shape == (4, 96, 96, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4, 96, 96) and batch["label"].dtype == np.int32
    assert batch["size"].shape == (4, 2) and batch["size"].dtype == np.int32
    assert set(np.unique(batch["label"])) <= {0, 1, 2, 3, 4, 255}
    # Images are at most 96 px: with no augmentation, the canvas padding is void / zero.
    for image, label, (h, w) in zip(batch["image"], batch["label"], batch["size"], strict=True):
        assert np.all(image[h:] == 0) and np.all(label[h:] == 255)
        assert np.all(image[:, w:] == 0) and np.all(label[:, w:] == 255)
        assert np.any(image[h - 1, :w] != 0) and np.any(image[:h, w - 1] != 0)


def test_train_order_is_deterministic_and_resumable(synthetic_data_dir):
    config = tiny_config(synthetic_data_dir)
    first = input_pipeline.create_train_iterator(config)
    batches = [next(first) for _ in range(6)]
    again = next(input_pipeline.create_train_iterator(config))
    np.testing.assert_array_equal(again["image"], batches[0]["image"])
    resumed = input_pipeline.create_train_iterator(config, start_step=4)
    for want in batches[4:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    other_seed = next(input_pipeline.create_train_iterator(tiny_config(synthetic_data_dir, seed=5)))
    assert not np.array_equal(other_seed["image"], batches[0]["image"])


def test_eval_covers_every_example_once_with_padded_last_batch(synthetic_data_dir):
    config = tiny_config(synthetic_data_dir, eval_batch_size=12)  # 160 = 13 * 12 + 4
    batches = list(input_pipeline.create_eval_iterator(config))
    assert len(batches) == 14
    assert sum(int(b["mask"].sum()) for b in batches) == 160
    last = batches[-1]
    assert last["mask"].tolist() == [True] * 4 + [False] * 8
    assert np.all(last["label"][4:] == 255) and np.all(last["image"][4:] == 0)
    assert np.all(last["size"][4:] == 0) and np.all(last["size"][:4] > 0)
    assert input_pipeline.num_examples(config, "validation") == 160
    assert input_pipeline.dataset_classes(config).num_classes == 5


def test_image_larger_than_canvas_is_an_error_unless_cropping(synthetic_data_dir):
    config = tiny_config(
        synthetic_data_dir,
        **{"dataset.canvas_size": (64, 64), "dataset.augment": False, "dataset.random_crop": False},
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="canvas_size"):
        next(input_pipeline.create_train_iterator(config))
    config.dataset.random_crop = True
    assert next(input_pipeline.create_train_iterator(config))["image"].shape == (4, 64, 64, 3)


def test_preprocessing_maths():
    pixel = np.array([[[10, 20, 30]]], np.uint8)
    caffe = np.asarray(preprocessing.normalize(pixel, "caffe"))[0, 0]
    np.testing.assert_allclose(caffe, [30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434])
    tv = np.asarray(preprocessing.normalize(pixel, "torchvision"))[0, 0]
    np.testing.assert_allclose(
        tv,
        (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="preprocessing"):
        preprocessing.normalize(pixel, "bgr")


def test_sizes_follow_scaling_cropping_and_flipping(synthetic_data_dir):
    plain = tiny_config(synthetic_data_dir, **{"dataset.augment": False})
    augmented = tiny_config(
        synthetic_data_dir,
        **{
            "dataset.augment": True,
            "dataset.min_scale": 0.5,
            "dataset.max_scale": 2.0,
            "dataset.random_crop": True,
            "dataset.canvas_size": (64, 64),
        },
    )
    # The same seed visits the same examples in the same order, with and without augmentation.
    originals = next(input_pipeline.create_train_iterator(plain))["size"]
    batch = next(input_pipeline.create_train_iterator(augmented))
    for image, label, size, original in zip(
        batch["image"], batch["label"], batch["size"], originals, strict=True
    ):
        h, w = size
        assert 1 <= h <= 64 and 1 <= w <= 64
        scales = [s / o for s, o in zip(size, original, strict=True) if s < 64]
        assert all(0.5 - 0.02 <= s <= 2.0 + 0.02 for s in scales)
        if len(scales) == 2:  # one scale for both axes, up to rounding
            assert abs(scales[0] - scales[1]) <= 1.0 / min(original)
        assert np.all(image[h:] == 0) and np.all(label[h:] == 255)
        assert np.all(image[:, w:] == 0) and np.all(label[:, w:] == 255)
        assert np.any(label[:h, :w] != 255)
