"""Writes the synthetic shapes as a user's folder, in the layout an annotation tool exports.

    python tools/make_custom_datasets.py --layout=cvat --count=60 /tmp/shapes_cvat

Layouts (docs/own_data.md shows the trees), each written the way its tool writes it:

* `plain`: images/*.jpg, masks/*.png (greyscale class numbers, 255 void), classes.txt.
* `cvat`: CVAT "Segmentation mask 1.1" with images: JPEGImages/, SegmentationClass/ (RGB
  colours of labelmap.txt), SegmentationObject/, ImageSets/Segmentation/default.txt.
* `labelme`: labelme2voc.py output: JPEGImages/, SegmentationClass/*.npy (-1 ignore),
  SegmentationClassPNG/ (VOC palette, 255 ignore), SegmentationClassVisualization/,
  class_names.txt (no final newline).
* `coco_cvat`: CVAT "COCO 1.0": annotations/instances_default.json (a mask as an uncompressed
  RLE with iscrowd 1, one per class present) and images/default/.
* `coco_roboflow`: Roboflow "COCO Segmentation": train/ and valid/, each with its images and
  _annotations.coco.json (polygons; a project category 0 above the classes).

The examples are `fcn_jax.datasets.synthetic_shapes` train examples `start` ... `start +
count - 1`, named shape_0000 ...; layouts without void (CVAT's masks, COCO) turn void into
background. `write` returns the masks a reader must get back.
"""

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere
from fcn_jax.datasets import synthetic_shapes, voc_palette  # noqa: E402
from fcn_jax.losses import VOID  # noqa: E402

LAYOUTS = ("plain", "cvat", "labelme", "coco_cvat", "coco_roboflow")
CLASS_NAMES = list(synthetic_shapes.CLASS_NAMES)
# CVAT gives each label a colour of its own; background is black.
CVAT_COLORS = [(0, 0, 0), (250, 50, 83), (51, 221, 255), (245, 147, 49), (131, 224, 112)]


def write(layout: str, folder: pathlib.Path, count: int, start: int = 0) -> dict[str, np.ndarray]:
    """Writes `count` examples into `folder` in `layout`, adding to what is there.

    Returns:
      The name of each example written -> the uint8 (H, W) mask a reader must get.
    """
    examples = {}
    for index in range(start, start + count):
        image, mask = synthetic_shapes.generate_example("train", index)
        examples[f"shape_{index:04d}"] = (image, mask[..., 0])
    folder.mkdir(parents=True, exist_ok=True)
    return WRITERS[layout](folder, examples)


