"""PASCAL VOC 2012 semantic segmentation as a TFDS dataset (`voc_segmentation`).

Three configs, the data sets of the FCN paper (see `docs/voc_data.md`):

* `voc2012`: VOC2012 `train` (1,464), `validation` (1,449) and `seg11valid` (736 ids of the
  VOC2011 segmentation val set that are not in SBD train, read from the VOC2012 folders).
* `sbd`: the Semantic Boundaries Dataset (Hariharan et al. 2011), `train` (8,498) and
  `validation` (2,857).
* `aug`: `train` = SBD train + SBD val + VOC2012 train, minus every VOC2012 val id (10,582);
  VOC2012's mask is used for an id present in both.

Masks hold class indices 0-20 and 255 (void / object boundary), shape (H, W, 1), uint8.
Every image is decoded and every mask checked while generating: a corrupt image, a mask whose
size differs from its image, a mask value outside 0-20 and 255, or a listed id without its
files stops the build with an error naming the file.
"""

import hashlib
import io
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from fcn_jax.datasets import features, images
from fcn_jax.losses import VOID

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = 21

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = (
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
    "benchmark.tgz"
)
SEG11VALID_URL = (
    "https://raw.githubusercontent.com/shelhamer/fcn.berkeleyvision.org/master/data/pascal/"
    "seg11valid.txt"
)
# No sha256 of benchmark.tgz is published, so TFDS cannot check it: its md5 (torchvision's
# SBDataset) is checked here after a download.
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"


class _Source(NamedTuple):
    """One input of the builder and the forms the manual directory may hold it in."""

    url: str
    archive: str  # File name of the download (archive or plain file) in the manual dir.
    extracted: str  # Path, relative to the manual dir or the extracted archive, that we use.


_SOURCES = {
    "voc2012": _Source(VOC_URL, "VOCtrainval_11-May-2012.tar", "VOCdevkit/VOC2012"),
    "sbd": _Source(SBD_URL, "benchmark.tgz", "benchmark_RELEASE/dataset"),
    "seg11valid": _Source(SEG11VALID_URL, "seg11valid.txt", "seg11valid.txt"),
}

_CONFIG_SOURCES = {
    "voc2012": ("voc2012", "seg11valid"),
    "sbd": ("sbd",),
    "aug": ("voc2012", "sbd"),
}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put into the manual directory (by default `<data_dir>/downloads/manual/`), as archives or
extracted, whatever the config needs:

* `voc2012` and `aug`: `VOCtrainval_11-May-2012.tar` (1,999,639,040 bytes, from
  http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ or the mirror
  http://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar), or its extracted
  `VOCdevkit/VOC2012/` folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/).
* `sbd` and `aug`: SBD `benchmark.tgz` (about 1.4 GB, from
  http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/), or its
  extracted `benchmark_RELEASE/dataset/` folder (img/, cls/, train.txt, val.txt).
