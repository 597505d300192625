"""Reads a user's folder of images and masks, in the layouts annotation tools export.

`read_folder(path, val_fraction)` detects the layout from what the folder holds, checks every
example (and reports every problem at once, naming the files), and returns a `Source`: the
class names (and colours where the data defines them) and the examples of each split. It uses
no TensorFlow; `segmentation_folder` turns a `Source` into a TFDS dataset.

Layouts (docs/own_data.md shows each folder tree):

* `plain`: `images/<stem>.jpg|.jpeg|.png` and `masks/<stem>.png`, one channel holding the
  class (255 void); class names from `classes.txt` (line i = class i), else `class_0` ...
  up to the largest value seen. Optional split lists `train.txt`, `val.txt`, `test.txt`.
* `voc` (CVAT "Segmentation mask 1.1" and VOC's own): `JPEGImages/`, `SegmentationClass/`,
  `ImageSets/Segmentation/<split>.txt`. Masks hold class indices (palette or greyscale PNG),
  or RGB colours mapped through CVAT's `labelmap.txt` (`name:r,g,b:parts:actions`, `#`
  comments, line order = class order); without a labelmap, names from `classes.txt` as above.
* `labelme` (`labelme2voc.py` output): `JPEGImages/`, `SegmentationClassPNG/` (palette
  indices, 255 = `__ignore__`), `class_names.txt` (`_background_` first).
* `coco`: COCO instance JSON as CVAT writes it (`annotations/instances_<split>.json`, images
  in `images/<split>/` or `images/`) or as Roboflow does (`<split>/_annotations.coco.json`
  beside the images). Unlabelled pixels are class 0 `background`, categories in ascending id
  order are classes 1..K, annotations are painted in the JSON's order (a later one over an
  earlier one); polygons reaching outside the image are clipped to it (`coco_folder`).

Splits: lists (or COCO files) named train, val/valid/validation and test become those splits.
With a single list, or none, a fraction `val_fraction` of the examples is held out for
validation by a hash of each example's name alone, so adding images never moves an old one.
"""

import dataclasses
import functools
import hashlib
import io
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from fcn_jax.datasets import coco_folder, images
from fcn_jax.datasets.folder_examples import IMAGE_SUFFIXES, Example, Layout, shown
from fcn_jax.losses import VOID

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}
# VOC's devkit lists train + val again as trainval: it adds nothing when both are there.
_UNION_LISTS = ("trainval",)


@dataclasses.dataclass(frozen=True)
class Source:
    """What a folder holds: its layout, classes and the examples of each split."""

    layout: str
    class_names: list[str]
    class_colors: list[list[int]] | None
    splits: dict[str, list[Example]]


def read_folder(path: epath.PathLike, val_fraction: float) -> Source:
    """Detects the layout of `path`, checks every example and assigns the splits.

    Args:
      path: The folder.
      val_fraction: The fraction held out for validation when the folder has no val list.

    Returns:
      The folder's `Source`.

    Raises:
      FileNotFoundError: the folder does not exist or holds no layout we read.
      ValueError: bad data, with every problem found, each naming its file.
    """
    root = epath.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset folder {root} does not exist.")
    layout = _detect(root)
    palette = _check_examples(root, layout)
    names = layout.class_names or [f"class_{i}" for i in range(layout.num_values)]
    colors = layout.class_colors or _palette_colors(palette, len(names))
    splits = _assign_splits(root, layout.groups, val_fraction)
    logging.info(
        "%s: %s layout, %d classes, %s",
        root,
        layout.name,
        len(names),
        ", ".join(f"{split} {len(items)}" for split, items in splits.items()),
    )
    return Source(layout.name, names, colors, splits)


