"""Pictures of predictions: VOC-palette masks, overlays and image | truth | prediction panels."""

import numpy as np
from etils import epath
from PIL import Image

from fcn_jax.losses import VOID
from fcn_jax.palette import voc_palette


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class indices (H, W) -> uint8 RGB (H, W, 3) in the VOC palette (void is cream)."""
    return voc_palette()[np.asarray(mask, np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends the colours of non-background, non-void classes over a uint8 RGB image."""
    blend = (1 - alpha) * image + alpha * colorize(mask)
    keep = ((mask == 0) | (mask == VOID))[..., None]
    return np.where(keep, image, blend).round().astype(np.uint8)


def prediction_panels(
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> list[np.ndarray]:
    """(uint8 RGB image, label, prediction) triples -> uint8 panels image | truth | prediction."""
    return [
        np.concatenate([image, colorize(label), colorize(prediction)], axis=1)
        for image, label, prediction in examples
    ]


def save_panels(panels: list[np.ndarray], directory: epath.Path, step: int) -> list[epath.Path]:
    """Writes panels as PNG files `step_<step>_<i>.png`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, panel in enumerate(panels):
        path = directory / f"step_{step:07d}_{index}.png"
        with path.open("wb") as f:
            Image.fromarray(panel).save(f, format="PNG")
        paths.append(path)
    return paths


def save_mask(mask: np.ndarray, path: epath.Path) -> None:
    """Saves class indices as a palette PNG (indices readable back with PIL, like VOC's)."""
    image = Image.fromarray(np.asarray(mask, np.uint8), mode="P")
    image.putpalette(voc_palette().reshape(-1).tolist())
    with path.open("wb") as f:
        image.save(f, format="PNG")
