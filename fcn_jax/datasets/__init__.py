"""Segmentation datasets as TFDS builders; importing this package registers them.

* `synthetic_shapes`: offline, generated from a seed (the quickstart's dataset).
* `voc_segmentation`: PASCAL VOC 2012 / SBD (configs `voc2012`, `sbd`, `aug`).
* `segmentation_folder`: a user's own folder, in the layouts annotation tools export
  (`segmentation_folder.builder(path)`, docs/own_data.md).
"""

# Importing the builder modules registers them with TFDS.
from fcn_jax.datasets import segmentation_folder, synthetic_shapes, voc_segmentation
from fcn_jax.palette import voc_palette

__all__ = [
    "VOC_CLASSES",
    "segmentation_folder",
    "synthetic_shapes",
    "voc_palette",
    "voc_segmentation",
]

# PASCAL VOC class order (docs/reference.md §4.4, data/pascal/classes.txt).
VOC_CLASSES = voc_segmentation.CLASS_NAMES