def in_holdout(key: str, fraction: float) -> bool:
    """Whether example `key` is held out for validation: depends on the name alone."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


# --- Layout detection ---------------------------------------------------------------------

LAYOUTS_HELP = """\
A dataset folder holds one of these layouts (docs/own_data.md):
  images/ + masks/ (+ classes.txt)                        plain folders
  JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/  CVAT "Segmentation mask 1.1", VOC
  JPEGImages/ + SegmentationClassPNG/ + class_names.txt   labelme's labelme2voc.py output
  annotations/instances_<split>.json + images/            COCO from CVAT
  <split>/_annotations.coco.json beside the images        COCO from Roboflow"""


def _detect(root: epath.Path) -> Layout:
    """Reads the folder with the layout its contents name."""
    cvat_coco = sorted((root / "annotations").glob("instances_*.json"))
    roboflow = sorted(root.glob("*/_annotations.coco.json")) + sorted(
        root.glob("_annotations.coco.json")
    )
    if cvat_coco or roboflow:
        return coco_folder.read_coco(root, cvat_coco, roboflow)
    if (root / "SegmentationClassPNG").is_dir():
        return _labelme_layout(root)
    if (root / "SegmentationClass").is_dir():
        return _voc_layout(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return _plain_layout(root)
    raise FileNotFoundError(f"{root} holds no dataset layout we read.\n{LAYOUTS_HELP}")


def _files_by_key(folder: epath.Path, suffixes: Sequence[str]) -> dict[str, epath.Path]:
    """The files under `folder` with one of `suffixes` (any case), by path without suffix.

    Raises:
      ValueError: two files share a key (`a.jpg` and `a.png`).
    """
    found: dict[str, list[epath.Path]] = {}
    for file in _files_under(folder):
        if file.suffix.lower() in suffixes:
            key = str(file.relative_to(folder).with_suffix(""))
            found.setdefault(key, []).append(file)
    clashes = [" and ".join(str(f) for f in files) for files in found.values() if len(files) > 1]
    if clashes:
        raise ValueError(
            f"{len(clashes)} name(s) in {folder} belong to several files, so which one is "
            "meant is unclear: rename or remove one of each:\n  " + shown(clashes)
        )
    return {key: files[0] for key, files in found.items()}


def _files_under(folder: epath.Path) -> list[epath.Path]:
    """Every file under `folder`, in subfolders too, sorted; hidden ones ('.name') left out."""
    files = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [epath.Path(parent) / n for n in names if not n.startswith(".")]
    return sorted(files)


def _paired(
    images_dir: epath.Path,
    masks_dir: epath.Path,
    read_mask: Callable[[epath.Path], np.ndarray],
    keys: Iterable[str] | None = None,
) -> list[Example]:
    """Pairs images and masks by name; raises ValueError listing every unmatched file.

    Args:
      images_dir: The images folder.
      masks_dir: The masks folder (PNG files).
      read_mask: Reads one mask file.
      keys: The names to pair (from a split list); None pairs every file of both folders.
    """
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"{images_dir} does not exist: the images are needed to train (in CVAT, export "
            "again with 'Save images' on, or copy the images there)."
        )
    image_files = _files_by_key(images_dir, IMAGE_SUFFIXES)
    mask_files = _files_by_key(masks_dir, (".png",))
    wanted = sorted(set(image_files) | set(mask_files)) if keys is None else list(keys)
    no_mask = [str(image_files.get(k, images_dir / k)) for k in wanted if k not in mask_files]
    no_image = [str(mask_files.get(k, masks_dir / k)) for k in wanted if k not in image_files]
    problems = []
    if no_mask:
        problems.append(
            f"{len(no_mask)} image(s) without a mask in {masks_dir} (annotate them, or remove "
            "them and their lines in the split lists):\n  " + shown(no_mask)
        )
    if no_image:
        problems.append(
            f"{len(no_image)} mask(s) or listed name(s) without an image in {images_dir} "
            "(.jpg, .jpeg or .png):\n  " + shown(no_image)
        )
    if problems:
        raise ValueError("\n".join(problems))
    return [
        Example(
            k,
            image_files[k],
            str(mask_files[k]),
            functools.partial(read_mask, mask_files[k]),
            mask_files[k],
        )
        for k in wanted
    ]


def _plain_layout(root: epath.Path) -> Layout:
    lists = _split_lists(_top_level_lists(root))
    names = _read_names(root / "classes.txt")
    return Layout(
        "plain",
        names,
        None,
        _grouped(root / "images", root / "masks", _index_mask, lists),
    )


def _top_level_lists(root: epath.Path) -> list[epath.Path]:
    """`train.txt`, `val.txt` ... at the top of a plain folder (not `classes.txt`)."""
    return [
        file
        for file in sorted(root.glob("*.txt"))
        if file.stem.lower() in SPLIT_NAMES or file.stem.lower() in _UNION_LISTS
    ]


def _voc_layout(root: epath.Path) -> Layout:
    lists = _split_lists(sorted((root / "ImageSets" / "Segmentation").glob("*.txt")))
    labelmap = root / "labelmap.txt"
    if labelmap.is_file():
        names, colors = _read_labelmap(labelmap)
        read_mask = functools.partial(_voc_mask, colors={tuple(c): i for i, c in enumerate(colors)})
    else:
        names, colors = _read_names(root / "classes.txt"), None
        read_mask = functools.partial(_voc_mask, colors=None)
    groups = _grouped(root / "JPEGImages", root / "SegmentationClass", read_mask, lists)
    return Layout("voc", names, colors, groups)


def _labelme_layout(root: epath.Path) -> Layout:
    names = _read_names(root / "class_names.txt")
    groups = {None: _paired(root / "JPEGImages", root / "SegmentationClassPNG", _index_mask)}
    return Layout("labelme", names, None, groups)


def _grouped(
    images_dir: epath.Path,
    masks_dir: epath.Path,
    read_mask: Callable[[epath.Path], np.ndarray],
    lists: dict[str, list[str]] | None,
) -> dict[str | None, list[Example]]:
    """The examples of each split list, or of the whole folder when it has no lists."""
    if lists is None:
        return {None: _paired(images_dir, masks_dir, read_mask)}
    every = sorted({key for keys in lists.values() for key in keys})
    by_key = {e.key: e for e in _paired(images_dir, masks_dir, read_mask, every)}
    return {name: [by_key[k] for k in keys] for name, keys in lists.items()}


def _split_lists(files: Sequence[epath.Path]) -> dict[str, list[str]] | None:
    """Each list file's names (one per line, blank lines skipped); None when there are none."""
    if not files:
        return None
    return {
        file.stem: [line.strip() for line in file.read_text().splitlines() if line.strip()]
        for file in files
    }


