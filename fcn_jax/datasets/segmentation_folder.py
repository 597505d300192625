"""`segmentation_folder`: a user's own folder of images and masks as a TFDS dataset.

    builder = segmentation_folder.builder("~/my_data")  # prepared, ready for as_dataset()

The folder is read in any layout of `fcn_jax.datasets.folder_layouts` (plain folders, CVAT,
VOC, labelme, COCO from CVAT or Roboflow). The features are those of `voc_segmentation`
(`image`, `segmentation_mask` uint8 (H, W, 1) with 255 void, `file_name`) and
`info.metadata` holds `class_names`, `num_classes`, `ignore_label` (255), `class_colors`
([r, g, b] per class) where the data defines them, `layout`, `source` and `fingerprint`.

Each folder gets its own builder config, named from its resolved path (and the validation
fraction), so two folders never share prepared data. The prepared data records a fingerprint
of the folder (each file's name, size and modification time): a folder changed since then is
prepared again, and one that is gone (moved, or on another machine) is read from the prepared
data as it is, with a warning.
"""

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from fcn_jax.datasets import features, folder_layouts, images
from fcn_jax.losses import VOID

NAME = "segmentation_folder"
DEFAULT_VAL_FRACTION = 0.1


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """The builder config of one folder: its resolved path and the validation fraction."""

    path: str = ""
    val_fraction: float = DEFAULT_VAL_FRACTION


class SegmentationFolder(tfds.core.GeneratorBasedBuilder):
    """A user's folder of images and masks; make it with `builder()` (one config per folder)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        """Returns the features; the metadata is filled in when the folder is read."""
        return self.dataset_info_from_configs(
            description=__doc__,
            features=features.segmentation_features(),
            supervised_keys=("image", "segmentation_mask"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        """Reads and checks the folder, records its classes, and lists each split."""
        del dl_manager  # nothing to download
        config = self.builder_config
        if not isinstance(config, FolderConfig):
            raise ValueError(f"Make the {NAME} builder with {__name__}.builder(path).")
        folder = epath.Path(config.path)
        # Taken before reading: a file changed while we read shows as stale next time.
        stamp = fingerprint(folder)
        source = folder_layouts.read_folder(folder, config.val_fraction)
        self.info.metadata.update(
            class_names=source.class_names,
            num_classes=len(source.class_names),
            ignore_label=VOID,
            layout=source.layout,
            source=config.path,
            fingerprint=stamp,
        )
        if source.class_colors is not None:
            self.info.metadata["class_colors"] = source.class_colors
        return {split: self._generate_examples(items) for split, items in source.splits.items()}

    def _generate_examples(
        self, items: list[folder_layouts.Example]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yields (key, example); images are decoded fully and turned as they are shown."""
        for item in items:
            image, size = images.read_image(item.image)
            mask = item.read_mask()
            if mask.shape != size:  # the checks saw the header; the file changed since
                raise ValueError(f"Mask {item.mask_name} no longer matches image {item.image}.")
            yield (
                item.key,
                {
                    "image": image,
                    "segmentation_mask": mask[..., None],
                    "file_name": item.image.name,
                },
            )


def fingerprint(folder: epath.Path) -> str:
    """A digest of every file's relative name, size and modification time under `folder`.

    Hidden files (names starting with '.') are left out: a file manager's `.DS_Store` does
    not change the data.
    """
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            stat = os.stat(os.path.join(root, name))
            entries.append(
                (os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns)
            )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def config_for(path: epath.PathLike, val_fraction: float = DEFAULT_VAL_FRACTION) -> FolderConfig:
    """The builder config of folder `path`: its name is unique to the resolved path.

    The path need not exist (its prepared data may be read without it).
    """
    resolved = os.path.realpath(os.path.expanduser(os.fspath(path)))
    digest = hashlib.sha256(f"{resolved}\n{float(val_fraction)!r}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^a-z0-9]+", "_", os.path.basename(resolved).lower()).strip("_") or "root"
    return FolderConfig(
        name=f"{stem[:40]}_{digest}",
        description=f"The folder {resolved} (val_fraction {val_fraction}).",
        path=resolved,
        val_fraction=float(val_fraction),
    )


