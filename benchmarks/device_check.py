"""The fast paths and the FCN-8s steps on this machine's first device, in under 5 minutes.

    python -m benchmarks.device_check           # on a GPU or TPU
    python -m benchmarks.device_check --tiny    # seconds on any machine (what the tests run)

Part 1, the fast paths (fcn_jax.fast_paths) against the plain path each replaces, forward
and backward at the shapes of an FCN-8s train step at 512x512, batch 8: in float32 at the
highest matmul precision (error: the trick's gradients against the plain path's) and in
bfloat16 (errors: each path's gradients against float32). A time ratio below 1 means the
trick wins on this chip. The last row is a whole train step with every trick against none.

Part 2, the library's FCN-8s train and eval steps (fast_paths='auto') at 512x512, batch 8
and 16, bfloat16 and float32: images/s, MFU against the chip's data-sheet peak for the
compute dtype (benchmarks.steps.PEAK_TFLOPS; FLOPs as executed, benchmarks.flops) and the
step's memory as XLA plans it (arguments + outputs + temporaries - donated).

Everything runs on one device. A case that would start after `--budget-s` seconds is listed
as skipped, so the check stays within its time.
"""

import argparse
import functools
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from benchmarks import flops
from benchmarks.steps import NUM_CLASSES, PEAK_TFLOPS, _jax_variables, median_seconds
from configs import default
from fcn_jax import fast_paths, layers, optim, steps, winograd, xla_setup
from fcn_jax.models import reference

MODEL = "fcn8s"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _median_seconds(fn: Callable, args: tuple, repeats: int) -> float:
    """Median wall time of `fn(*args)`, after one untimed call (compilation)."""
    return median_seconds(lambda: jax.block_until_ready(fn(*args)), repeats)


def _relative_error(got: list[jax.Array], want: list[jax.Array]) -> float:
    def flat(arrays):
        return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])

    got, want = flat(got), flat(want)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# ---------------------------------------------------------------- part 1: the tricks


def _plain_conv(padding) -> Callable:
    return functools.partial(layers.conv_nhwc, padding=padding, precision=None)


def _conv_pair(padding) -> tuple[Callable, Callable]:
    def trick(x, k):
        return layers.conv_with_matmul_grads(x, k, (1, 1), padding)

    return trick, _plain_conv(padding)


def _pool_pair() -> tuple[Callable, Callable]:
    def plain(x):
        return nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding=layers._ceil_pad(x))

    return layers.relu_max_pool_ceil, plain


def _upsampling_pair(stride: int, classes: int) -> tuple[Callable, Callable]:
    options = dict(
        features=classes,
        kernel_size=(2 * stride, 2 * stride),
        strides=(stride, stride),
        padding="VALID",
        use_bias=False,
    )

    def trick(x, k):
        return layers.SubpixelConvTranspose(**options).apply({"params": {"kernel": k}}, x)

    def plain(x, k):
        return nn.ConvTranspose(**options).apply({"params": {"kernel": k}}, x)

    return trick, plain


def _winograd_pair() -> tuple[Callable, Callable]:
    pads = ((1, 1), (1, 1))

    def trick(x, k):
        bias = jnp.zeros(k.shape[-1], x.dtype)
        return winograd.winograd_conv_bias(x, k, bias, pads, None)

    return trick, _plain_conv(pads)


