"""tf.data input pipelines from the TFDS segmentation builders.

Batches have static shapes for `jax.jit`: every image is placed top-left on a fixed canvas
(`config.dataset.canvas_size`) and each example carries its image's size, so that the model
computes for it exactly what the image alone at its own size gives (docs/reference.md §2.5;
`fcn_jax.models`, `sizes=`). The rest of the canvas is 0 in the image and void (255) in
the label, so it never counts in the loss or the metrics either. Images stay uint8 (a quarter
of the bytes of float32) and are normalised on the device (`fcn_jax.preprocessing`).

Train batches are deterministic given `config.seed` and can start at any step: examples are
shuffled as serialized records, numbered, and skipped before any decoding; each example's
augmentation draws from a stateless generator seeded by (seed, example number). A resumed run
therefore sees exactly the examples an uninterrupted one would. Every process reads the same
global stream and keeps its rows of each global batch, so the batches and the augmentation
seeds (numbered globally) are the same whatever the number of processes.

Evaluation covers every example of the split once: the last batch is filled with empty
examples whose `mask` entry is False, whose labels are all void and whose size is 0 x 0.
"""

import dataclasses
import functools
import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from fcn_jax import class_info
from fcn_jax.config_checks import eval_batch_size, validate_data_config
from fcn_jax.datasets import segmentation_folder  # importing the package registers the builders
from fcn_jax.losses import VOID


def _builder(
    config: ml_collections.ConfigDict, name: str | None = None
) -> tfds.core.DatasetBuilder:
    """The TFDS builder `name` (default `config.dataset.name`), prepared on first use."""
    data = config.dataset
    name = name or data.name
    if name == segmentation_folder.NAME:
        segmentation_folder.validate_source(data.manual_dir, data.data_dir, data.val_fraction)
    _prepare_once(name, data.data_dir, data.manual_dir, data.val_fraction)
    if name == segmentation_folder.NAME:
        return segmentation_folder.make_builder(data.manual_dir, data.data_dir, data.val_fraction)
    return tfds.builder(name, data_dir=data.data_dir)


@functools.cache
def _prepare_once(
    name: str, data_dir: str | None, manual_dir: str | None, val_fraction: float
) -> None:
    """Builds dataset `name` if it is missing: process 0 builds while the others wait.

    The first use of each dataset is a barrier of all processes, so nobody races on a shared
    `data_dir` or reads a half-built dataset. A user's folder (`segmentation_folder`) is
    prepared again if it changed since.
    """
    if jax.process_index() == 0:
        if name == segmentation_folder.NAME:
            segmentation_folder.builder(manual_dir, data_dir, val_fraction)
        else:
            builder = tfds.builder(name, data_dir=data_dir)
            if not builder.is_prepared():
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
                )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"fcn_jax: dataset {name} in {data_dir} prepared")


def num_examples(config: ml_collections.ConfigDict, split: str, name: str | None = None) -> int:
    """The number of examples in the whole `split` (all processes) of dataset `name`."""
    return _builder(config, name).info.splits[split].num_examples


@dataclasses.dataclass(frozen=True)
class EvalData:
    """What an evaluation reads: dataset `name`, its `split`, and the batches per process."""

    name: str
    split: str
    num_batches: int


def eval_data(config: ml_collections.ConfigDict, split: str | None = None) -> EvalData:
    """The one place that picks the eval dataset and counts its (padded) batches.

    Args:
      config: reads `dataset.eval_name` (default `dataset.name`: the reference trains on SBD,
        evaluates on VOC), `dataset.eval_split` and `eval_batch_size`.
      split: defaults to `config.dataset.eval_split`.
    """
    split = split or config.dataset.eval_split
    name = config.dataset.get("eval_name") or config.dataset.name
    total = num_examples(config, split, name)
    # Each process pads its share to the largest share, rounded up to whole local batches:
    # ceil(ceil(total / P) / (B / P)) == ceil(total / B).
    return EvalData(name, split, math.ceil(total / eval_batch_size(config)))


def dataset_classes(config: ml_collections.ConfigDict) -> class_info.ClassInfo:
    """The training dataset's class names, colours and void label, from its metadata."""
    return class_info.from_metadata(_builder(config).info.metadata)


