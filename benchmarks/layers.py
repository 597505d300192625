"""The course-notes FCN's 3x3 convolutions one by one: fcn-jax, XLA's plain path and PyTorch.

    python -m benchmarks.layers --size=384x512                      # fcn-jax and XLA
    python -m benchmarks.layers --size=384x512 --torch-python=PYTHON  # and PyTorch beside them

Each VGG16 3x3 layer after conv1_1, one per distinct shape, at the map size it has for an
HxW input (fcn_jax/models/simple.py), is timed alone in three jitted pieces: its forward
pass, its backward pass (the input, kernel and bias gradients) and its kernel and bias
gradients alone. fcn-jax's column computes the layer as the course-notes model does here
('auto': `fcn_jax.winograd.winograd_conv_bias` where the winograd trick is on), the XLA
column as the plain path does (XLA's convolution and its gradients). PyTorch cannot take a
gradient without its forward pass, so its backward time is that of forward plus gradients,
less the forward. Workers run in separate processes, JAX's and PyTorch's in turn, for
`--rounds` rounds; each figure is the median over the rounds of a median of `--reps` calls.

This is where the train step's time goes by layer: benchmarks/steps.py times the whole
step, benchmarks/tricks.py what each trick is worth in it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks import steps as benchmark_steps

# (layer, input channels, output channels, input pixels per map pixel): the distinct shapes
# of the course-notes FCN's 3x3 convolutions after conv1_1.
LAYERS = (
    ("conv1_2", 64, 64, 1),
    ("conv2_1", 64, 128, 2),
    ("conv2_2", 128, 128, 2),
    ("conv3_1", 128, 256, 4),
    ("conv3_2", 256, 256, 4),
    ("conv4_1", 256, 512, 8),
    ("conv4_2", 512, 512, 8),
    ("conv5_1", 512, 512, 16),
)
PIECES = ("forward", "backward", "kernel_grad")
PADDING = ((1, 1), (1, 1))


def _median_ms(call, reps: int) -> float:
    return 1e3 * benchmark_steps.median_seconds(call, reps)


def _jax_pieces(conv, x, kernel, bias, grad) -> dict:
    """Jitted calls of `conv(x, kernel, bias)`'s forward, backward and kernel gradient."""
    import jax

    forward = jax.jit(conv)
    backward = jax.jit(lambda *a: jax.vjp(conv, *a[:3])[1](a[3]))
    kernel_grad = jax.jit(lambda x, *a: jax.vjp(lambda k, b: conv(x, k, b), *a[:2])[1](a[2]))
    return {
        "forward": lambda: jax.block_until_ready(forward(x, kernel, bias)),
        "backward": lambda: jax.block_until_ready(backward(x, kernel, bias, grad)),
        "kernel_grad": lambda: jax.block_until_ready(kernel_grad(x, kernel, bias, grad)),
    }


