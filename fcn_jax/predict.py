"""Segment image files with a trained model; write VOC-palette masks and overlays."""

import functools
import glob

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from PIL import Image, UnidentifiedImageError

from fcn_jax import models, preprocessing, visualize

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


# Canvas sides are rounded up to a multiple of this, so images of similar sizes share one
# compiled forward pass (a VOC photo of 500 x 375 runs on a 512 x 384 canvas).
CANVAS_STEP = 128


def bucket_canvas(height: int, width: int, largest: tuple[int, int]) -> tuple[int, int]:
    """The canvas an image of `height` x `width` runs on.

    Its sides rounded up to a multiple of CANVAS_STEP and capped at the `largest` canvas; an
    image larger than that runs at its own size.
    """
    if height > largest[0] or width > largest[1]:
        return height, width
    return tuple(
        min(-(-side // CANVAS_STEP) * CANVAS_STEP, cap)
        for side, cap in zip((height, width), largest, strict=True)
    )


def _batch_classes(variables: dict, images: jax.Array, sizes: jax.Array, *, model, name: str):
    logits = model.apply(variables, preprocessing.normalize(images, name), sizes=sizes)
    return jnp.argmax(logits, -1).astype(jnp.uint8)


def predict_files(
    config: ml_collections.ConfigDict,
    model: models.FCN,
    variables: dict,
    inputs: list[str],
    output_dir: str,
) -> list[epath.Path]:
    """Segments each image as the reference does, alone at its own size.

    Images are batched (`config.eval_batch_size` at a time) on a canvas per size bucket
    (`bucket_canvas`) with their sizes, which gives each image the logits of its own-size
    run while one compiled forward pass serves a whole bucket.

    For every input `NAME.ext` writes `NAME_mask.png` (class indices as a VOC-palette PNG)
    and `NAME_overlay.png` (the image beside the image with the prediction blended in).

    Returns:
      The written files.
    """
    out = epath.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = jax.jit(
        functools.partial(_batch_classes, model=model, name=config.dataset.preprocessing)
    )
    # On the device once: on a GPU or TPU, host arrays (a converted .pth) would otherwise be
    # copied there again for every batch, 537 MB each time at full width.
    variables = jax.device_put(variables)
    largest, batch_size = tuple(config.dataset.canvas_size), config.eval_batch_size
    pending: dict[tuple[int, int], list[tuple[epath.Path, np.ndarray]]] = {}
    written = []

    def flush(canvas: tuple[int, int]) -> None:
        group = pending.pop(canvas)
        images = np.zeros((batch_size, *canvas, 3), np.uint8)  # one shape per bucket
        sizes = np.zeros((batch_size, 2), np.int32)
        for i, (_, image) in enumerate(group):
            images[i, : image.shape[0], : image.shape[1]] = image
            sizes[i] = image.shape[:2]
        masks = np.asarray(classes(variables, images, sizes))
        for (path, image), mask, (h, w) in zip(group, masks, sizes, strict=False):
            written.extend(_write_outputs(path, image, mask[:h, :w], out))

    for path in resolve_inputs(inputs):
        image = _read_rgb(path)
        canvas = bucket_canvas(*image.shape[:2], largest)
        pending.setdefault(canvas, []).append((path, image))
        if len(pending[canvas]) == batch_size:
            flush(canvas)
    for canvas in list(pending):
        flush(canvas)
    return written


def _write_outputs(
    path: epath.Path, image: np.ndarray, mask: np.ndarray, out: epath.Path
) -> list[epath.Path]:
    """Writes the mask and the overlay of one image; returns their paths."""
    mask_path, overlay_path = out / f"{path.stem}_mask.png", out / f"{path.stem}_overlay.png"
    visualize.save_mask(mask, mask_path)
    side_by_side = np.concatenate([image, visualize.overlay(image, mask)], axis=1)
    with overlay_path.open("wb") as f:
        Image.fromarray(side_by_side).save(f, format="PNG")
    return [mask_path, overlay_path]
