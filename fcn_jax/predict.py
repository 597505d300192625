"""Segment image files with a trained model; write masks and overlays in the class colours.

Any image PIL reads is accepted: grayscale, palette, CMYK and 16-bit images are converted to
8-bit RGB, images with transparency are composited on black (and a warning says so), and EXIF
orientation is applied. Images above `MAX_PIXELS` are refused with a message. A file that
cannot be read is named in an error raised after every other image has been written.
"""

import functools
import glob

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from fcn_jax import class_info, config_checks, models, preprocessing, visualize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# 16.7 megapixels: far above VOC's 500x500, and at full width already several GB of activations.
MAX_PIXELS = 4096 * 4096
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


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


def read_rgb(path: epath.Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), upright as its EXIF orientation says.

    Raises:
      ValueError: naming the file, when it is not a readable image or is above `MAX_PIXELS`.
    """
    try:
        with path.open("rb") as f:
            image = Image.open(f)
            _check_size(image.width, image.height, path)
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image, path)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: larger than {MAX_PIXELS:,} pixels ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
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


def _check_size(width: int, height: int, path: epath.Path) -> None:
    if width * height > MAX_PIXELS:
        raise ValueError(
            f"{path}: {width}x{height} is {width * height:,} pixels, more than the limit of "
            f"{MAX_PIXELS:,} (fcn_jax.predict.MAX_PIXELS); downscale it first"
        )


def _to_rgb(image: Image.Image, path: epath.Path) -> np.ndarray:
    """8-bit RGB of any PIL mode; transparency is composited on black."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale (PIL opens a 16-bit PNG as "I" or "I;16"): keep the top 8 bits.
        gray = np.clip(np.asarray(image, np.int64) // 256, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        logging.warning("%s: has transparency; composited on black", path)
        rgba = np.asarray(image.convert("RGBA"), np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return np.round(rgb).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def output_stems(paths: list[epath.Path]) -> list[str]:
    """A distinct output name stem per input, in order.

    An input keeps its file stem unless an earlier input has it (`a.jpg` and `a.png`, or two
    folders' `a.jpg`); later ones get `_2`, `_3`...: no output overwrites another.
    """
    taken, stems = set(), []
    for path in paths:
        stem, number = path.stem, 1
        while stem in taken:
            number += 1
            stem = f"{path.stem}_{number}"
        if stem != path.stem:
            logging.warning("%s: a previous input has its name; written as %s_*", path, stem)
        taken.add(stem)
        stems.append(stem)
    return stems


def predict_files(
    config: ml_collections.ConfigDict,
    model: models.FCNModel,
    variables: dict,
    classes: class_info.ClassInfo,
    inputs: list[str],
    output_dir: str,
) -> list[epath.Path]:
    """Segments each image as the reference does, alone at its own size.

    Images are batched (the eval batch size at a time) on a canvas per size bucket
    (`bucket_canvas`) with their sizes, which gives each image the logits of its own-size
    run while one compiled forward pass serves a whole bucket.

    For every input `NAME.ext` writes `NAME_mask.png` (class indices as a palette PNG in the
    class colours) and `NAME_overlay.png` (the image beside the image with the prediction
    blended in, background and void left out); inputs with the same NAME get distinct names
    (`output_stems`). OUTPUT_DIR/classes.json names the classes and their colours
    (`fcn_jax.class_info`).

    Returns:
      The written files.

    Raises:
      ValueError: `classes` has not the model's number of classes; or some inputs could not
        be read: it names each, after the others are written.
    """
    if classes.num_classes != model.num_classes:
        raise ValueError(
            f"the model has {model.num_classes} classes, the class list {classes.num_classes} "
            f"({list(classes.names)})"
        )
    paths = resolve_inputs(inputs)
    out = epath.Path(output_dir)
    written = [class_info.save(classes, out)]
    palette = classes.palette()
    segment = jax.jit(
        functools.partial(_batch_classes, model=model, name=config.dataset.preprocessing)
    )
    # On the device once: on a GPU or TPU, host arrays (a converted .pth) would otherwise be
    # copied there again for every batch, 537 MB each time at full width.
    variables = jax.device_put(variables)
    largest = tuple(config.dataset.canvas_size)
    batch_size = config_checks.eval_batch_size(config)
    pending: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = {}
    failures = []

    def flush(canvas: tuple[int, int]) -> None:
        group = pending.pop(canvas)
        images = np.zeros((batch_size, *canvas, 3), np.uint8)  # one shape per bucket
        sizes = np.zeros((batch_size, 2), np.int32)
        for i, (_, image) in enumerate(group):
            images[i, : image.shape[0], : image.shape[1]] = image
            sizes[i] = image.shape[:2]
        masks = np.asarray(segment(variables, images, sizes))
        for (stem, image), mask, (h, w) in zip(group, masks, sizes, strict=False):
            written.extend(_write_outputs(stem, image, mask[:h, :w], palette, out))

    for path, stem in zip(paths, output_stems(paths), strict=True):
        try:
            image = read_rgb(path)
        except ValueError as e:
            logging.error("%s", e)
            failures.append(str(e))
            continue
        canvas = bucket_canvas(*image.shape[:2], largest)
        pending.setdefault(canvas, []).append((stem, image))
        if len(pending[canvas]) == batch_size:
            flush(canvas)
    for canvas in list(pending):
        flush(canvas)
    if failures:
        raise ValueError(
            f"{len(failures)} of {len(paths)} images could not be read (the other "
            f"{len(paths) - len(failures)} were written to {out}):\n" + "\n".join(failures)
        )
    return written


def _write_outputs(
    stem: str, image: np.ndarray, mask: np.ndarray, palette: np.ndarray, out: epath.Path
) -> list[epath.Path]:
    """Writes the mask and the overlay of one image as `stem`_*.png; returns their paths."""
    mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
    visualize.save_mask(mask, mask_path, palette)
    side_by_side = np.concatenate([image, visualize.overlay(image, mask, palette)], axis=1)
    visualize.save_png(side_by_side, overlay_path)
    return [mask_path, overlay_path]
