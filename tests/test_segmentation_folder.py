"""The segmentation_folder builder on folders written the way annotation tools write them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import custom
from fcn_jax import config_checks, input_pipeline
from fcn_jax.datasets import folder_layouts, segmentation_folder, voc_palette
from tools import make_custom_datasets as writer

COUNT = 8  # examples per folder: enough for both splits at VAL_FRACTION
VAL_FRACTION = 0.25


def _build(folder: Path, data_dir: Path, val_fraction: float = VAL_FRACTION):
    return segmentation_folder.builder(folder, data_dir, val_fraction)


def _read(builder) -> dict[str, dict[str, dict]]:
    """Split -> example name (file name without suffix) -> example."""
    return {
        split: {
            ex["file_name"].decode().rsplit(".", 1)[0]: ex
            for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        }
        for split in builder.info.splits
    }


def _assert_nothing_prepared(data_dir: Path) -> None:
    assert not data_dir.exists() or not any(data_dir.rglob("*")), list(data_dir.rglob("*"))


@pytest.mark.parametrize("layout", writer.LAYOUTS)
def test_each_layout_gives_the_masks_and_classes(layout, tmp_path):
    expected = writer.write(layout, tmp_path / layout, COUNT)
    builder = _build(tmp_path / layout, tmp_path / "data")
    splits = _read(builder)
    got = {name: ex for examples in splits.values() for name, ex in examples.items()}
    assert sorted(got) == sorted(expected)
    for name, mask in expected.items():
        np.testing.assert_array_equal(got[name]["segmentation_mask"][..., 0], mask)
        assert got[name]["image"].shape == (*mask.shape, 3)
    metadata = builder.info.metadata
    names = list(writer.CLASS_NAMES)
    if layout == "labelme":
        names[0] = "_background_"  # labelme2voc's name for class 0
    assert metadata["class_names"] == names and metadata["num_classes"] == 5
    layouts = {"cvat": "voc", "coco_cvat": "coco", "coco_roboflow": "coco"}
    assert metadata["ignore_label"] == 255 and metadata["layout"] == layouts.get(layout, layout)
    colors = {"cvat": writer.CVAT_COLORS, "labelme": voc_palette()[:5]}.get(layout)
    if colors is None:  # COCO has no colours; plain masks are greyscale
        assert "class_colors" not in metadata
    else:
        assert metadata["class_colors"] == np.asarray(colors).tolist()
    if layout == "coco_roboflow":  # Roboflow's own train/valid folders are the splits
        validation = {n for n in expected if int(n.split("_")[1]) % 5 == 4}
        assert set(splits["validation"]) == validation
    else:  # a single list (CVAT's default.txt) or none: a holdout by name
        held = {n for n in expected if folder_layouts.in_holdout(n, VAL_FRACTION)}
        assert set(splits["validation"]) == held and 0 < len(held) < COUNT


def test_holdout_is_stable_when_images_are_added(tmp_path):
    folder, data_dir = tmp_path / "plain", tmp_path / "data"
    writer.write("plain", folder, COUNT)
    before = {s: set(ex) for s, ex in _read(_build(folder, data_dir)).items()}
    writer.write("plain", folder, 12, start=COUNT)
    after = {s: set(ex) for s, ex in _read(_build(folder, data_dir)).items()}
    assert sum(map(len, after.values())) == COUNT + 12  # the folder changed: built again
    for split in ("train", "validation"):
        assert before[split] <= after[split]
    assert len(after["validation"]) > len(before["validation"])


def test_two_folders_do_not_share_prepared_data(tmp_path):
    data_dir = tmp_path / "data"
    first = writer.write("plain", tmp_path / "a" / "shapes", COUNT)
    second = writer.write("plain", tmp_path / "b" / "shapes", COUNT, start=100)
    a = _build(tmp_path / "a" / "shapes", data_dir)
    b = _build(tmp_path / "b" / "shapes", data_dir)
    assert a.data_dir != b.data_dir
    assert {n for s in _read(a).values() for n in s} == set(first)
    assert {n for s in _read(b).values() for n in s} == set(second)


def test_changed_folder_is_prepared_again(tmp_path):
    folder, data_dir = tmp_path / "plain", tmp_path / "data"
    expected = writer.write("plain", folder, COUNT)
    _build(folder, data_dir)
    name = sorted(expected)[0]
    changed = np.where(expected[name] == 255, 255, 4 - np.minimum(expected[name], 4))
    Image.fromarray(changed.astype(np.uint8)).save(folder / "masks" / f"{name}.png")
    (folder / "images" / f"{sorted(expected)[1]}.jpg").unlink()
    (folder / "masks" / f"{sorted(expected)[1]}.png").unlink()
    got = {n: ex for s in _read(_build(folder, data_dir)).values() for n, ex in s.items()}
    assert len(got) == COUNT - 1
    np.testing.assert_array_equal(got[name]["segmentation_mask"][..., 0], changed)


def test_moved_folder_reads_the_prepared_data(tmp_path, caplog):
    folder, data_dir = tmp_path / "plain", tmp_path / "data"
    expected = writer.write("plain", folder, COUNT)
    prepared = _build(folder, data_dir)
    shutil.move(folder, tmp_path / "elsewhere")
    segmentation_folder.validate_source(str(folder), str(data_dir), VAL_FRACTION)
    with caplog.at_level("WARNING"):
        again = _build(folder, data_dir)
    assert "cannot be checked" in caplog.text
    assert again.data_dir == prepared.data_dir
    assert {n for s in _read(again).values() for n in s} == set(expected)
    # Never prepared and not there: an error naming the folder and the field.
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _build(tmp_path / "nowhere", data_dir)
    with pytest.raises(ValueError, match=r"config\.dataset\.manual_dir=.*nowhere.*does not"):
        segmentation_folder.validate_source(str(tmp_path / "nowhere"), str(data_dir), 0.1)


def test_custom_config_trains_from_the_folder(tmp_path):
    writer.write("cvat", tmp_path / "cvat", COUNT)
    config = custom.get_config()
    config.dataset.manual_dir = str(tmp_path / "cvat")
    config.dataset.data_dir = str(tmp_path / "data")
    config.dataset.val_fraction = VAL_FRACTION
    config.dataset.canvas_size = (96, 96)
    config.batch_size = 4
    config_checks.validate_config(config)
    assert input_pipeline.dataset_classes(config).names == tuple(writer.CLASS_NAMES)
    assert (
        input_pipeline.num_examples(config, "train")
        + input_pipeline.num_examples(config, "validation")
        == COUNT
    )
    batch = next(input_pipeline.create_train_iterator(config))
    assert batch["image"].shape == (4, 96, 96, 3) and batch["label"].max() <= 255
    # The fields are checked without TensorFlow; the folder when the dataset is opened.
    config.dataset.manual_dir = None
    with pytest.raises(ValueError, match=r"config\.dataset\.manual_dir is not set"):
        config_checks.validate_config(config)
    config.dataset.manual_dir = str(tmp_path / "cvat")
    config.dataset.val_fraction = 1.0
    with pytest.raises(ValueError, match=r"config\.dataset\.val_fraction=1\.0"):
        config_checks.validate_config(config)
    config.dataset.val_fraction = VAL_FRACTION
    config.dataset.manual_dir = str(tmp_path / "no")
    with pytest.raises(ValueError, match=r"config\.dataset\.manual_dir=.*no does not exist"):
        input_pipeline.dataset_classes(config)


# --- Bad data: one error naming every file at fault, nothing left in data_dir ----------------


def _unmatched(folder: Path) -> list[str]:
    (folder / "masks" / "shape_0001.png").unlink()
    (folder / "masks" / "shape_0002.png").unlink()
    (folder / "images" / "shape_0003.jpg").unlink()
    return ["shape_0001.jpg", "shape_0002.jpg", "shape_0003.png"]


def _mask_size(folder: Path) -> list[str]:
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(folder / "masks" / "shape_0004.png")
    return ["shape_0004.png", "7x5"]


def _class_value(folder: Path) -> list[str]:
    mask = np.asarray(Image.open(folder / "masks" / "shape_0002.png")).copy()
    mask[0, 0], mask[1, 1] = 7, 9
    Image.fromarray(mask).save(folder / "masks" / "shape_0002.png")
    return ["shape_0002.png", "[7, 9]", "outside 0-4"]


def _unreadable_image(folder: Path) -> list[str]:
    (folder / "images" / "shape_0005.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return ["shape_0005.jpg", "cannot be read"]


def _truncated_image(folder: Path) -> list[str]:
    path = folder / "images" / "shape_0006.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header still reads
    return ["shape_0006.jpg", "corrupt or truncated"]


@pytest.mark.parametrize(
    "damage", [_unmatched, _mask_size, _class_value, _unreadable_image, _truncated_image]
)
def test_bad_plain_data(damage, tmp_path):
    folder, data_dir = tmp_path / "plain", tmp_path / "data"
    writer.write("plain", folder, COUNT)
    named = damage(folder)
    with pytest.raises(ValueError) as info:
        _build(folder, data_dir)
    for part in named:
        assert part in str(info.value)
    _assert_nothing_prepared(data_dir)


def test_colour_missing_from_the_labelmap(tmp_path):
    folder, data_dir = tmp_path / "cvat", tmp_path / "data"
    writer.write("cvat", folder, COUNT)
    path = folder / "SegmentationClass" / "shape_0003.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[2, 2] = (1, 2, 3)
    Image.fromarray(mask).save(path)
    with pytest.raises(ValueError, match=r"shape_0003\.png has colour\(s\) \(1, 2, 3\)"):
        _build(folder, data_dir)
    _assert_nothing_prepared(data_dir)


def _coco(tmp_path: Path) -> tuple[Path, dict, dict[str, np.ndarray]]:
    folder = tmp_path / "coco"
    expected = writer.write("coco_cvat", folder, COUNT)
    path = folder / "annotations" / "instances_default.json"
    return path, json.loads(path.read_text()), expected


def test_coco_annotation_with_unknown_image_or_category(tmp_path):
    path, document, _ = _coco(tmp_path)
    document["annotations"][0]["image_id"] = 999
    document["annotations"][1]["category_id"] = 77
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError) as info:
        _build(path.parent.parent, tmp_path / "data")
    message = str(info.value)
    assert "instances_default.json" in message
    assert f"{document['annotations'][0]['id']} (image 999)" in message
    assert f"{document['annotations'][1]['id']} (category 77)" in message
    _assert_nothing_prepared(tmp_path / "data")


def test_coco_polygon_outside_the_image_is_clipped(tmp_path):
    path, document, expected = _coco(tmp_path)
    entry = document["images"][0]
    height, width = entry["height"], entry["width"]
    # A box from outside the top-left corner to (10, 6), painted over everything before it.
    polygon = [-20.0, -30.0, 10.0, -30.0, 10.0, 6.0, -20.0, 6.0]
    document["annotations"].append(
        {"id": 1000, "image_id": entry["id"], "category_id": 2, "segmentation": [polygon],
         "area": 60.0, "bbox": [0.0, 0.0, 10.0, 6.0], "iscrowd": 0}
    )  # fmt: skip
    path.write_text(json.dumps(document))
    got = {
        n: ex
        for s in _read(_build(path.parent.parent, tmp_path / "data")).values()
        for n, ex in s.items()
    }
    name = entry["file_name"].rsplit(".", 1)[0]
    want = expected[name].copy()
    want[:6, :10] = 2  # the part inside the image, over what was there
    assert want.shape == (height, width)
    np.testing.assert_array_equal(got[name]["segmentation_mask"][..., 0], want)


def test_coco_images_missing_or_not_listed(tmp_path):
    path, document, _ = _coco(tmp_path)
    images = path.parent.parent / "images" / "default"
    (images / "shape_0002.jpg").unlink()
    shutil.copy(images / "shape_0003.jpg", images / "extra.jpg")
    with pytest.raises(ValueError) as info:
        _build(path.parent.parent, tmp_path / "data")
    assert "shape_0002.jpg" in str(info.value) and "extra.jpg" in str(info.value)
    _assert_nothing_prepared(tmp_path / "data")


def test_split_lists_become_the_splits(tmp_path):
    folder = tmp_path / "cvat"
    expected = writer.write("cvat", folder, COUNT)
    lists = folder / "ImageSets" / "Segmentation"
    (lists / "default.txt").unlink()
    names = sorted(expected)
    (lists / "Train.txt").write_text("\n".join(names[:5]) + "\n")  # CVAT keeps subset names
    (lists / "Validation.txt").write_text("\n".join(names[5:7]) + "\n")
    (lists / "test.txt").write_text(names[7] + "\n")
    splits = _read(_build(folder, tmp_path / "data"))
    assert {s: sorted(ex) for s, ex in splits.items()} == {
        "train": names[:5],
        "validation": names[5:7],
        "test": names[7:],
    }
    (lists / "extra.txt").write_text(names[0] + "\n")
    with pytest.raises(ValueError, match="name them train, val"):
        _build(folder, tmp_path / "data")


def _exif_jpeg(path: Path, shown: np.ndarray) -> None:
    """Saves `shown` stored sideways with EXIF orientation 6 (viewers turn it back)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to show
    Image.fromarray(np.rot90(shown, 1).copy()).save(path, quality=100, exif=exif)


