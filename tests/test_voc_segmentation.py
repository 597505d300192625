"""Tests for the voc_segmentation TFDS builder on a tiny fake VOCdevkit + SBD (offline)."""

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from fcn_jax.datasets import voc_segmentation

# Fake split lists. VOC id 2007_000001 is also in SBD train (VOC's mask must win in `aug`);
# 2007_000004 is in SBD train and VOC val (must be dropped from `aug`).
VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000004", "2007_000005", "2008_000006"]
SEG11VALID = ["2007_000004", "2008_000006"]
SBD_TRAIN = ["2007_000001", "2009_000010", "2009_000011", "2007_000004"]
SBD_VAL = ["2009_000012", "2009_000013"]
AUG = sorted((set(VOC_TRAIN) | set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC_VAL))


def _palette() -> list[int]:
    palette = np.zeros((256, 3), np.uint8)
    palette[1:21] = np.random.default_rng(1).integers(0, 256, (20, 3))
    palette[255] = (224, 224, 192)
    return palette.ravel().tolist()


def _write_jpeg(path: Path, rng: np.random.Generator, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def _make_mask(rng: np.random.Generator, height: int, width: int, void: bool) -> np.ndarray:
    mask = rng.integers(0, voc_segmentation.NUM_CLASSES, (height, width), dtype=np.uint8)
    if void:
        mask[0, :] = 255
        mask[:, -1] = 255
    return mask


def _write_png_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, mode="P")
    image.putpalette(_palette())
    image.save(path)


