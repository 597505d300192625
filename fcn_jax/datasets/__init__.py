"""Segmentation datasets as TFDS builders; importing this package registers them.

* `synthetic_shapes`: offline, generated from a seed (the quickstart's dataset).
"""

import numpy as np

from fcn_jax.datasets import synthetic_shapes  # noqa: F401  (registers the builder)

# PASCAL VOC class order (FCN_REFERENCE.md §4.4, data/pascal/classes.txt).
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: uint8 (256, 3), class i's bits spread over R, G and B.

    Index 0 is black, 1 (aeroplane) dark red, ..., and 255 (void) is (224, 224, 192).
    """
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        label, color = index, np.zeros(3, np.int64)
        for shift in range(7, -1, -1):
            for channel in range(3):
                color[channel] |= ((label >> channel) & 1) << shift
            label >>= 3
        palette[index] = color
    return palette
