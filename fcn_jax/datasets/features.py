"""The features every segmentation builder yields, so the pipeline reads them all alike."""

import numpy as np
import tensorflow_datasets as tfds


def segmentation_features() -> tfds.features.FeaturesDict:
    """`image` uint8 RGB, `segmentation_mask` uint8 (H, W, 1) class indices (255 void), `file_name`.

    The mask is a zlib-compressed tensor, not an image feature: TFDS would decode a palette
    PNG to its colours rather than its indices.
    """
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "segmentation_mask": tfds.features.Tensor(
                shape=(None, None, 1), dtype=np.uint8, encoding="zlib"
            ),
            "file_name": tfds.features.Text(),
        }
    )
