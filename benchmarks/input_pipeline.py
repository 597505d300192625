"""Images per second the input pipeline delivers for VOC-sized images on this machine.

    python -m benchmarks.input_pipeline --images=200 --batch=8 --steps=50 --augment

Writes `--images` generated VOC-sized JPEGs (sides 300-500 px, smooth content plus noise so
they compress like photos) and palette-PNG masks in the VOC2012 folder layout into a temp dir,
builds `voc_segmentation/voc2012` from it (timed), then times `--steps` train batches (after
`--warmup` batches) and one full eval pass on a 512x512 canvas with caffe preprocessing.
With `--synthetic` it builds and times `synthetic_shapes` (96x96 canvas) instead.
"""

import argparse
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from fcn_jax import datasets, input_pipeline


def _write_voc(root: Path, count: int, seed: int) -> None:
    """Writes `count` image/mask pairs split 50/50 into VOC2012 train and val lists."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"2012_{i:06d}" for i in range(count)]
    palette = datasets.voc_palette().tobytes()
    for image_id in ids:
        height, width = int(rng.integers(300, 501)), int(rng.integers(300, 501))
        y, x = np.mgrid[0:height, 0:width]
        base = (
            rng.uniform(0, 255, 3) * (x / width)[..., None]
            + rng.uniform(0, 255, 3) * (y / height)[..., None]
        )
        image = np.clip(base / 2 + rng.normal(0, 12, (height, width, 3)), 0, 255)
        mask = np.zeros((height, width), np.uint8)
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        mask[top : top + height // 3, left : left + width // 3] = rng.integers(1, 21)
        Image.fromarray(image.astype(np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(voc / "SegmentationClass" / f"{image_id}.png")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(ids[: count // 2]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[count // 2 :]) + "\n")
    (root / "seg11valid.txt").write_text("\n".join(ids[count // 2 :: 2]) + "\n")


def _config(args: argparse.Namespace, work: Path) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = args.batch
    config.eval_batch_size = args.batch
    config.dataset = ml_collections.ConfigDict(
        {
            "name": "synthetic_shapes" if args.synthetic else "voc_segmentation/voc2012",
            "data_dir": str(work / "tfds"),
            "manual_dir": str(work / "manual"),
            "train_split": "train",
            "eval_split": "validation",
            "preprocessing": args.preprocessing,
            "canvas_size": (96, 96) if args.synthetic else (512, 512),
            "augment": args.augment,
            "min_scale": 0.5,
            "max_scale": 2.0,
            "random_flip": True,
            "random_crop": True,
            "shuffle_buffer": 256,
        }
    )
    return config


def _rate(iterator, batches: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="generated images, all splits")
    parser.add_argument("--batch", type=int, default=8, help="global batch size")
    parser.add_argument("--steps", type=int, default=50, help="timed train batches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed train batches first")
    parser.add_argument("--augment", action="store_true", help="random scale/crop/flip")
    parser.add_argument("--synthetic", action="store_true", help="synthetic_shapes instead")
    parser.add_argument("--preprocessing", default="caffe", choices=["caffe", "torchvision"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fcn_jax_bench_") as tmp:
        work = Path(tmp)
        if not args.synthetic:
            _write_voc(work / "manual", args.images, seed=0)
        config = _config(args, work)
        start = time.perf_counter()
        input_pipeline.num_examples(config, "train")  # builds the dataset
        build_s = time.perf_counter() - start

        train = input_pipeline.create_train_iterator(config)
        for _ in range(args.warmup):
            next(train)
        train_rate = _rate(train, args.steps, args.batch)

        start = time.perf_counter()
        eval_images = sum(int(b["mask"].sum()) for b in input_pipeline.create_eval_iterator(config))
        eval_rate = eval_images / (time.perf_counter() - start)

    data = config.dataset
    source = "synthetic_shapes" if args.synthetic else f"{args.images} generated JPEGs 300-500 px"
    print(
        f"settings: {source}, canvas {data.canvas_size}, "
        f"batch {args.batch}, preprocessing {data.preprocessing}, augment {data.augment}, "
        f"steps {args.steps} (+{args.warmup} warm-up)"
    )
    print(f"build {data.name}: {build_s:.1f} s")
    print(f"train: {train_rate:.1f} images/s")
    print(f"eval (one pass, {eval_images} images incl. start-up): {eval_rate:.1f} images/s")


if __name__ == "__main__":
    main()