# --- Class names and colours ---------------------------------------------------------------


def _read_names(path: epath.Path) -> list[str] | None:
    """Class names, one per line (line i = class i); None if the file does not exist."""
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        raise ValueError(f"{path}: an empty line among the class names (line i names class i).")
    if len(names) > VOID:
        raise ValueError(f"{path}: {len(names)} classes; at most {VOID} fit in a uint8 mask.")
    return names


def _read_labelmap(path: epath.Path) -> tuple[list[str], list[list[int]]]:
    """CVAT's (Datumaro's) `labelmap.txt`: names and RGB colours in line order."""
    names, colors = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        try:
            color = [int(c) for c in fields[1].split(",")]
            if len(fields) != 4 or len(color) != 3 or not all(0 <= c <= 255 for c in color):
                raise ValueError
        except (IndexError, ValueError):
            raise ValueError(
                f"{path} line {number}: {line!r} is not 'name:r,g,b:parts:actions' (CVAT's "
                "labelmap format, each of r, g and b in 0-255)."
            ) from None
        if color in colors:
            raise ValueError(f"{path} line {number}: colour {color} is already a class above.")
        names.append(fields[0])
        colors.append(color)
    if not names:
        raise ValueError(f"{path} lists no classes.")
    return names, colors


def _palette_colors(palette: list[int] | None, num_classes: int) -> list[list[int]] | None:
    """The first masks' palette colours of the classes, if they tell the classes apart."""
    if palette is None or len(palette) < 3 * num_classes:
        return None
    colors = [palette[3 * i : 3 * i + 3] for i in range(num_classes)]
    return colors if len({tuple(c) for c in colors}) == num_classes else None


# --- Masks ----------------------------------------------------------------------------------


def _open_mask(path: epath.Path) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(path.read_bytes()))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"Mask {path} cannot be read: {e}") from e
    return image


def _index_mask(path: epath.Path) -> np.ndarray:
    """A palette (P) or greyscale (L) PNG of class indices."""
    image = _open_mask(path)
    if image.mode not in ("P", "L"):
        raise ValueError(
            f"Mask {path} has mode {image.mode}; masks here hold the class number in one "
            "channel (a palette or greyscale PNG), 255 for void."
        )
    return np.asarray(image, np.uint8)


