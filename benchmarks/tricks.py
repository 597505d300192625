"""What each speed trick is worth in time: the train step with and without it, in one process.

    python -m benchmarks.tricks --geometry=simple --size=512x512 --rounds=9

Compiles the library's jitted train step (fcn_jax.steps, with the geometry's recipe as in
benchmarks/steps.py) of full-width FCN-8s for 'auto' as it resolves here, for the plain path
('none') and for 'auto' without each of its tricks, then times one step of each in turn for
`--rounds` rounds, so that all variants see the same machine load, and prints each median
relative to 'auto'. Memory is measured apart (benchmarks/memory.py): the variants share one
process.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from benchmarks import memory as benchmark_memory
from benchmarks import steps as benchmark_steps

if TYPE_CHECKING:  # imported for real after the XLA flags are set
    from fcn_jax.fast_paths import FastPaths


def timed_step(geometry: str, fast: "FastPaths", height: int, width: int) -> Callable[[], float]:
    """`fast`'s train step, compiled and warmed up: each call runs one step, returns its seconds.

    The train state is carried from call to call.
    """
    import jax
    import numpy as np

    from fcn_jax import steps

    config = benchmark_steps.recipe_config(geometry)
    config.model_geometry = geometry
    model = steps.create_model(config, benchmark_steps.NUM_CLASSES).clone(fast=fast)
    mesh = steps.make_mesh()
    shape = argparse.Namespace(batch=1, height=height, width=width)
    images, labels = benchmark_steps._inputs(shape)
    sizes = np.array([[height, width]], np.int32)
    batch = {"image": images, "label": labels, "size": sizes, "mask": np.ones(1, bool)}
    batch = steps.global_batch(mesh, batch)
    state, tx = steps.create_train_state(
        config, benchmark_steps._jax_variables(model), jax.random.key(0)
    )
    holder = [jax.device_put(state, steps.replicated(mesh))]
    step = steps.jit_train_step(config, model, tx, mesh).lower(holder[0], batch).compile()

    def run() -> float:
        start = time.perf_counter()
        holder[0], out = step(holder[0], batch)
        jax.block_until_ready(out)
        return time.perf_counter() - start

    run()  # warm-up
    return run


def step_parser(description: str, size: str) -> argparse.ArgumentParser:
    """A parser with the train step's --geometry and --size (default `size`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--geometry", default="simple", choices=benchmark_steps.GEOMETRIES)
    parser.add_argument("--size", default=size, help="HxW")
    return parser


def parsed_size(parser: argparse.ArgumentParser, size: str) -> tuple[int, int]:
    """`size` (HxW) as (H, W), or the parser's usage error naming it."""
    try:
        return benchmark_steps.parse_size(size)
    except ValueError:
        parser.error(f"bad --size {size!r}: use HxW with H, W >= 1, e.g. 512x512")


def auto_fast_paths() -> "FastPaths":
    """The fast paths 'auto' resolves to here, after setting main.py's XLA flags for the CPU.

    XLA reads its flags when the first computation starts: call this before any.
    """
    from fcn_jax import xla_setup

    xla_setup.add_default_xla_flags()
    from fcn_jax import fast_paths

    return fast_paths.resolve("auto")


def main(argv: list[str] | None = None) -> None:
    """Prints one line per variant; `argv` defaults to the command line."""
    parser = step_parser(__doc__.splitlines()[0], size="512x512")
    parser.add_argument("--rounds", type=benchmark_steps.positive_int, default=9)
    args = parser.parse_args(argv)
    height, width = parsed_size(parser, args.size)
    variants = benchmark_memory.variants(auto_fast_paths())
    runs = {
        label: timed_step(args.geometry, fast, height, width) for label, fast in variants.items()
    }
    times = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, run in runs.items():
            times[label].append(run())
    auto = statistics.median(times["auto"])
    print(f"fcn8s ({args.geometry}) {height}x{width}, train step, {args.rounds} rounds:")
    for label, seconds in times.items():
        median = statistics.median(seconds)
        print(f"  {label:<22} {median:6.3f} s  {median / auto:5.2f}x 'auto'")


if __name__ == "__main__":
    main()
