"""Where a train step's memory goes: XLA's own accounting of the compiled step, per speed trick.

    python -m benchmarks.memory                                   # fcn8s, both geometries, 512x512
    python -m benchmarks.memory --geometries=simple --sizes=512x512,384x512
    python -m benchmarks.memory --peak=12                         # and the 12 largest buffers
    python -m benchmarks.memory --without=winograd,frame          # 'auto' less these two only

Compiles (never runs) the library's jitted train step (fcn_jax.steps, with each geometry's
recipe as in benchmarks/steps.py) for the model's fast paths as 'auto' resolves them here,
for the plain path ('none'), and for 'auto' without each of its tricks in turn (or only
those `--without` names), and prints XLA's memory analysis of each: the temporaries
(activations, gradients and workspace of one step, which is what the tricks change), the
arguments (parameters and optimiser state; donated, so the outputs reuse them), and their
sum. No time is measured (benchmarks/steps.py does that).

`--peak=N` also lists the N largest temporaries live at the moment the step's temporaries
peak, each with the operation that made it (JAX's name stack), from the buffer assignment and
live ranges XLA writes when asked to dump the compiled module.
"""

import argparse
import dataclasses
import glob
import os
import re
import shutil
import tempfile

from benchmarks import steps as benchmark_steps

NUM_CLASSES = benchmark_steps.NUM_CLASSES


def _compiled_train_step(geometry: str, model_name: str, size: tuple[int, int], fast):
    """The train step of one model variant, lowered and compiled for this process's CPU."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fcn_jax import steps

    config = benchmark_steps.recipe_config(geometry)
    config.model, config.model_geometry = model_name, geometry
    model = steps.create_model(config, NUM_CLASSES).clone(fast=fast)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables["params"])
    tx = steps.create_train_state(config, {"params": zeros}, jax.random.key(0))[1]
    state = jax.eval_shape(
        lambda v: steps.create_train_state(config, v, jax.random.key(0))[0], variables
    )
    shape = (1, *size)
    batch = {
        "image": jax.ShapeDtypeStruct((*shape, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct(shape, jnp.int32),
        "size": jax.ShapeDtypeStruct((1, 2), jnp.int32),
        "mask": jax.ShapeDtypeStruct((1,), jnp.bool_),
    }
    step = steps.jit_train_step(config, model, tx, steps.make_mesh())
    return step.lower(state, batch).compile()


def variants(fast, without: tuple[str, ...] | None = None) -> dict[str, object]:
    """'auto' as resolved here, the plain path, and 'auto' less each trick in `without`.

    `without` defaults to every trick 'auto' turns on; one it leaves off is skipped. A trick
    the geometry does not use (the simple geometry has no frame) gives 'auto' again: a check
    on the measurement itself.
    """
    from fcn_jax import fast_paths

    found = {"auto": fast, "none": fast_paths.FastPaths()}
    for name in fast.names() if without is None else without:
        if not getattr(fast, name):
            continue
        found[f"auto - {name}"] = dataclasses.replace(fast, **{name: False})
    return found


def _dumped(dump_dir: str, suffix: str) -> str:
    """The text of the dumped train step's file ending in `suffix`."""
    (path,) = glob.glob(os.path.join(dump_dir, f"*train_step*cpu_after_optimizations{suffix}"))
    with open(path) as f:
        return f.read()


def _temporaries(dump_dir: str) -> tuple[int, list[tuple[int, int, int, int, str]]]:
    """The size of the step's one allocation of temporaries, and its buffers.

    Each buffer is (offset, size, first, last instruction it is live at, instruction name).
    """
    assignment = _dumped(dump_dir, "-buffer-assignment.txt")
    temp = re.search(
        r"allocation \d+: size (\d+), preallocated-temp:\n((?: value:.*\n)+)", assignment
    )
    live = _dumped(dump_dir, "-live-range.txt")
    live = live[live.index("BufferLiveRange:") : live.index("Live ranges at")]
    ranges = {
        (name, index): (int(first), int(last))
        for name, index, first, last in re.findall(
            r"^\s+([\w.-]+)\{([\d,]*)\}:(\d+)-(\d+)", live, re.M
        )
    }
    values = re.findall(
        r"value: <\d+ ([\w.-]+)(?:\{([\d,]*)\})? @\d+> \(size=(\d+),offset=(\d+)\)",
        temp.group(2),
    )
    buffers = [
        (int(offset), int(size), *ranges[name, index], name) for name, index, size, offset in values
    ]
    return int(temp.group(1)), buffers