def _jax_worker(height: int, width: int, reps: int) -> dict:
    from fcn_jax import xla_setup

    xla_setup.add_default_xla_flags()  # main.py's CPU settings, before the first computation
    import jax
    import numpy as np

    from fcn_jax import fast_paths, layers, winograd

    def plain(x, kernel, bias):
        return layers.conv_nhwc(x, kernel, PADDING, None) + bias

    def fcn_jax(x, kernel, bias):
        if fast_paths.resolve("auto").winograd:
            return winograd.winograd_conv_bias(x, kernel, bias, PADDING, None)
        return plain(x, kernel, bias)

    rng = np.random.default_rng(0)
    times = {}
    for name, c_in, c_out, stride in LAYERS:
        shape = (1, height // stride, width // stride)
        x, grad = (
            jax.device_put(rng.standard_normal((*shape, c), np.float32)) for c in (c_in, c_out)
        )
        kernel = jax.device_put(0.05 * rng.standard_normal((3, 3, c_in, c_out), np.float32))
        bias = jax.device_put(np.zeros(c_out, np.float32))
        for label, conv in (("fcn-jax", fcn_jax), ("XLA", plain)):
            pieces = _jax_pieces(conv, x, kernel, bias, grad)
            times[f"{name} {label}"] = {k: _median_ms(pieces[k], reps) for k in PIECES}
    return times


def _torch_layer_ms(c_in: int, c_out: int, height: int, width: int, reps: int) -> dict:
    import torch

    conv2d = torch.nn.functional.conv2d
    x, grad = torch.randn(1, c_in, height, width), torch.randn(1, c_out, height, width)
    x_grad = x.clone().requires_grad_()
    kernel = (0.05 * torch.randn(c_out, c_in, 3, 3)).requires_grad_()
    bias = torch.zeros(c_out, requires_grad=True)

    def forward():
        with torch.no_grad():
            conv2d(x, kernel, bias, padding=1)

    def forward_backward():
        out = conv2d(x_grad, kernel, bias, padding=1)
        torch.autograd.grad(out, (x_grad, kernel, bias), grad)

    def forward_kernel_grad():
        torch.autograd.grad(conv2d(x, kernel, bias, padding=1), (kernel, bias), grad)

    ms = {"forward": _median_ms(forward, reps)}
    ms["backward"] = _median_ms(forward_backward, reps) - ms["forward"]
    ms["kernel_grad"] = _median_ms(forward_kernel_grad, reps) - ms["forward"]
    return ms


def _torch_worker(height: int, width: int, reps: int) -> dict:
    return {
        f"{name} PyTorch": _torch_layer_ms(c_in, c_out, height // stride, width // stride, reps)
        for name, c_in, c_out, stride in LAYERS
    }


def worker(args: argparse.Namespace) -> None:
    """Prints one framework's times, {"<layer> <column>": {piece: ms}}, as one JSON line."""
    run = _jax_worker if args.worker == "jax" else _torch_worker
    print(json.dumps(run(args.height, args.width, args.reps)), flush=True)


def _run_worker(python: str, framework: str, args: argparse.Namespace) -> dict:
    command = [python, "-m", "benchmarks.layers", f"--worker={framework}"]
    command += [f"--size={args.height}x{args.width}", f"--reps={args.reps}"]
    result = subprocess.run(
        command, cwd=benchmark_steps.ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"the {framework} worker ({python}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _table(rounds: list[dict], args: argparse.Namespace) -> list[str]:
    """Markdown rows: each layer's medians per column, and fcn-jax's over PyTorch's."""
    columns = ["fcn-jax", "XLA"] + (["PyTorch"] if args.torch_python else [])
    median = {
        key: {piece: statistics.median(r[key][piece] for r in rounds) for piece in PIECES}
        for key in rounds[0]
    }
    head = [f"{piece} ms: " + " / ".join(columns) for piece in PIECES]
    lines = [
        f"3x3 convolutions at {args.height}x{args.width}, median of {args.rounds} rounds:",
        "| layer | channels | map | " + " | ".join(head) + " |",
        "|---|---|---|" + "---|" * len(head),
    ]
    for name, c_in, c_out, stride in LAYERS:
        cells = [
            " / ".join(f"{median[f'{name} {c}'][piece]:.1f}" for c in columns) for piece in PIECES
        ]
        size = f"{args.height // stride}x{args.width // stride}"
        lines.append(f"| {name} | {c_in}->{c_out} | {size} | " + " | ".join(cells) + " |")
    if args.torch_python:
        lines.append("fcn-jax / PyTorch per layer, forward and backward together:")
        for name, *_ in LAYERS:
            jax_ms, torch_ms = (
                median[f"{name} {c}"]["forward"] + median[f"{name} {c}"]["backward"]
                for c in ("fcn-jax", "PyTorch")
            )
            lines.append(f"  {name}: {jax_ms / torch_ms:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Prints the table; `argv` defaults to the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="384x512", help="HxW, each a multiple of 32")
    parser.add_argument("--reps", type=benchmark_steps.positive_int, default=7)
    parser.add_argument("--rounds", type=benchmark_steps.positive_int, default=2)
    parser.add_argument(
        "--torch-python",
        default=os.environ.get("FCN_TORCH_PYTHON"),
        help="interpreter with torch, for PyTorch's column (default: $FCN_TORCH_PYTHON)",
    )
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.height, args.width = benchmark_steps.parse_size(args.size)
        if args.height % 32 or args.width % 32:
            raise ValueError(args.size)
    except ValueError:
        parser.error(f"bad --size {args.size!r}: use HxW, each a multiple of 32, e.g. 384x512")
    if args.worker:
        worker(args)
        return
    rounds = []
    for _ in range(args.rounds):
        times = _run_worker(sys.executable, "jax", args)
        if args.torch_python:
            times |= _run_worker(args.torch_python, "torch", args)
        rounds.append(times)
    print("\n".join(_table(rounds, args)))


if __name__ == "__main__":
    main()