def _save(array: np.ndarray, path: pathlib.Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def _without_void(mask: np.ndarray) -> np.ndarray:
    return np.where(mask == VOID, 0, mask).astype(np.uint8)


def _plain(folder, examples):
    (folder / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for name, (image, mask) in examples.items():
        _save(image, folder / "images" / f"{name}.jpg", quality=95)
        _save(mask, folder / "masks" / f"{name}.png")
    return {name: mask for name, (_, mask) in examples.items()}


def _cvat(folder, examples):
    lines = ["# label:color_rgb:parts:actions"]
    lines += [
        f"{n}:{','.join(map(str, c))}::" for n, c in zip(CLASS_NAMES, CVAT_COLORS, strict=True)
    ]
    (folder / "labelmap.txt").write_text("\n".join(lines) + "\n")
    colors, instance_colors = np.array(CVAT_COLORS, np.uint8), voc_palette()
    expected = {}
    for name, (image, mask) in examples.items():
        labels = _without_void(mask)
        _save(image, folder / "JPEGImages" / f"{name}.jpg", quality=95)
        _save(colors[labels], folder / "SegmentationClass" / f"{name}.png")
        _save(instance_colors[labels], folder / "SegmentationObject" / f"{name}.png")
        expected[name] = labels
    split_list = folder / "ImageSets" / "Segmentation" / "default.txt"
    split_list.parent.mkdir(parents=True, exist_ok=True)
    old = split_list.read_text() if split_list.exists() else ""
    split_list.write_text(old + "".join(f"{name}\n" for name in examples))
    return expected


def _labelme(folder, examples):
    (folder / "class_names.txt").write_text("\n".join(["_background_", *CLASS_NAMES[1:]]))
    palette = voc_palette()
    for name, (image, mask) in examples.items():
        _save(image, folder / "JPEGImages" / f"{name}.jpg", quality=95)
        labels = np.where(mask == VOID, -1, mask).astype(np.int32)
        (folder / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        np.save(folder / "SegmentationClass" / f"{name}.npy", labels)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette.ravel().tolist())
        (folder / "SegmentationClassPNG").mkdir(parents=True, exist_ok=True)
        png.save(folder / "SegmentationClassPNG" / f"{name}.png")
        overlay = (0.5 * image + 0.5 * palette[mask]).astype(np.uint8)
        _save(overlay, folder / "SegmentationClassVisualization" / f"{name}.jpg")
    return {name: mask for name, (_, mask) in examples.items()}


def _coco_document(categories: list[dict]) -> dict:
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": categories,
        "images": [],
        "annotations": [],
    }


def _image_entry(document: dict, file_name: str, image: np.ndarray) -> int:
    image_id = len(document["images"]) + 1
    document["images"].append(
        {
            "id": image_id,
            "width": image.shape[1],
            "height": image.shape[0],
            "file_name": file_name,
            "license": 0,
            "flickr_url": "",
            "coco_url": "",
            "date_captured": 0,
        }
    )
    return image_id


def _rle(region: np.ndarray) -> dict:
    """An uncompressed COCO RLE: run lengths in column-major order, starting with zeros."""
    flat = region.T.ravel().astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": list(region.shape)}


def _run_polygons(region: np.ndarray) -> list[list[float]]:
    """The region as one rectangle polygon per horizontal run of pixels (exact when drawn)."""
    polygons = []
    for y in range(region.shape[0]):
        row = np.concatenate([[0], region[y].astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(row))
        for x0, x1 in zip(edges[::2], edges[1::2], strict=True):
            polygons.append([float(v) for v in (x0, y, x1, y, x1, y + 1, x0, y + 1)])
    return polygons


def _coco_annotations(document: dict, image_id: int, labels: np.ndarray, polygons: bool) -> None:
    for cls in range(1, len(CLASS_NAMES)):
        region = labels == cls
        if not region.any():
            continue
        ys, xs = np.nonzero(region)
        bbox = [
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        ]
        document["annotations"].append(
            {
                "id": len(document["annotations"]) + 1,
                "image_id": image_id,
                "category_id": cls,
                "segmentation": _run_polygons(region) if polygons else _rle(region),
                "area": float(region.sum()),
                "bbox": bbox,
                "iscrowd": 0 if polygons else 1,
                "attributes": {"occluded": False},
            }
        )


def _json_update(path: pathlib.Path, document: dict) -> None:
    """Writes `document`, after the images and annotations already in `path`."""
    if path.exists():
        old = json.loads(path.read_text())
        shift_image, shift_annotation = len(old["images"]), len(old["annotations"])
        for entry in document["images"]:
            entry["id"] += shift_image
        for annotation in document["annotations"]:
            annotation["id"] += shift_annotation
            annotation["image_id"] += shift_image
        document["images"] = old["images"] + document["images"]
        document["annotations"] = old["annotations"] + document["annotations"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def _coco_cvat(folder, examples):
    categories = [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(CLASS_NAMES)][1:]
    document = _coco_document(categories)
    expected = {}
    for name, (image, mask) in examples.items():
        _save(image, folder / "images" / "default" / f"{name}.jpg", quality=95)
        labels = _without_void(mask)
        _coco_annotations(document, _image_entry(document, f"{name}.jpg", image), labels, False)
        expected[name] = labels
    _json_update(folder / "annotations" / "instances_default.json", document)
    return expected


def _coco_roboflow(folder, examples):
    categories = [{"id": 0, "name": "shapes", "supercategory": "none"}] + [
        {"id": i, "name": n, "supercategory": "shapes"} for i, n in enumerate(CLASS_NAMES)
    ][1:]
    documents = {"train": _coco_document(categories), "valid": _coco_document(categories)}
    expected = {}
    for name, (image, mask) in examples.items():
        number = int(name.removeprefix("shape_"))
        split = "valid" if number % 5 == 4 else "train"
        file_name = f"{name}_jpg.rf.{number:08x}.jpg"  # Roboflow renames each exported image
        _save(image, folder / split / file_name, quality=95)
        labels = _without_void(mask)
        image_id = _image_entry(documents[split], file_name, image)
        _coco_annotations(documents[split], image_id, labels, True)
        expected[file_name.removesuffix(".jpg")] = labels
    for split, document in documents.items():
        _json_update(folder / split / "_annotations.coco.json", document)
    return expected


WRITERS = {
    "plain": _plain,
    "cvat": _cvat,
    "labelme": _labelme,
    "coco_cvat": _coco_cvat,
    "coco_roboflow": _coco_roboflow,
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=pathlib.Path, help="where to write")
    parser.add_argument("--layout", choices=LAYOUTS, required=True)
    parser.add_argument("--count", type=int, default=60, help="how many examples")
    parser.add_argument("--start", type=int, default=0, help="the first example's number")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")
    write(args.layout, args.folder, args.count, args.start)
    print(f"wrote {args.count} {args.layout} examples to {args.folder}")


if __name__ == "__main__":
    main(sys.argv[1:])
