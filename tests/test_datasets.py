import numpy as np
import tensorflow_datasets as tfds

from fcn_jax import datasets
from fcn_jax.datasets import synthetic_shapes


def test_synthetic_builder_splits_and_features(synthetic_data_dir):
    builder = tfds.builder("synthetic_shapes", data_dir=synthetic_data_dir)
    assert builder.info.splits["train"].num_examples == 800
    assert builder.info.splits["validation"].num_examples == 160
    assert list(builder.info.metadata["class_names"]) == list(synthetic_shapes.CLASS_NAMES)
    for example in builder.as_dataset(split="validation").take(5).as_numpy_iterator():
        image, mask = example["image"], example["segmentation_mask"]
        assert image.dtype == np.uint8 and image.shape[2] == 3
        assert mask.shape == (*image.shape[:2], 1) and mask.dtype == np.uint8
        assert 64 <= image.shape[0] <= 96 and 64 <= image.shape[1] <= 96
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 255}
        # The stored example is exactly the generated one (lossless PNG, zlib mask).
        split, index = example["file_name"].decode().rsplit("_", 1)
        want_image, want_mask = synthetic_shapes.generate_example(split, int(index))
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(mask, want_mask)


def test_synthetic_examples_are_deterministic_with_void_borders():
    a_image, a_mask = synthetic_shapes.generate_example("train", 7)
    b_image, b_mask = synthetic_shapes.generate_example("train", 7)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_mask, b_mask)
    other, _ = synthetic_shapes.generate_example("validation", 7)
    assert other.shape != a_image.shape or not np.array_equal(other, a_image)
    # Void only as a thin band: present, but a small fraction of the pixels.
    void = np.mean(a_mask == 255)
    assert 0 < void < 0.1


def test_voc_palette_known_colours():
    palette = datasets.voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert tuple(palette[0]) == (0, 0, 0)
    assert tuple(palette[1]) == (128, 0, 0)  # aeroplane
    assert tuple(palette[15]) == (192, 128, 128)  # person
    assert tuple(palette[255]) == (224, 224, 192)  # void
    assert len(datasets.VOC_CLASSES) == 21 and datasets.VOC_CLASSES[15] == "person"