* `voc2012`: `seg11valid.txt` (736 ids, from
  https://raw.githubusercontent.com/shelhamer/fcn.berkeleyvision.org/master/data/pascal/).

What is found there is used without touching the network; what is missing is downloaded.
"""


class _Item(NamedTuple):
    """One example to generate: its id and where its image and mask come from."""

    image_id: str
    image: epath.Path
    mask: epath.Path
    mask_format: str  # "png" (VOC palette PNG) or "mat" (SBD GTcls struct).


class VocSegmentation(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 / SBD semantic segmentation (images, class-index masks)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: configs voc2012, sbd, aug."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name="voc2012",
            description="VOC2012 segmentation train (1,464), validation (1,449) and seg11valid "
            "(736, the FCN paper's val set).",
        ),
        tfds.core.BuilderConfig(
            name="sbd",
            description="SBD (Hariharan et al. 2011) train (8,498) and validation (2,857).",
        ),
        tfds.core.BuilderConfig(
            name="aug",
            description="SBD train+val plus VOC2012 train, minus VOC2012 val (10,582).",
        ),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls) -> epath.Path:
        """Returns the checksums file kept beside this module."""
        return epath.Path(__file__).parent / "voc_checksums.tsv"

    def _info(self) -> tfds.core.DatasetInfo:
        """Returns the dataset metadata."""
        return self.dataset_info_from_configs(
            features=features.segmentation_features(),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
            metadata=tfds.core.MetadataDict(
                class_names=list(CLASS_NAMES),
                num_classes=NUM_CLASSES,
                ignore_label=VOID,
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        """Finds (or downloads) the inputs and lists the examples of each split."""
        paths = _resolve_sources(dl_manager, _CONFIG_SOURCES[self.builder_config.name])
        name = self.builder_config.name
        if name == "voc2012":
            voc = paths["voc2012"]
            splits = {
                "train": _voc_items(voc, _read_ids(voc / "ImageSets/Segmentation/train.txt")),
                "validation": _voc_items(voc, _read_ids(voc / "ImageSets/Segmentation/val.txt")),
                "seg11valid": _voc_items(voc, _read_ids(paths["seg11valid"])),
            }
        elif name == "sbd":
            sbd = paths["sbd"]
            splits = {
                "train": _sbd_items(sbd, _read_ids(sbd / "train.txt")),
                "validation": _sbd_items(sbd, _read_ids(sbd / "val.txt")),
            }
        elif name == "aug":
            splits = {"train": _aug_items(paths["voc2012"], paths["sbd"])}
        else:
            raise ValueError(f"Unknown config {name!r}")
        for items in splits.values():
            _check_files_exist(items)
        return {split: self._generate_examples(items) for split, items in splits.items()}

    def _generate_examples(self, items: Sequence[_Item]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yields (id, example) for each item, after checking image and mask."""
        for item in items:
            image_bytes, (height, width) = images.read_image(item.image)
            mask = _read_mask(item.mask, item.mask_format)
            if mask.shape != (height, width):
                raise ValueError(
                    f"Mask {item.mask} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but image "
                    f"{item.image} has size {width}x{height}."
                )
            yield (
                item.image_id,
                {
                    "image": image_bytes,
                    "segmentation_mask": mask[:, :, None],
                    "file_name": item.image.name,
                },
            )


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
    """Returns the manual directory if one was given and exists, else None."""
    path = getattr(dl_manager, "_manual_dir", None)
    if path is None:
        return None
    path = epath.Path(path)
    return path if path.is_dir() else None


def _resolve_sources(
    dl_manager: tfds.download.DownloadManager, names: Sequence[str]
) -> dict[str, epath.Path]:
    """Returns the path of each source: from the manual dir if there, else downloaded.

    Args:
      dl_manager: The TFDS download manager (its manual dir and download/extract).
      names: Keys of `_SOURCES` the config needs.

    Returns:
      Source name -> the folder (`VOCdevkit/VOC2012`, `benchmark_RELEASE/dataset`) or file
      (`seg11valid.txt`) to read.

    Raises:
      FileNotFoundError: a source is neither in the manual dir nor downloadable.
    """
    manual = _manual_dir(dl_manager)
    paths: dict[str, epath.Path] = {}
    to_download: dict[str, str] = {}
    for name in names:
        source = _SOURCES[name]
        if manual is not None and (manual / source.extracted).exists():
            paths[name] = manual / source.extracted
        elif manual is not None and (manual / source.archive).is_file():
            paths[name] = _extracted(dl_manager, name, manual / source.archive)
        else:
            to_download[name] = source.url
    if not to_download:
        return paths

    def not_found(reason: str) -> FileNotFoundError:
        folder = getattr(dl_manager, "_manual_dir", None) or "<data_dir>/downloads/manual"
        missing = ", ".join(
            _SOURCES[n].archive
            + (
                ""
                if _SOURCES[n].archive == _SOURCES[n].extracted
                else f" (or extracted {_SOURCES[n].extracted}/)"
            )
            for n in to_download
        )
        return FileNotFoundError(
            f"Cannot download {missing} ({reason}). Put them in the manual directory {folder} "
            "and pass it with download_config=tfds.download.DownloadConfig(manual_dir=...).\n"
            + MANUAL_DOWNLOAD_INSTRUCTIONS
        )

    # TFDS retries an unreachable host for minutes: fail at once when offline.
    unreachable = [url for url in to_download.values() if not _reachable(url)]
    if unreachable:
        raise not_found(f"cannot connect to {', '.join(unreachable)}")
    try:
        downloaded = dl_manager.download(to_download)
    except Exception as e:  # Server down, bad checksum: both mean "put it there".
        raise not_found(f"{type(e).__name__}: {e}") from e
    for name, path in downloaded.items():
        if name == "sbd":
            _check_md5(epath.Path(path), SBD_MD5)
        paths[name] = _extracted(dl_manager, name, epath.Path(path))
    return paths


def _reachable(url: str, timeout: float = 10.0) -> bool:
    """Returns whether a TCP connection to the host of `url` can be opened.

    Always True behind a proxy (a direct connection says nothing then).
    """
    if urllib.request.getproxies():
        return True
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _extracted(
    dl_manager: tfds.download.DownloadManager, name: str, archive: epath.Path
) -> epath.Path:
    """Extracts `archive` (unless it is the plain seg11valid.txt) and returns the used path."""
    source = _SOURCES[name]
    if source.extracted == source.archive:
        return archive
    path = epath.Path(dl_manager.extract(archive)) / source.extracted
    if not path.exists():
        raise FileNotFoundError(f"Archive {archive} does not contain {source.extracted}/.")
    return path


def _check_md5(path: epath.Path, expected: str) -> None:
    """Raises ValueError if the md5 of `path` is not `expected`."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ValueError(
            f"{path}: md5 {digest.hexdigest()} differs from the expected {expected} "
            "(corrupt or incomplete download: delete it and try again)."
        )


def _read_ids(path: epath.Path) -> list[str]:
    """Returns the ids listed one per line in `path`."""
    if not path.is_file():
        raise FileNotFoundError(f"Split list {path} does not exist.")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _voc_items(voc: epath.Path, ids: Sequence[str]) -> list[_Item]:
    """Returns the VOC2012 items (JPEG image, palette PNG mask) of `ids`."""
    return [
        _Item(i, voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png", "png")
        for i in ids
    ]


def _sbd_items(sbd: epath.Path, ids: Sequence[str]) -> list[_Item]:
    """Returns the SBD items (JPEG image, .mat mask) of `ids`."""
    return [_Item(i, sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat", "mat") for i in ids]


def _aug_items(voc: epath.Path, sbd: epath.Path) -> list[_Item]:
    """Returns SBD train+val plus VOC2012 train minus VOC2012 val, VOC2012 masks first."""
    voc_val = set(_read_ids(voc / "ImageSets/Segmentation/val.txt"))
    items: dict[str, _Item] = {}
    for item in _voc_items(voc, _read_ids(voc / "ImageSets/Segmentation/train.txt")):
        items.setdefault(item.image_id, item)
    for split_list in ("train.txt", "val.txt"):
        for item in _sbd_items(sbd, _read_ids(sbd / split_list)):
            items.setdefault(item.image_id, item)
    return [items[i] for i in sorted(items) if i not in voc_val]


def _check_files_exist(items: Sequence[_Item]) -> None:
    """Raises FileNotFoundError naming the listed images or masks that do not exist."""
    missing = [str(p) for item in items for p in (item.image, item.mask) if not p.is_file()]
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(
            f"{len(missing)} file(s) of ids in the split lists do not exist:\n  {shown}{more}"
        )


def _read_mask(path: epath.Path, mask_format: str) -> np.ndarray:
    """Reads a class-index mask (H, W) uint8 and checks its values.

    Args:
      path: A VOC palette PNG or an SBD `.mat` file with a `GTcls` struct.
      mask_format: "png" or "mat".

    Returns:
      The mask, values in 0-20 or 255.

    Raises:
      ValueError: the file cannot be read, is not a 2-D index mask, or holds other values.
    """
    try:
        if mask_format == "png":
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                image.load()
                if image.mode not in ("P", "L"):
                    raise ValueError(
                        f"mode {image.mode}, expected a palette (P) or greyscale (L) PNG of "
                        "class indices"
                    )
                mask = np.asarray(image)
        else:
            with path.open("rb") as f:
                mask = np.asarray(scipy.io.loadmat(f)["GTcls"][0]["Segmentation"][0])
    except (OSError, SyntaxError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"Mask {path} cannot be read: {e}") from e
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(
            f"Mask {path} is not a 2-D integer array (shape {mask.shape}, dtype {mask.dtype})."
        )
    bad = (mask < 0) | ((mask >= NUM_CLASSES) & (mask != VOID))
    if bad.any():
        values = np.unique(mask[bad])
        raise ValueError(
            f"Mask {path} has values {values[:10].tolist()} outside 0-{NUM_CLASSES - 1} and {VOID}."
        )
    return mask.astype(np.uint8)
