"""Times one jitted forward of a full-width FCN on one image.

    python -m benchmarks.forward --model=fcn8s --height=375 --width=500 --repeats=5

Prints the compile time and the median of `repeats` timed calls (after one warm-up).
"""

import argparse
import statistics
import time

import jax

from fcn_jax import models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fcn8s", choices=sorted(models.MODELS))
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = models.get_model(args.model)
    variables = models.init_variables(model, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (args.batch, args.height, args.width, 3))
    forward = jax.jit(model.apply)

    start = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    compiled(variables, images).block_until_ready()  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        compiled(variables, images).block_until_ready()
        times.append(time.perf_counter() - start)
    print(
        f"{args.model} forward, batch {args.batch}, {args.height}x{args.width}, "
        f"{jax.devices()[0].platform}: compile {compile_s:.2f} s, "
        f"median {statistics.median(times):.3f} s over {args.repeats} "
        f"(min {min(times):.3f}, max {max(times):.3f})"
    )


if __name__ == "__main__":
    main()
