"""Segmentation datasets as TFDS builders; importing this package registers them.

* `synthetic_shapes`: offline, generated from a seed (the quickstart's dataset).
* `voc_segmentation`: PASCAL VOC 2012 / SBD (configs `voc2012`, `sbd`, `aug`).
* `segmentation_folder`: a user's own folder, in the layouts annotation tools export
  (`segmentation_folder.builder(path)`, docs/own_data.md).
"""

import numpy as np

# Importing the builder modules registers them with TFDS.
from fcn_jax.datasets import segmentation_folder, synthetic_shapes, voc_segmentation

__all__ = [
    "VOC_CLASSES",
    "segmentation_folder",
    "synthetic_shapes",
    "voc_palette",
    "voc_segmentation",
]

# PASCAL VOC class order (docs/reference.md §4.4, data/pascal/classes.txt).
VOC_CLASSES = voc_segmentation.CLASS_NAMES


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
