"""Pixel pictures of masks: class colours, overlays, palette PNGs (plots: `fcn_jax.plots`)."""

import numpy as np
from etils import epath
from PIL import Image


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class indices (H, W) -> uint8 RGB (H, W, 3) by a (256, 3) `ClassInfo.palette()`."""
    return palette[np.asarray(mask, np.uint8)]


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: np.ndarray, ignore: tuple[int, ...] = (0, 255)
) -> np.ndarray:
    """Blends the class colours over a uint8 RGB image, except where the class is in `ignore`.

    The default leaves label 0 (background, in most datasets) and void as the image shows them.
    """
    blend = 0.5 * image + 0.5 * colorize(mask, palette)
    keep = np.isin(mask, ignore)[..., None]
    return np.where(keep, image, blend).round().astype(np.uint8)


def save_png(picture: np.ndarray, path: epath.Path) -> None:
    """Writes a uint8 RGB array as a PNG file."""
    with path.open("wb") as f:
        Image.fromarray(picture).save(f, format="PNG")


def save_mask(mask: np.ndarray, path: epath.Path, palette: np.ndarray) -> None:
    """Saves class indices as a palette PNG (indices readable back with PIL, like VOC's)."""
    image = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    with path.open("wb") as f:
        image.save(f, format="PNG")