def test_exif_rotated_jpeg_lines_up_with_its_mask(tmp_path):
    folder, data_dir = tmp_path / "plain", tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    shown = np.zeros((40, 64, 3), np.uint8)
    shown[:, 32:] = 255  # right half bright, as shown
    mask = np.zeros((40, 64), np.uint8)
    mask[:, 32:] = 1
    for name in ("a", "b", "c", "d", "e", "f"):
        _exif_jpeg(folder / "images" / f"{name}.jpg", shown)
        Image.fromarray(mask).save(folder / "masks" / f"{name}.png")
    got = {n: ex for s in _read(_build(folder, data_dir, 0.5)).values() for n, ex in s.items()}
    for example in got.values():
        assert example["image"].shape == (40, 64, 3)
        np.testing.assert_array_equal(example["segmentation_mask"][..., 0], mask)
        assert np.abs(example["image"].astype(int) - shown).mean() < 4
    # A mask drawn on the stored (sideways) pixels does not line up: the error says why.
    Image.fromarray(np.rot90(mask, 1).copy()).save(folder / "masks" / "c.png")
    with pytest.raises(ValueError, match=r"c\.png.*EXIF orientation"):
        _build(folder, tmp_path / "other_data", 0.5)


def test_custom_config_starts():
    assert custom.get_config().init.kind == "vgg16"
    scratch = custom.get_config("scratch")
    assert scratch.init.kind == "random" and scratch.optimizer.name == "adam"
    assert scratch.dataset.name == "segmentation_folder" and scratch.model_geometry == "simple"
    with pytest.raises(ValueError, match="custom.py:imagenet"):
        custom.get_config("imagenet")