def _write_mat_mask(path: Path, mask: np.ndarray) -> None:
    """Writes an SBD-style cls/*.mat: a 1x1 MATLAB struct GTcls with a Segmentation field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gtcls = np.empty(
        (1, 1),
        dtype=[("Boundaries", object), ("Segmentation", object), ("CategoriesPresent", object)],
    )
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros((0, 0), np.uint8)
    gtcls[0, 0]["Boundaries"] = boundaries
    gtcls[0, 0]["Segmentation"] = mask
    gtcls[0, 0]["CategoriesPresent"] = np.unique(mask[mask > 0]).astype(np.uint8)[:, None]
    scipy.io.savemat(path, {"GTcls": gtcls})


def _make_fake_data(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """Writes VOCdevkit/, benchmark_RELEASE/ and seg11valid.txt; returns the masks written."""
    rng = np.random.default_rng(0)
    masks = {}
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, ids in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    for n, image_id in enumerate(VOC_TRAIN + VOC_VAL):
        height, width = 12 + n, 17 + 2 * n
        _write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", rng, height, width)
        masks["voc", image_id] = _make_mask(rng, height, width, void=True)
        _write_png_mask(voc / "SegmentationClass" / f"{image_id}.png", masks["voc", image_id])
    sbd = root / "benchmark_RELEASE" / "dataset"
    sbd.mkdir(parents=True)
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    for n, image_id in enumerate(SBD_TRAIN + SBD_VAL):
        height, width = 20 + n, 15 + n
        _write_jpeg(sbd / "img" / f"{image_id}.jpg", rng, height, width)
        masks["sbd", image_id] = _make_mask(rng, height, width, void=False)
        _write_mat_mask(sbd / "cls" / f"{image_id}.mat", masks["sbd", image_id])
    (root / "seg11valid.txt").write_text("\n".join(SEG11VALID) + "\n")
    return masks


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> tuple[Path, dict[tuple[str, str], np.ndarray]]:
    root = tmp_path_factory.mktemp("voc_manual")
    return root, _make_fake_data(root)


@pytest.fixture
def manual_copy(fake_data, tmp_path) -> Path:
    """A fresh copy of the fake data that a test may damage."""
    return Path(shutil.copytree(fake_data[0], tmp_path / "manual"))


def _build(config: str, data_dir: Path, manual_dir: Path) -> tfds.core.DatasetBuilder:
    builder = tfds.builder(f"voc_segmentation/{config}", data_dir=data_dir, try_gcs=False)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def _read_split(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, dict]:
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(dataset)}


def test_fake_mat_layout_matches_loadmat_access(tmp_path):
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    _write_mat_mask(tmp_path / "x.mat", mask)
    loaded = scipy.io.loadmat(tmp_path / "x.mat")["GTcls"][0]["Segmentation"][0]
    np.testing.assert_array_equal(loaded, mask)
    assert loaded.dtype == np.uint8


def test_metadata():
    assert voc_segmentation.NUM_CLASSES == len(voc_segmentation.CLASS_NAMES) == 21
    assert voc_segmentation.CLASS_NAMES[0] == "background"
    assert voc_segmentation.CLASS_NAMES[20] == "tvmonitor"
    builder = tfds.builder("voc_segmentation/voc2012", data_dir="/nonexistent", try_gcs=False)
    assert builder.info.metadata["class_names"] == list(voc_segmentation.CLASS_NAMES)
    assert str(builder.info.version) == "1.0.0"


def _check_examples(examples: dict[str, dict], ids, masks, source_of) -> None:
    assert sorted(examples) == sorted(f"{i}.jpg" for i in ids)
    for image_id in ids:
        ex = examples[f"{image_id}.jpg"]
        expected = masks[source_of(image_id), image_id]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (*expected.shape, 3)
        assert ex["segmentation_mask"].dtype == np.uint8
        assert ex["segmentation_mask"].shape == (*expected.shape, 1)
        np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], expected)


def test_voc2012_extracted(fake_data, tmp_path):
    manual, masks = fake_data
    builder = _build("voc2012", tmp_path / "data", manual)
    splits = builder.info.splits
    assert {s: splits[s].num_examples for s in splits} == {
        "train": 3,
        "validation": 3,
        "seg11valid": 2,
    }
    for split, ids in (("train", VOC_TRAIN), ("validation", VOC_VAL), ("seg11valid", SEG11VALID)):
        _check_examples(_read_split(builder, split), ids, masks, lambda _: "voc")
    example = _read_split(builder, "train")["2007_000001.jpg"]
    assert (example["segmentation_mask"] == 255).any()
    features = builder.info.features
    assert features["segmentation_mask"].shape == (None, None, 1)
    assert features["segmentation_mask"].np_dtype == np.uint8
    # A new builder on the same data_dir finds the prepared dataset and its metadata.
    reloaded = tfds.builder("voc_segmentation/voc2012", data_dir=tmp_path / "data", try_gcs=False)
    assert reloaded.is_prepared()
    assert reloaded.info.metadata["class_names"] == list(voc_segmentation.CLASS_NAMES)
    assert reloaded.info.metadata["ignore_label"] == 255


def test_voc2012_from_archives(fake_data, tmp_path):
    source, masks = fake_data
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "VOCtrainval_11-May-2012.tar", "w") as tar:
        tar.add(source / "VOCdevkit", arcname="VOCdevkit")
    shutil.copy(source / "seg11valid.txt", manual)
    builder = _build("voc2012", tmp_path / "data", manual)
    assert builder.info.splits["validation"].num_examples == 3
    _check_examples(_read_split(builder, "seg11valid"), SEG11VALID, masks, lambda _: "voc")


def test_sbd_from_archive(fake_data, tmp_path):
    source, masks = fake_data
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "benchmark.tgz", "w:gz") as tar:
        tar.add(source / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    builder = _build("sbd", tmp_path / "data", manual)
    assert builder.info.splits["train"].num_examples == 4
    assert builder.info.splits["validation"].num_examples == 2
    _check_examples(_read_split(builder, "train"), SBD_TRAIN, masks, lambda _: "sbd")
    _check_examples(_read_split(builder, "validation"), SBD_VAL, masks, lambda _: "sbd")


def test_aug(fake_data, tmp_path):
    manual, masks = fake_data
    builder = _build("aug", tmp_path / "data", manual)
    assert list(builder.info.splits) == ["train"]
    assert builder.info.splits["train"].num_examples == len(AUG) == 7
    _check_examples(
        _read_split(builder, "train"),
        AUG,
        masks,
        lambda i: "voc" if i in VOC_TRAIN else "sbd",  # VOC2012's mask wins.
    )


def _corrupt_jpeg(manual: Path) -> Path:
    path = manual / "VOCdevkit/VOC2012/JPEGImages/2007_000002.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return path


def _truncated_jpeg(manual: Path) -> Path:
    path = manual / "VOCdevkit/VOC2012/JPEGImages/2007_000002.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _mask_size(manual: Path) -> Path:
    path = manual / "VOCdevkit/VOC2012/SegmentationClass/2007_000003.png"
    _write_png_mask(path, np.zeros((5, 5), np.uint8))
    return path


def _mask_value(manual: Path) -> Path:
    path = manual / "VOCdevkit/VOC2012/SegmentationClass/2007_000003.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[2, 3] = 21
    _write_png_mask(path, mask)
    return path


def _missing_image(manual: Path) -> Path:
    path = manual / "VOCdevkit/VOC2012/JPEGImages/2008_000006.jpg"
    path.unlink()
    return path


def _missing_mask(manual: Path) -> Path:
    path = manual / "VOCdevkit/VOC2012/SegmentationClass/2007_000005.png"
    path.unlink()
    return path


@pytest.mark.parametrize(
    "damage, message",
    [
        (_corrupt_jpeg, "corrupt or truncated"),
        (_truncated_jpeg, "corrupt or truncated"),
        (_mask_size, "size"),
        (_mask_value, r"values \[21\]"),
        (_missing_image, "do not exist"),
        (_missing_mask, "do not exist"),
    ],
)
def test_bad_voc_input(manual_copy, tmp_path, damage, message):
    path = damage(manual_copy)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        _build("voc2012", tmp_path / "data", manual_copy)
    assert path.name in str(info.value)


def test_bad_sbd_mask_value(manual_copy, tmp_path):
    path = manual_copy / "benchmark_RELEASE/dataset/cls/2009_000012.mat"
    mask = np.full((8, 8), 3, np.uint8)
    mask[1, 1] = 100
    _write_mat_mask(path, mask)
    with pytest.raises(ValueError, match="2009_000012.mat") as info:
        _build("sbd", tmp_path / "data", manual_copy)
    assert "100" in str(info.value) or "size" in str(info.value)


def test_failed_build_is_not_prepared(manual_copy, tmp_path):
    _mask_value(manual_copy)
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError):
        _build("voc2012", data_dir, manual_copy)
    builder = tfds.builder("voc_segmentation/voc2012", data_dir=data_dir, try_gcs=False)
    assert not builder.is_prepared()
    assert not builder.data_path.exists()
    # Repairing the input and building again then succeeds.
    mask_path = manual_copy / "VOCdevkit/VOC2012/SegmentationClass/2007_000003.png"
    _write_png_mask(mask_path, np.asarray(Image.open(mask_path)) % 21)
    builder = _build("voc2012", data_dir, manual_copy)
    assert builder.is_prepared()


def test_nothing_usable_offline(tmp_path, monkeypatch):
    def offline(self, urls):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(voc_segmentation, "_reachable", lambda url: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "unrelated.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as info:
        _build("aug", tmp_path / "data", manual)
    message = str(info.value)
    assert "VOCtrainval_11-May-2012.tar" in message and "benchmark.tgz" in message
    assert str(manual) in message
    assert "seg11valid" not in message.split("\n")[0]  # aug does not need it.


def test_missing_manual_dir(tmp_path, monkeypatch):
    def no_network(self, urls):
        raise AssertionError(f"tried to download {urls}")

    monkeypatch.setattr(voc_segmentation, "_reachable", lambda url: False)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
    with pytest.raises(FileNotFoundError, match="seg11valid.txt") as info:
        _build("voc2012", tmp_path / "data", tmp_path / "does_not_exist")
    assert "does_not_exist" in str(info.value)
    assert "cannot connect" in str(info.value)


def test_manual_dir_is_used_without_network(fake_data, tmp_path, monkeypatch):
    def no_network(self, urls):
        raise AssertionError(f"tried to download {urls}")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
    builder = _build("sbd", tmp_path / "data", fake_data[0])
    assert builder.is_prepared()
