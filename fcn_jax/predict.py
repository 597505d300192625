"""Segment image files with a trained model; write VOC-palette masks and overlays.

Any image PIL reads is accepted: grayscale, palette, CMYK and 16-bit images are converted to
8-bit RGB, images with transparency are composited on black (and a warning says so), and EXIF
orientation is applied. Images above `MAX_PIXELS` are refused with a message. A file that
cannot be read is named in an error raised after every other image has been written.
"""

import glob

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from fcn_jax import input_pipeline, models, visualize

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
    model: models.FCN,
    variables: dict,
    inputs: list[str],
    output_dir: str,
) -> list[epath.Path]:
    """Segments each image at its own size.

    For every input `NAME.ext` writes `NAME_mask.png` (class indices as a VOC-palette PNG)
    and `NAME_overlay.png` (the image beside the image with the prediction blended in);
    inputs with the same NAME get distinct names (`output_stems`).

    Returns:
      The written files.

    Raises:
      ValueError: some inputs could not be read; it names each, after the others are written.
    """
    out = epath.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x), -1).astype(jnp.uint8))
    # On the device once: on a GPU or TPU, host arrays (a converted .pth) would otherwise be
    # copied there again for every image, 537 MB each time at full width.
    variables = jax.device_put(variables)
    written, failures = [], []
    paths = resolve_inputs(inputs)
    for path, stem in zip(paths, output_stems(paths), strict=True):
        try:
            image = read_rgb(path)
        except ValueError as e:
            logging.error("%s", e)
            failures.append(str(e))
            continue
        net_input = input_pipeline.normalize_image(image, config.dataset.preprocessing)
        mask = np.asarray(predict(variables, np.asarray(net_input)[None]))[0]
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        visualize.save_mask(mask, mask_path)
        side_by_side = np.concatenate([image, visualize.overlay(image, mask)], axis=1)
        with overlay_path.open("wb") as f:
            Image.fromarray(side_by_side).save(f, format="PNG")
        written += [mask_path, overlay_path]
    if failures:
        raise ValueError(
            f"{len(failures)} of {len(paths)} images could not be read (the other "
            f"{len(paths) - len(failures)} were written to {out}):\n" + "\n".join(failures)
        )
    return written
