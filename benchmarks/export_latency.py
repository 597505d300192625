"""Latency per image of the exported artifacts, each in its own runtime, against model.apply.

    python -m benchmarks.export_latency                        # fcn8s, full width, 375x500
    python -m benchmarks.export_latency --width=0.03125 --canvas=64x64 --size=48x40 --runs=3

Exports a randomly initialised model (the weights' values do not change the time) with
`fcn_jax.export.export` to a temporary folder, then times, in turn on the same uint8 batch:

* `model.apply`: the library's jitted forward pass at the image's own size, normalisation
  and argmax included (what `--mode=predict` runs);
* `jax.export`: `jax.export.deserialize(model.stablehlo)`, its `call` under `jax.jit`;
* `SavedModel`: the `serving_default` signature of `tf.saved_model.load(saved_model/)`.

The runtimes alternate run by run so that all see the same machine load. The exported
function pads every image to the export canvas (`--canvas`), so it computes the whole
canvas: its latency follows the canvas area, not the image's. Prints a markdown table (median
and first-call seconds per image) and the artifact sizes.
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fcn_jax import export, models, preprocessing, xla_setup  # noqa: E402

NUM_CLASSES = 21
PREPROCESSING = "caffe"


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 375x500") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return height, width


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def folder_bytes(path: str) -> int:
    """Total size of the files under `path` (or of the file `path`)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def runtimes(
    model: models.FCNModel, variables: dict, written: dict[str, str]
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each runtime as `images -> classes` (a host array, so the timing includes the work)."""
    forward = jax.jit(
        lambda v, x: jnp.argmax(model.apply(v, preprocessing.normalize(x, PREPROCESSING)), -1)
    )
    with open(written["stablehlo"], "rb") as f:
        exported = jax.jit(jax.export.deserialize(f.read()).call)
    serving = tf.saved_model.load(written["saved_model"]).signatures["serving_default"]
    return {
        "model.apply (own size)": lambda x: np.asarray(forward(variables, x)),
        "jax.export (model.stablehlo)": lambda x: np.asarray(exported(x)["classes"]),
        "TF SavedModel (serving_default)": lambda x: serving(images=tf.constant(x))[
            "classes"
        ].numpy(),
    }


def measure(
    functions: dict[str, Callable[[np.ndarray], np.ndarray]], images: np.ndarray, runs: int
) -> dict[str, tuple[float, list[float]]]:
    """(first-call seconds, timed seconds) per runtime; timed runs alternate runtimes."""
    first, times = {}, {name: [] for name in functions}
    for name, fn in functions.items():
        start = time.perf_counter()
        fn(images)
        first[name] = time.perf_counter() - start
    for _ in range(runs):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn(images)
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], times[name]) for name in functions}


def main(argv: list[str] | None = None) -> None:
    xla_setup.add_default_xla_flags()  # before the first computation, or XLA ignores them
    """Runs the benchmark; `argv` defaults to the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fcn8s", choices=sorted(models.GEOMETRIES["reference"]))
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    parser.add_argument("--size", type=_size, default=(375, 500), help="image HxW")
    parser.add_argument("--canvas", type=_size, default=(512, 512), help="export canvas HxW")
    parser.add_argument("--batch", type=_positive, default=1)
    parser.add_argument("--runs", type=_positive, default=5, help="timed runs per runtime")
    args = parser.parse_args(argv)
    if args.size[0] > args.canvas[0] or args.size[1] > args.canvas[1]:
        parser.error(f"--size={args.size} does not fit --canvas={args.canvas}")
    model = models.get_model(args.model, NUM_CLASSES, width=args.width)
    variables = models.init_variables(model, jax.random.key(0))
    images = np.random.default_rng(0).integers(0, 256, (args.batch, *args.size, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        written = export.export(model, variables, os.path.join(tmp, "out"), args.canvas, "caffe")
        export_seconds = time.perf_counter() - start
        sizes = {name: folder_bytes(path) for name, path in written.items()}
        results = measure(runtimes(model, variables, written), images, args.runs)
    h, w = args.size
    print(f"\n{args.model}, width {args.width}, {h}x{w} (HxW) uint8 images, batch {args.batch},")
    print(f"canvas {args.canvas[0]}x{args.canvas[1]}, {jax.devices()[0].device_kind}, ", end="")
    print(f"{args.runs} timed runs per runtime, alternating\n")
    print("| runtime | median s / image | min s / image | first call s |")
    print("|---|---|---|---|")
    for name, (first, times) in results.items():
        per_image = [t / args.batch for t in times]
        print(
            f"| {name} | {statistics.median(per_image):.3f} | {min(per_image):.3f} | {first:.1f} |"
        )
    print(f"\nexport took {export_seconds:.1f} s; artifact sizes:")
    for name, size in sizes.items():
        print(f"  {name}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