def op_cases(
    batch: int, size: int, width: float, classes: int
) -> list[tuple[str, Callable, Callable, tuple]]:
    """(name, trick, plain, inputs) at the shapes of an unframed FCN-8s step at `size`.

    The Winograd case has the course-notes geometry's shapes, the only one that uses it.
    """
    c64, c256, c512, c4096 = (max(1, round(c * width)) for c in (64, 256, 512, 4096))
    conv1 = size + 2 * reference.CONV1_1_PADDING - 2  # conv1_2's output
    pool5 = -(-conv1 // 32)  # after five ceil-mode poolings
    keys = iter(jax.random.split(jax.random.key(0), 10))

    def normal(*shape, fan_in=1):
        return jax.random.normal(next(keys), shape) / np.sqrt(fan_in)

    pad = reference.CONV1_1_PADDING
    return [
        ("fused_pool: pool1", *_pool_pair(), (normal(batch, conv1, conv1, c64),)),
        ("matmul_grads: conv1_1", *_conv_pair(((pad, pad), (pad, pad))),
         (normal(batch, size, size, 3), normal(3, 3, 3, c64, fan_in=27))),
        ("matmul_grads: fc6", *_conv_pair("VALID"),
         (normal(batch, pool5, pool5, c512), normal(7, 7, c512, c4096, fan_in=49 * c512))),
        ("subpixel: upscore8", *_upsampling_pair(8, classes),
         (normal(batch, 4 * pool5 - 2, 4 * pool5 - 2, classes),
          normal(16, 16, classes, classes, fan_in=256 * classes))),
        ("winograd: conv3_2 (simple)", *_winograd_pair(),
         (normal(batch, size // 4, size // 4, c256), normal(3, 3, c256, c256, fan_in=9 * c256))),
    ]  # fmt: skip


def _gradients(fn: Callable, dtype) -> Callable:
    """Jitted gradients, with respect to every input, of a fixed projection of `fn`'s output."""

    def loss(*inputs):
        out = fn(*(x.astype(dtype) for x in inputs)).astype(jnp.float32)
        weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
        return jnp.sum(out * weights)

    def grads(*inputs):
        return [g.astype(jnp.float32) for g in jax.grad(loss, range(len(inputs)))(*inputs)]

    return jax.jit(grads)


def trick_rows(args: argparse.Namespace, deadline: float) -> list[str]:
    """Part 1 as markdown table rows."""
    rows = [
        "| fast path | dtype | plain ms | trick ms | trick / plain | trick vs plain (f32) "
        "| plain vs f32 (bf16) | trick vs f32 (bf16) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, trick, plain, inputs in op_cases(args.batch, args.size, args.width, args.classes):
        with jax.default_matmul_precision("highest"):
            oracle = _gradients(plain, jnp.float32)(*inputs)
        for dtype in DTYPES:
            if time.perf_counter() > deadline:
                rows.append(f"| {name} | {dtype} | skipped (time budget) | | | | | |")
                continue
            precision = "highest" if dtype == "float32" else "default"
            seconds, errors = {}, {}
            with jax.default_matmul_precision(precision):
                for label, fn in (("plain", plain), ("trick", trick)):
                    grads = _gradients(fn, DTYPES[dtype])
                    seconds[label] = _median_seconds(grads, inputs, args.repeats)
                    errors[label] = _relative_error(grads(*inputs), oracle)
            if dtype == "float32":
                columns = f"{errors['trick']:.1e} | - | -"
            else:
                columns = f"- | {errors['plain']:.1e} | {errors['trick']:.1e}"
            rows.append(
                f"| {name} | {dtype} | {1e3 * seconds['plain']:.2f} | {1e3 * seconds['trick']:.2f} "
                f"| {seconds['trick'] / seconds['plain']:.2f} | {columns} |"
            )
    rows.append(_whole_step_row(args, deadline))
    return rows


def _whole_step_row(args: argparse.Namespace, deadline: float) -> str:
    name = "all tricks: train step"
    if time.perf_counter() > deadline:
        return f"| {name} | bfloat16 | skipped (time budget) | | | | | |"
    seconds = {}
    for option in ("none", "all"):
        run, _ = _step(args, "train", args.batch, "bfloat16", option)
        seconds[option] = _median_seconds(run, (), args.repeats)
    return (
        f"| {name} | bfloat16 | {1e3 * seconds['none']:.1f} | {1e3 * seconds['all']:.1f} "
        f"| {seconds['all'] / seconds['none']:.2f} | - | - | - |"
    )


# ---------------------------------------------------------------- part 2: the steps


def _step(
    args: argparse.Namespace, mode: str, batch: int, dtype: str, option: str = "auto"
) -> tuple[Callable[[], object], object]:
    """A callable running one jitted step on the first device, and the compiled step."""
    config = default.get_config()
    config.model, config.compute_dtype, config.width = MODEL, dtype, args.width
    config.batch_size, config.fast_paths = batch, option
    model = steps.create_model(config, args.classes)
    mesh = Mesh(np.array(jax.devices()[:1]), (steps.DATA_AXIS,))
    rng = np.random.default_rng(0)
    shape = (batch, args.size, args.size)
    host = {
        "image": rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8),
        "label": rng.integers(0, args.classes, size=shape, dtype=np.int32),
        "size": np.full((batch, 2), args.size, np.int32),
    }
    if mode == "eval":
        host["mask"] = np.ones(batch, bool)
    data = steps.global_batch(mesh, host)
    variables = _jax_variables(model)
    if mode == "eval":
        variables = jax.device_put(variables, steps.replicated(mesh))
        jitted = steps.jit_eval_step(model, mesh, config.dataset.preprocessing)
        compiled = jitted.lower(variables, data).compile()
        return (lambda: compiled(variables, data)), compiled
    tx = optim.create_optimizer(config, variables["params"])
    state = steps.create_train_state(config, variables, jax.random.key(0))[0]
    holder = [jax.device_put(state, steps.replicated(mesh))]
    compiled = steps.jit_train_step(config, model, tx, mesh).lower(holder[0], data).compile()

    def run():
        holder[0], out = compiled(holder[0], data)
        return out

    return run, compiled


def _planned_bytes(compiled) -> int:
    """Arguments + outputs + temporaries - donated (aliased) bytes, as XLA plans the step."""
    memory = compiled.memory_analysis()
    if memory is None:
        return 0
    return (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def _peak_tflops(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind.lower()
    return next((peaks[dtype] for name, peaks in PEAK_TFLOPS.items() if name in kind), None)


def step_rows(args: argparse.Namespace, deadline: float) -> list[str]:
    """Part 2 as markdown table rows."""
    rows = [
        "| step | batch | dtype | median ms | images/s | TFLOP/s | MFU | planned memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    framed = fast_paths.resolve("auto").frame
    for dtype in ("bfloat16", "float32"):
        for batch in args.batches:
            for mode in ("train", "eval"):
                if time.perf_counter() > deadline:
                    rows.append(f"| {mode} | {batch} | {dtype} | skipped (time budget) | | | | |")
                    continue
                run, compiled = _step(args, mode, batch, dtype)
                seconds = _median_seconds(run, (), args.repeats)
                count = flops.train_flops if mode == "train" else flops.forward_flops
                # benchmarks.flops counts the full-width network only.
                tflops = batch * count(MODEL, args.size, args.size, framed=framed) / seconds / 1e12
                peak = _peak_tflops(dtype)
                rate = f"{tflops:.1f}" if args.width == 1 else "-"
                mfu = f"{tflops / peak:.1%}" if peak and args.width == 1 else "-"
                rows.append(
                    f"| {mode} | {batch} | {dtype} | {1e3 * seconds:.1f} | {batch / seconds:.1f} "
                    f"| {rate} | {mfu} | {_planned_bytes(compiled) / 2**20:.0f} MiB |"
                )
    return rows


def main() -> None:
    xla_setup.add_default_xla_flags()  # before the first computation, or XLA ignores them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="width 1/32, 32x32: a smoke test")
    parser.add_argument("--budget-s", type=float, default=270.0, help="start no case after this")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    args = parser.parse_args()
    args.size, args.width, args.batch, args.batches, args.classes = (
        512,
        1.0,
        8,
        (8, 16),
        NUM_CLASSES,
    )
    if args.tiny:
        args.size, args.width, args.batch, args.batches, args.classes = 32, 1 / 32, 1, (2,), 3
        args.repeats = 1
    start = time.perf_counter()
    deadline = start + args.budget_s
    device = jax.devices()[0]
    auto = list(fast_paths.resolve("auto").names())
    print(
        f"{device.device_kind} ({device.platform}), jax {jax.__version__}; FCN-8s at "
        f"{args.size}x{args.size}, width {args.width:g}; 'auto' fast paths here: {auto}\n",
        flush=True,
    )
    print("\n".join(trick_rows(args, deadline)) + "\n", flush=True)
    print("\n".join(step_rows(args, deadline)), flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
