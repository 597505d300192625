"""COCO instance JSON, as CVAT and Roboflow export it, read as a user's folder.

CVAT ("COCO 1.0") writes `annotations/instances_<split>.json` with the images in
`images/<split>/` (older releases: `images/`); Roboflow ("COCO Segmentation") writes
`<split>/_annotations.coco.json` beside the split's images. Unlabelled pixels are class 0
`background`, categories in ascending id order are classes 1..K, and annotations are painted
in the file's order, a later one over an earlier one. pycocotools draws polygons (clipping
what lies outside the image) and RLE masks (crowd, as CVAT writes masks).
"""

import functools
import json
from collections.abc import Sequence

import numpy as np
from absl import logging
from etils import epath
from pycocotools import mask as coco_mask

from fcn_jax.datasets.folder_examples import IMAGE_SUFFIXES, Example, Layout, shown


def read_coco(
    root: epath.Path, cvat: Sequence[epath.Path], roboflow: Sequence[epath.Path]
) -> Layout:
    """Reads COCO instance files, the images beside them (Roboflow) or under images/ (CVAT).

    Args:
      root: The folder.
      cvat: Its `annotations/instances_<split>.json` files.
      roboflow: Its `<split>/_annotations.coco.json` files.

    Returns:
      The layout "coco", one group of examples per file, named by its split.

    Raises:
      ValueError: listing every image listed but missing, image not listed, and annotation
        naming an unknown image or category, each with its file.
    """
    files: dict[str, tuple[epath.Path, list[epath.Path]]] = {}
    for path in cvat:
        split = path.stem.removeprefix("instances_")
        files[split] = (path, [root / "images" / split, root / "images"])
    for path in roboflow:
        split = path.parent.name if path.parent != root else "default"
        files[split] = (path, [path.parent])
    documents = {split: _load_json(path) for split, (path, _) in files.items()}
    categories = _categories(documents, {s: str(p) for s, (p, _) in files.items()})
    class_of = {cat_id: index + 1 for index, cat_id in enumerate(sorted(categories))}
    names = ["background"] + [categories[cat_id] for cat_id in sorted(categories)]
    groups: dict[str | None, list[Example]] = {}
    listed: set[str] = set()
    problems: list[str] = []
    for split, (path, folders) in files.items():
        examples, found = _examples(path, folders, documents[split], class_of, problems)
        groups[split] = examples
        listed |= found
    folders = sorted({str(f) for _, candidates in files.values() for f in candidates})
    extra = [
        str(f)
        for folder in map(epath.Path, folders)
        if folder.is_dir()
        for f in sorted(folder.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES and str(f) not in listed
    ]
    if extra:
        problems.append(
            f"{len(extra)} image(s) that no COCO file lists, so without a mask (annotate "
            "them, or remove them):\n  " + shown(extra)
        )
    if problems:
        raise ValueError("\n".join(problems))
    return Layout("coco", names, None, groups)


def _load_json(path: epath.Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    missing = [key for key in ("images", "annotations", "categories") if key not in document]
    if missing:
        raise ValueError(f"{path} has no {missing} list: not a COCO instances file.")
    return document


def _categories(documents: dict[str, dict], paths: dict[str, str]) -> dict[int, str]:
    """Category id -> name, the same in every file, without Roboflow's grouping root.

    Roboflow adds a category named after the project that every class names as its
    supercategory and that no annotation uses: it is not a class.
    """
    tables = {
        split: {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        for split, doc in documents.items()
    }
    first = next(iter(tables))
    for split, table in tables.items():
        if table != tables[first]:
            raise ValueError(
                f"{paths[split]} and {paths[first]} list different categories: export every "
                "split with the same labels."
            )
    categories = tables[first]
    parents = {
        str(c.get("supercategory"))
        for doc in documents.values()
        for c in doc["categories"]
        if c.get("supercategory")
    }
    used = {a.get("category_id") for doc in documents.values() for a in doc["annotations"]}
    roots = [i for i, name in categories.items() if name in parents and i not in used]
    if roots and len(roots) < len(categories):
        logging.info("COCO categories %s group the others and are not classes.", roots)
        categories = {i: n for i, n in categories.items() if i not in roots}
    return categories


def _examples(
    path: epath.Path,
    folders: Sequence[epath.Path],
    document: dict,
    class_of: dict[int, int],
    problems: list[str],
) -> tuple[list[Example], set[str]]:
    """The examples of one COCO file; appends its problems (each naming the file) to problems."""
    entries = {}
    missing = []
    for entry in document["images"]:
        candidates = [folder / entry["file_name"] for folder in folders]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            missing.append(str(candidates[0]))
        else:
            entries[entry["id"]] = (entry, image)
    if missing:
        problems.append(
            f"{len(missing)} image(s) that {path} lists do not exist:\n  " + shown(missing)
        )
    annotations: dict[int, list[dict]] = {image_id: [] for image_id in entries}
    image_ids = {entry["id"] for entry in document["images"]}
    unknown_image, unknown_category = [], []
    for annotation in document["annotations"]:
        if annotation.get("category_id") not in class_of:
            unknown_category.append(
                f"{annotation.get('id')} (category {annotation.get('category_id')})"
            )
        image_id = annotation.get("image_id")
        if image_id in annotations:
            annotations[image_id].append(annotation)
        elif image_id not in image_ids:
            unknown_image.append(f"{annotation.get('id')} (image {image_id})")
    if unknown_image:
        problems.append(
            f"{path}: {len(unknown_image)} annotation(s) point at an image id the file does not "
            "list:\n  " + shown(unknown_image)
        )
    if unknown_category:
        problems.append(
            f"{path}: {len(unknown_category)} annotation(s) name a category id the file does "
            "not list:\n  " + shown(unknown_category)
        )
    examples = []
    for image_id, (entry, image) in entries.items():
        name = f"{path} image {entry['file_name']}"
        read = functools.partial(
            _paint,
            name,
            annotations[image_id],
            int(entry["height"]),
            int(entry["width"]),
            class_of,
        )
        key = str(epath.Path(entry["file_name"]).with_suffix(""))
        examples.append(Example(key, image, name, read))
    return examples, {str(image) for _, image in entries.values()}


def _paint(
    name: str, annotations: list[dict], height: int, width: int, class_of: dict[int, int]
) -> np.ndarray:
    """Paints the annotations of one image in order on a background of class 0."""
    mask = np.zeros((height, width), np.uint8)
    for annotation in annotations:
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if len(p) >= 6]  # 3+ points make an area
            if not polygons:
                continue  # a box alone: no pixels to paint
            rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            if list(segmentation.get("size", [])) != [height, width]:
                raise ValueError(
                    f"{name}: annotation {annotation.get('id')} has an RLE of size "
                    f"{segmentation.get('size')} but the image is {height}x{width} (HxW)."
                )
            rle = segmentation
            if isinstance(rle["counts"], list):
                rle = coco_mask.frPyObjects(rle, height, width)
        else:
            raise ValueError(
                f"{name}: annotation {annotation.get('id')} has no polygon or RLE segmentation."
            )
        mask[coco_mask.decode(rle).astype(bool)] = class_of[annotation["category_id"]]
    return mask
