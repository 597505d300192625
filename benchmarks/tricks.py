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

from benchmarks import memory as benchmark_memory
from benchmarks import steps as benchmark_steps


def _step(geometry: str, fast, height: int, width: int):
    """One step of `fast`'s train step, ready to call (state carried between calls)."""
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


def main(argv: list[str] | None = None) -> None:
    """Prints one line per variant; `argv` defaults to the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", default="simple", choices=benchmark_steps.GEOMETRIES)
    parser.add_argument("--size", default="512x512", help="HxW")
    parser.add_argument("--rounds", type=benchmark_steps.positive_int, default=9)
    args = parser.parse_args(argv)
    try:
        height, width = benchmark_steps.parse_size(args.size)
    except ValueError:
        parser.error(f"bad --size {args.size!r}: use HxW with H, W >= 1, e.g. 512x512")

    from fcn_jax import xla_setup

    xla_setup.add_default_xla_flags()  # main.py's CPU settings, before the first computation
    from fcn_jax import fast_paths

    variants = benchmark_memory.variants(fast_paths.resolve("auto"))
    runs = {label: _step(args.geometry, fast, height, width) for label, fast in variants.items()}
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