def _place_on_canvas(
    image: tf.Tensor, label: tf.Tensor, canvas: tuple[int, int], name: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Pads an image with 0 and its label with void, bottom/right, to the canvas.

    Returns:
      {'image': uint8 canvas, 'label': int32 canvas, 'size': int32 (2,) the image's size}.
    """
    shape = tf.shape(image)
    message = (
        f"image larger than config.dataset.canvas_size={canvas}: enlarge the canvas or set "
        "config.dataset.random_crop=True (training only). Image name and size:"
    )
    fits = tf.reduce_all(shape[:2] <= tf.constant(canvas))
    check = tf.debugging.Assert(fits, [message, name, shape])
    with tf.control_dependencies([check]):
        pad = [[0, canvas[0] - shape[0]], [0, canvas[1] - shape[1]]]
        image = tf.pad(image, pad + [[0, 0]])
        label = tf.pad(label, pad, constant_values=VOID)
    return {
        "image": tf.ensure_shape(image, (*canvas, 3)),
        "label": tf.ensure_shape(label, canvas),
        "size": shape[:2],
    }


def _augment(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, data: ml_collections.ConfigDict
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale (bilinear image, nearest label) and horizontal flip, from a stateless seed."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    scale = tf.random.stateless_uniform([], seeds[0], data.min_scale, data.max_scale)
    size = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * scale), tf.int32)
    size = tf.maximum(size, 1)
    image = tf.image.resize(image, size, method="bilinear")
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    if data.random_flip:
        flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
    return image, label


def _random_crop(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, canvas: tuple[int, int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Crops an image larger than the canvas to at most the canvas, at a random offset."""
    shape = tf.shape(image)
    crop_h, crop_w = tf.minimum(shape[0], canvas[0]), tf.minimum(shape[1], canvas[1])
    limits = tf.stack([shape[0] - crop_h + 1, shape[1] - crop_w + 1])
    offset = tf.random.stateless_uniform([2], seed, 0, tf.int32.max, tf.int32) % limits
    image = image[offset[0] : offset[0] + crop_h, offset[1] : offset[1] + crop_w]
    label = label[offset[0] : offset[0] + crop_h, offset[1] : offset[1] + crop_w]
    return image, label


def _train_example_fn(config: ml_collections.ConfigDict, decoder):
    data, canvas = config.dataset, tuple(config.dataset.canvas_size)

    def prepare(index: tf.Tensor, example: dict) -> dict:
        seed = tf.stack([tf.cast(config.seed, tf.int64), index])
        image = decoder(example["image"])
        label = tf.cast(example["segmentation_mask"][..., 0], tf.int32)
        crop_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if data.augment:
            image, label = _augment(image, label, augment_seed, data)
        if data.random_crop:
            image, label = _random_crop(image, label, crop_seed, canvas)
        return _place_on_canvas(image, label, canvas, example["file_name"])

    return prepare


def _dataset(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
    """`split` (a TFDS split spec), images still encoded, in a fixed order."""
    options = tf.data.Options()
    options.deterministic = True
    return builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    ).with_options(options)


def _this_process_rows(ds: tf.data.Dataset, global_batch: int) -> tf.data.Dataset:
    """Keeps this process's rows of each global batch of a numbered stream of examples.

    Every process reads the same global stream, so a global batch is the same whatever the
    process count, and an example's number (its augmentation seed) is global.
    """
    local, process = _local_batch(global_batch), jax.process_index()
    return ds.filter(lambda index, _: (index % global_batch) // local == process)


def _local_batch(global_batch: int) -> int:
    return global_batch // jax.process_count()


def create_train_iterator(
    config: ml_collections.ConfigDict, *, start_step: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """Endless iterator over this process's share of each global train batch.

    Args:
      config: reads `seed`, `batch_size` and `dataset.*`
        (`fcn_jax.config_checks.validate_data_config` checks them).
      start_step: the first batch to yield; batch k is the same as an uninterrupted
        iterator's k-th batch.

    Yields:
      {'image': uint8 (B, H, W, 3), 'label': int32 (B, H, W), 'size': int32 (B, 2)}, with
      B = batch_size / processes and (H, W) the canvas.
    """
    validate_data_config(config)
    builder = _builder(config)
    decoder = builder.info.features["image"].decode_example
    ds = _dataset(builder, config.dataset.train_split)
    ds = ds.shuffle(config.dataset.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.repeat().enumerate().skip(start_step * config.batch_size)
    ds = _this_process_rows(ds, config.batch_size)
    batch = _local_batch(config.batch_size)
    ds = ds.map(_train_example_fn(config, decoder), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


def _eval_example_fn(config: ml_collections.ConfigDict, decoder):
    canvas = tuple(config.dataset.canvas_size)

    def prepare(example: dict) -> dict:
        label = tf.cast(example["segmentation_mask"][..., 0], tf.int32)
        placed = _place_on_canvas(decoder(example["image"]), label, canvas, example["file_name"])
        return {**placed, "mask": tf.constant(True)}

    return prepare


def create_eval_iterator(
    config: ml_collections.ConfigDict, split: str | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this process's share of `split`, every example exactly once.

    Args:
      config: reads `eval_batch_size` (`fcn_jax.config_checks.eval_batch_size`),
        `batch_size` and `dataset.*`.
      split: defaults to `config.dataset.eval_split`; the dataset is `eval_data`'s.

    Yields:
      {'image', 'label', 'size' as for training, 'mask': bool (B,)}; the last batch is padded
      with empty examples (mask False, label all void, size 0 x 0). Every process yields
      `eval_data(config, split).num_batches` batches.
    """
    validate_data_config(config)
    data = eval_data(config, split)
    builder = _builder(config, data.name)
    decoder = builder.info.features["image"].decode_example
    batch = _local_batch(eval_batch_size(config))
    ds = _dataset(builder, tfds.split_for_jax_process(data.split)).map(
        _eval_example_fn(config, decoder), num_parallel_calls=tf.data.AUTOTUNE
    )
    local = builder.info.splits[tfds.split_for_jax_process(data.split)].num_examples
    padded = data.num_batches * batch
    canvas = tuple(config.dataset.canvas_size)
    empty = {
        "image": tf.zeros((*canvas, 3), tf.uint8),
        "label": tf.fill(canvas, VOID),
        "size": tf.zeros((2,), tf.int32),
        "mask": tf.constant(False),
    }
    ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat(padded - local))
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
