"""Segment image files with a trained model; write VOC-palette masks and overlays."""

import glob

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from PIL import Image, UnidentifiedImageError

from fcn_jax import input_pipeline, models, visualize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def resolve_inputs(inputs: list[str]) -> list[epath.Path]:
    """Image files from a list of files, folders (their images) and glob patterns.

    Raises:
      FileNotFoundError: an entry matches no image file.
    """
    files = []
    for entry in inputs:
        path = epath.Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        else:
            found = [epath.Path(p) for p in sorted(glob.glob(entry))]
        if not found:
            raise FileNotFoundError(f"{entry!r} names no image file (a file, folder or glob)")
        files.extend(found)
    return files


def _read_rgb(path: epath.Path) -> np.ndarray:
    try:
        with path.open("rb") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def predict_files(
    config: ml_collections.ConfigDict,
    model: models.FCN,
    variables: dict,
    inputs: list[str],
    output_dir: str,
) -> list[epath.Path]:
    """Segments each image at its own size.

    For every input `NAME.ext` writes `NAME_mask.png` (class indices as a VOC-palette PNG)
    and `NAME_overlay.png` (the image beside the image with the prediction blended in).

    Returns:
      The written files.
    """
    out = epath.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x), -1).astype(jnp.uint8))
    # On the device once: on a GPU or TPU, host arrays (a converted .pth) would otherwise be
    # copied there again for every image, 537 MB each time at full width.
    variables = jax.device_put(variables)
    written = []
    for path in resolve_inputs(inputs):
        image = _read_rgb(path)
        net_input = input_pipeline.normalize_image(image, config.dataset.preprocessing)
        mask = np.asarray(predict(variables, np.asarray(net_input)[None]))[0]
        mask_path, overlay_path = out / f"{path.stem}_mask.png", out / f"{path.stem}_overlay.png"
        visualize.save_mask(mask, mask_path)
        side_by_side = np.concatenate([image, visualize.overlay(image, mask)], axis=1)
        with overlay_path.open("wb") as f:
            Image.fromarray(side_by_side).save(f, format="PNG")
        written += [mask_path, overlay_path]
    return written