def test_writer_command_line(tmp_path, capsys):
    writer.main(["--layout=labelme", "--count=2", str(tmp_path / "out")])
    assert "wrote 2 labelme examples" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "SegmentationClassPNG").iterdir()) == [
        "shape_0000.png",
        "shape_0001.png",
    ]


def test_voc_layout_with_palette_masks_and_no_labelmap(tmp_path):
    folder = tmp_path / "voc"
    expected = writer.write("cvat", folder, COUNT)
    (folder / "labelmap.txt").unlink()
    palette = voc_palette()
    for name, mask in expected.items():  # VOC's own masks: class indices with its palette
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette.ravel().tolist())
        png.save(folder / "SegmentationClass" / f"{name}.png")
    builder = _build(folder, tmp_path / "data")
    got = {n: ex for s in _read(builder).values() for n, ex in s.items()}
    for name, mask in expected.items():
        np.testing.assert_array_equal(got[name]["segmentation_mask"][..., 0], mask)
    assert builder.info.metadata["class_names"] == [f"class_{i}" for i in range(5)]
    assert builder.info.metadata["class_colors"] == palette[:5].tolist()


def test_cvat_export_without_images(tmp_path):
    folder = tmp_path / "cvat"
    writer.write("cvat", folder, COUNT)
    shutil.rmtree(folder / "JPEGImages")
    with pytest.raises(FileNotFoundError, match="JPEGImages does not exist.*'Save images'"):
        _build(folder, tmp_path / "data")
    _assert_nothing_prepared(tmp_path / "data")