def _voc_mask(path: epath.Path, colors: dict[tuple[int, ...], int] | None) -> np.ndarray:
    """Class indices of a VOC/CVAT mask: indices as they are, or RGB through the labelmap."""
    image = _open_mask(path)
    if image.mode in ("P", "L"):
        return np.asarray(image, np.uint8)
    if colors is None:
        raise ValueError(
            f"Mask {path} holds colours (mode {image.mode}) but the folder has no labelmap.txt "
            "to map them to classes: add CVAT's labelmap.txt ('name:r,g,b::' per class)."
        )
    rgb = np.asarray(image.convert("RGB"), np.uint32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    found, inverse = np.unique(codes, return_inverse=True)
    lookup = np.array([colors.get(_rgb(c), -1) for c in found])
    if (lookup < 0).any():
        missing = [_rgb(c) for c in found[lookup < 0]]
        raise ValueError(
            f"Mask {path} has colour(s) {', '.join(map(str, missing[:10]))} that labelmap.txt "
            "does not list: add them there (one class per colour) or repaint those pixels."
        )
    return lookup[inverse].reshape(codes.shape).astype(np.uint8)


def _rgb(code: int) -> tuple[int, int, int]:
    code = int(code)
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


# --- Checks ---------------------------------------------------------------------------------


def _check_examples(root: epath.Path, layout: Layout) -> list[int] | None:
    """Reads every mask and image header; raises one ValueError listing every problem.

    Sets `layout.num_values` (1 + the largest class value seen) and returns the palette of
    the first palette mask, if any.
    """
    num_classes = len(layout.class_names) if layout.class_names else None
    problems, largest, palette = [], 0, None
    seen = set()
    for example in (e for examples in layout.groups.values() for e in examples):
        if id(example) in seen:  # listed twice (in train and trainval, say)
            continue
        seen.add(id(example))
        try:
            size = images.displayed_size(example.image)
            mask = example.read_mask()
        except ValueError as e:
            problems.append(str(e))
            continue
        if mask.shape != size:
            problems.append(_size_problem(example, mask.shape, size))
            continue
        counts = np.bincount(mask.ravel(), minlength=256)
        counts[VOID] = 0
        values = np.flatnonzero(counts)
        if values.size:
            largest = max(largest, int(values[-1]))
        if num_classes is not None and values.size and values[-1] >= num_classes:
            bad = values[values >= num_classes].tolist()
            problems.append(
                f"Mask {example.mask_name} has values {bad[:10]} outside 0-{num_classes - 1} "
                f"and {VOID} (the class names list {num_classes} classes)."
            )
        if palette is None and example.mask_file is not None:
            palette = _mask_palette(example.mask_file)
    if problems:
        raise ValueError(f"{root}: {len(problems)} problem(s) with the data:\n  " + shown(problems))
    if not seen:
        raise ValueError(f"{root} holds no examples.\n{LAYOUTS_HELP}")
    layout.num_values = largest + 1
    return palette


def _size_problem(example: Example, mask: tuple[int, ...], image: tuple[int, int]) -> str:
    message = (
        f"Mask {example.mask_name} is {mask[1]}x{mask[0]} (WxH) but image {example.image} is "
        f"{image[1]}x{image[0]}"
    )
    if mask == image[::-1] and _turned(example.image):
        message += (
            " as shown: its EXIF orientation turns it. The mask must match the image as "
            "annotation tools show it (turned)"
        )
    return message + "."


def _turned(path: epath.Path) -> bool:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return images.orientation(image) != 1


def _mask_palette(path: epath.Path) -> list[int] | None:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return image.getpalette() if image.mode == "P" else None


# --- Splits ---------------------------------------------------------------------------------


def _assign_splits(
    root: epath.Path, groups: dict[str | None, list[Example]], val_fraction: float
) -> dict[str, list[Example]]:
    """Named lists become their splits; otherwise a hashed holdout makes the validation split."""
    named: dict[str, list[Example]] = {}
    others = []
    for name, examples in groups.items():
        split = SPLIT_NAMES.get((name or "").lower())
        if split is not None:
            named.setdefault(split, []).extend(examples)
        elif (name or "").lower() not in _UNION_LISTS:
            others.append(name)
    if len(groups) == 1:
        pool = next(iter(groups.values()))
        splits = {"train": [], "validation": []}
    elif "train" in named and not others:
        pool = named["train"] if "validation" not in named else []
        splits = {"train": [], "validation": named.get("validation", [])}
        if "test" in named:
            splits["test"] = named["test"]
        if "validation" in named:
            splits["train"] = named["train"]
    else:
        raise ValueError(
            f"{root}: split lists {sorted(str(n) for n in groups)}: name them train, val "
            "(or validation) and test, or keep a single list (a fraction of it is then held "
            "out for validation)."
        )
    for example in pool:
        splits["validation" if in_holdout(example.key, val_fraction) else "train"].append(example)
    for split in ("train", "validation"):
        if not splits[split]:
            raise ValueError(
                f"{root}: the {split} split is empty ({len(pool)} examples to split, "
                f"config.dataset.val_fraction={val_fraction}): add examples, change "
                "val_fraction, or give train and val lists."
            )
    return splits