def _in_use(buffers: list[tuple], time: int) -> tuple[int, list[tuple]]:
    """Bytes of the allocation in use at `time` (the union of the live buffers), and those."""
    # Values that share a slot (an operation writing over its operand) count once.
    live = sorted({(b[0], b[1]): b for b in buffers if b[2] <= time <= b[3]}.values())
    total, reached = 0, 0
    for offset, size, *_ in live:
        total += max(0, offset + size - max(offset, reached))
        reached = max(reached, offset + size)
    return total, live


def _peak_buffers(dump_dir: str, count: int) -> list[str]:
    """The `count` largest temporaries live when the dumped train step's temporaries peak.

    XLA places every temporary at an offset of one allocation; the peak is the moment the
    most of it is in use. The "peak" XLA's live-range file names can fall a few
    instructions away from it, past the largest buffers.
    """
    allocated, buffers = _temporaries(dump_dir)
    op_names = dict(
        re.findall(
            r'^\s*(?:ROOT )?%?([\w.-]+) = .*op_name="([^"]*)"', _dumped(dump_dir, ".txt"), re.M
        )
    )
    # The union only grows when a buffer starts: the peak is at one of those moments.
    starts = {b[2] for b in buffers}
    peak, live = max((_in_use(buffers, time) for time in starts), key=lambda found: found[0])
    rows = [f"  {peak / 2**20:.1f} of {allocated / 2**20:.1f} MiB in use, the largest:"]
    for _, size, _, _, name in sorted(live, key=lambda b: -b[1])[:count]:
        rows.append(f"  {size / 2**20:8.1f} MiB  {op_names.get(name, name)}")
    return rows


def main(argv: list[str] | None = None) -> None:
    """Prints the table; `argv` defaults to the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fcn8s", help="comma-separated: fcn32s,fcn16s,fcn8s")
    parser.add_argument("--sizes", default="512x512", help="comma-separated HxW")
    parser.add_argument(
        "--geometries", default="reference,simple", help="comma-separated: reference,simple"
    )
    parser.add_argument(
        "--peak", type=int, default=0, help="list the N largest buffers at the peak of 'auto'"
    )
    parser.add_argument(
        "--without",
        default="",
        help="comma-separated tricks: 'auto' less only these (default: less each it turns on)",
    )
    args = parser.parse_args(argv)
    cases = []
    for geometry in args.geometries.split(","):
        if geometry not in benchmark_steps.GEOMETRIES:
            parser.error(f"unknown geometry {geometry!r}: use one of reference, simple")
        for model_name in args.models.split(","):
            if model_name not in ("fcn32s", "fcn16s", "fcn8s"):
                parser.error(f"unknown model {model_name!r}: use fcn32s, fcn16s or fcn8s")
            for size in args.sizes.split(","):
                try:
                    cases.append((geometry, model_name, benchmark_steps.parse_size(size)))
                except ValueError:
                    parser.error(f"bad size {size!r} in --sizes: use HxW with H, W >= 1")
    if args.peak < 0:
        parser.error("--peak must be >= 0")
    without = tuple(args.without.split(",")) if args.without else None
    from fcn_jax import fast_paths

    for name in without or ():
        if name not in fast_paths.TRICKS:
            parser.error(f"unknown trick {name!r} in --without: use {', '.join(fast_paths.TRICKS)}")

    from fcn_jax import xla_setup

    dump_dir = tempfile.mkdtemp(prefix="fcn_jax_memory_") if args.peak else ""
    if args.peak:  # before the first computation: XLA reads its flags once
        os.environ["XLA_FLAGS"] = (
            f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump_dir} "
            "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*"
        ).strip()
    xla_setup.add_default_xla_flags()  # main.py's CPU settings
    auto = fast_paths.resolve("auto")
    print("| geometry | model | size | fast paths | temporaries | arguments | total |")
    print("|---|---|---|---|---|---|---|")
    peaks = []
    for geometry, model_name, (height, width) in cases:
        for label, fast in variants(auto, without).items():
            compiled = _compiled_train_step(geometry, model_name, (height, width), fast)
            memory = compiled.memory_analysis()
            temp, arguments = memory.temp_size_in_bytes, memory.argument_size_in_bytes
            print(
                f"| {geometry} | {model_name} | {height}x{width} | {label} "
                f"| {temp / 2**30:.3f} GiB | {arguments / 2**30:.3f} GiB "
                f"| {(temp + arguments) / 2**30:.3f} GiB |",
                flush=True,
            )
            if args.peak:
                if label == "auto":
                    peaks.append(
                        f"\n{geometry} {model_name} {height}x{width}, 'auto', temporaries "
                        "at the peak:"
                    )
                    peaks += _peak_buffers(dump_dir, args.peak)
                shutil.rmtree(dump_dir)  # this case's dump; XLA makes the folder again
    print("\n".join(peaks))


if __name__ == "__main__":
    main()