def make_builder(
    path: epath.PathLike,
    data_dir: epath.PathLike | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> SegmentationFolder:
    """The builder of folder `path` in `data_dir` (TFDS's default if None), not prepared."""
    return SegmentationFolder(config=config_for(path, val_fraction), data_dir=data_dir)


def validate_source(manual_dir: str | None, data_dir: str | None, val_fraction: float) -> None:
    """Checks that the configured folder, or data prepared from it, is there.

    Raises ValueError naming the config field. A folder that is gone passes when its prepared
    data is in `data_dir` (evaluating or exporting on another machine). The fields themselves
    are checked by `fcn_jax.config_checks` (no TensorFlow needed there).
    """
    if not manual_dir:
        raise ValueError("config.dataset.manual_dir is not set (docs/own_data.md).")
    path = epath.Path(os.path.expanduser(manual_dir))
    if path.is_dir():
        return
    if path.exists():
        raise ValueError(
            f"config.dataset.manual_dir={manual_dir} is a file: give the folder that holds "
            "your images and masks (docs/own_data.md)."
        )
    prepared = make_builder(manual_dir, data_dir, val_fraction)
    if not prepared.is_prepared():
        raise ValueError(
            f"config.dataset.manual_dir={manual_dir} does not exist, and no data prepared from "
            f"it is in {epath.Path(prepared.data_dir).parent.parent.parent} "
            "(config.dataset.data_dir): give the folder of your images and masks "
            "(docs/own_data.md)."
        )


def builder(
    path: epath.PathLike,
    data_dir: epath.PathLike | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> SegmentationFolder:
    """The prepared dataset of folder `path`: built now if missing or stale.

    Args:
      path: The folder of images and masks, in a layout of `folder_layouts`.
      data_dir: Where TFDS keeps prepared data (TFDS's default, `~/tensorflow_datasets`, if
        None).
      val_fraction: The fraction held out for validation when the folder has no val list.

    Returns:
      The prepared builder: `as_dataset(split=...)`, `info.metadata["class_names"]`.

    Raises:
      FileNotFoundError: the folder does not exist and nothing was prepared from it.
      ValueError: bad data in the folder (every problem, each naming its file).
    """
    found = make_builder(path, data_dir, val_fraction)
    folder = epath.Path(found.builder_config.path)
    if not folder.is_dir():
        if found.is_prepared():
            logging.warning(
                "Dataset folder %s is not there: using the data prepared from it in %s "
                "(whether the folder changed since cannot be checked).",
                folder,
                found.data_dir,
            )
            return found
        raise FileNotFoundError(
            f"Dataset folder {path} does not exist, and no data prepared from it is in "
            f"{found.data_dir}: give the folder of your images and masks (docs/own_data.md)."
        )
    if found.is_prepared():
        if found.info.metadata.get("fingerprint") == fingerprint(folder):
            return found
        logging.warning("%s changed since it was prepared: preparing it again.", folder)
        epath.Path(found.data_dir).rmtree()
        found = make_builder(path, data_dir, val_fraction)
    try:
        found.download_and_prepare()
    finally:
        _remove_empty_folders(found)
    return found


def _remove_empty_folders(found: SegmentationFolder) -> None:
    """Removes the folders a build leaves empty in data_dir (all of them, if it failed).

    TFDS makes `downloads/extracted` for every build, and a failed build leaves the folders
    of its dataset and config; any of them still in use holds files and stays.
    """
    version = epath.Path(found.data_dir)
    root = version.parent.parent.parent
    for folder in (
        root / "downloads" / "extracted",
        root / "downloads",
        version.parent,
        version.parent.parent,
    ):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
