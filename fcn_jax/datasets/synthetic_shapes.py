"""`synthetic_shapes`: an offline segmentation dataset generated from a seed.

Each image (64 to 96 pixels a side) has a textured, noisy background and one to three filled
shapes that may occlude each other. Four shape classes (disk, box, triangle, ring) each have
their own hue, jittered per shape, so a small FCN learns the task in minutes on a CPU. As in
VOC, a one-pixel band along every label boundary is void (255).

Splits: `train` (800 images) and `validation` (160), identical on every build.
"""

import numpy as np
import tensorflow_datasets as tfds

from fcn_jax.datasets import features
from fcn_jax.losses import VOID

CLASS_NAMES = ("background", "disk", "box", "triangle", "ring")
SPLIT_SIZES = {"train": 800, "validation": 160}
MIN_SIZE, MAX_SIZE = 64, 96
# Base hue of each shape class (degrees); shapes jitter around it by up to HUE_JITTER.
CLASS_HUES = {1: 0.0, 2: 120.0, 3: 220.0, 4: 55.0}
HUE_JITTER = 12.0
_SEED = 20151115  # any fixed number: the dataset must not change between builds


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One colour from hue in degrees, saturation and value in [0, 1], as RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + hue / 60.0) % 6
    return value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-saturation gradient with stripes: texture the model must learn to ignore."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(0.3, 0.7) + rng.uniform(-0.08, 0.08, size=3)  # near grey
    slope = rng.uniform(-0.2, 0.2, size=(2, 3))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 16)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * max(height, width) / period)
    return image + 0.06 * stripes[..., None]


def _shape_mask(rng: np.random.Generator, cls: int, height: int, width: int) -> np.ndarray:
    """A boolean mask of one randomly placed shape of class `cls`."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    size = rng.uniform(0.15, 0.3) * min(height, width)
    cy, cx = rng.uniform(size, height - size), rng.uniform(size, width - size)
    dist = np.hypot(yy - cy, xx - cx)
    if cls == 1:  # disk
        return dist <= size
    if cls == 2:  # box (axis-aligned, random aspect)
        aspect = rng.uniform(0.6, 1.4)
        return (np.abs(yy - cy) <= size * aspect) & (np.abs(xx - cx) <= size / aspect)
    if cls == 3:  # triangle: inside three half-planes
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
        py, px = cy + 1.3 * size * np.sin(angles), cx + 1.3 * size * np.cos(angles)
        inside = np.ones((height, width), bool)
        for a, b in ((0, 1), (1, 2), (2, 0)):
            cross = (px[b] - px[a]) * (yy - py[a]) - (py[b] - py[a]) * (xx - px[a])
            inside &= cross >= 0
        return inside
    return (dist <= size) & (dist >= 0.55 * size)  # ring


def _void_boundaries(label: np.ndarray) -> np.ndarray:
    """Marks a one-pixel band of void where the label changes to the right or below."""
    boundary = np.zeros(label.shape, bool)
    boundary[:, :-1] |= label[:, :-1] != label[:, 1:]
    boundary[:-1, :] |= label[:-1, :] != label[1:, :]
    return np.where(boundary, VOID, label).astype(np.uint8)


def generate_example(split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Generates example `index` of `split` deterministically.

    Returns:
      uint8 image (H, W, 3) and uint8 mask (H, W, 1) with values in 0-4 and 255.
    """
    rng = np.random.default_rng([_SEED, list(SPLIT_SIZES).index(split), index])
    height, width = rng.integers(MIN_SIZE, MAX_SIZE + 1, size=2)
    image = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        shape = _shape_mask(rng, cls, height, width)
        hue = CLASS_HUES[cls] + rng.uniform(-HUE_JITTER, HUE_JITTER)
        color = _hsv_to_rgb(hue % 360, rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.95))
        image[shape] = color
        label[shape] = cls
    image += rng.normal(0, 0.04, size=image.shape)
    image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image, _void_boundaries(label)[..., None]


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
    """Offline shapes-segmentation dataset for the quickstart and the tests."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    CLASS_NAMES = CLASS_NAMES

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=features.segmentation_features(),
            metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        for index in range(SPLIT_SIZES[split]):
            image, mask = generate_example(split, index)
            name = f"{split}_{index:05d}"
            yield name, {"image": image, "segmentation_mask": mask, "file_name": name}
