"""Reading image files for the dataset builders: the image as its viewer shows it.

A camera JPEG often stores its pixels sideways with an EXIF `Orientation` tag saying how to
turn them. Browsers, CVAT (since 2.1) and labelme show and annotate the turned image, so its
masks line up with that: the builders apply the tag too (PIL's `exif_transpose`) and store
the turned pixels, since TensorFlow's decoders ignore EXIF.
"""

import io

from etils import epath
from PIL import ExifTags, Image, ImageOps

# EXIF orientations 5-8 turn the image by 90 degrees: width and height swap.
_QUARTER_TURNS = (5, 6, 7, 8)


def orientation(image: Image.Image) -> int:
    """The EXIF orientation of `image`: 1 (as stored) to 8; 1 when it has no tag."""
    return int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)


def displayed_size(path: epath.Path) -> tuple[int, int]:
    """(height, width) of the image as shown, from its header only (no decoding).

    Raises:
      ValueError: the file is not an image PIL can open.
    """
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            width, height = image.size
            turned = orientation(image) in _QUARTER_TURNS
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"Image {path} cannot be read: {e}") from e
    return (width, height) if turned else (height, width)


def read_image(path: epath.Path) -> tuple[bytes, tuple[int, int]]:
    """Decodes the image fully (catching corrupt or truncated files), turned as shown.

    Args:
      path: A JPEG or PNG file (any format PIL reads).

    Returns:
      The bytes to store (the original file when it is an RGB JPEG or PNG with nothing to
      turn, else a PNG of the turned RGB image) and (height, width).

    Raises:
      ValueError: the file cannot be decoded completely.
    """
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            turn = orientation(image) != 1
            if turn or image.mode != "RGB" or image.format not in ("JPEG", "PNG"):
                shown = ImageOps.exif_transpose(image) if turn else image
                buffer = io.BytesIO()
                shown.convert("RGB").save(buffer, format="PNG")
                return buffer.getvalue(), (shown.height, shown.width)
            return data, (image.height, image.width)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"Image {path} is corrupt or truncated: {e}") from e
