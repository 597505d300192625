"""Train-step and forward speed of full-width FCNs, side by side with PyTorch.

    python -m benchmarks.train_step                         # JAX only: fcn8s, 375x500
    python -m benchmarks.train_step --torch-python=PYTHON   # alternate with PyTorch's FCN-8s
    python -m benchmarks.train_step --model=fcn32s --height=512 --width=512 --steps=7

Each framework runs in its own worker process (so their memory is measured apart); the
parent alternates them step by step on the same input, so both see the same machine load,
and prints the medians, their ratio, achieved GFLOP/s against the analytic count
(benchmarks/flops.py), the fraction of a measured matmul peak, and each worker's peak
resident memory while it trained. PYTHON is an interpreter that has torch (the PyTorch model
is tools/torch_reference.py, the one behind the parity fixtures); fcn-jax never needs torch.

Timings on a CPU swing from run to run unless glibc hands out huge pages to both processes:
run with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` set (the workers inherit it).
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- workers (child processes)


def _reset_peak_memory() -> None:
    """Resets the kernel's peak-RSS counter (VmHWM) so setup does not count as training.

    Memory freed during setup (initialisation temporaries, compilation) stays in the process
    until glibc gives it back, so both workers hand it back first (malloc_trim).
    """
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_memory_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _jax_variables(model):
    """Random variables made leaf by leaf, so no init temporaries inflate the process."""
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    normal = jax.jit(lambda k, x: 0.01 * jax.random.normal(k, x.shape), static_argnums=())
    return jax.tree.unflatten(treedef, [normal(k, x) for k, x in zip(keys, leaves, strict=True)])


def _jax_runner(args: argparse.Namespace):
    """The library's own jitted train step (or eval step) on the reference recipe's config."""
    import jax
    import numpy as np

    from configs import default
    from fcn_jax import steps

    config = default.get_config()
    config.model, config.batch_size = args.model, args.batch
    model = steps.create_model(config, 21)
    mesh = steps.make_mesh()
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(args.batch, args.height, args.width, 3)).astype(np.float32),
        "label": rng.integers(0, 21, size=(args.batch, args.height, args.width), dtype=np.int32),
        "mask": np.ones(args.batch, bool),
    }
    variables = _jax_variables(model)
    if args.mode == "forward":
        step = steps.jit_eval_step(model, mesh)
        variables = jax.device_put(variables, steps.replicated(mesh))
        return lambda: jax.block_until_ready(step(variables, steps.global_batch(mesh, batch)))
    state, tx = steps.create_train_state(config, variables, jax.random.PRNGKey(0))
    holder = [jax.device_put(state, steps.replicated(mesh))]
    step = steps.jit_train_step(config, model, tx, mesh)

    def run():
        holder[0], out = step(holder[0], steps.global_batch(mesh, batch))
        jax.block_until_ready(out)

    return run


def _torch_runner(args: argparse.Namespace):
    import torch

    sys.path.insert(0, ROOT)
    from tools.torch_reference import build_model

    torch.manual_seed(0)
    model = build_model(args.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "upscore" not in name:
                p.normal_(0, 0.01)
    images = torch.randn(args.batch, 3, args.height, args.width)
    labels = torch.randint(0, 21, (args.batch, args.height, args.width))
    if args.mode == "forward":
        model.eval()

        def forward():
            with torch.no_grad():
                model(images)

        return forward
    # The reference recipe (§4.3): SGD momentum 0.99, decay on weights, frozen upsampling.
    trained = [p for n, p in model.named_parameters() if "upscore" not in n]
    optimizer = torch.optim.SGD(trained, lr=1e-10, momentum=0.99, weight_decay=5e-4)
    model.train()

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels, reduction="sum")
        loss.backward()
        optimizer.step()

    return step


def _matmul_peak_gflops() -> float:
    import jax
    import jax.numpy as jnp

    n = 4096
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul).lower(a, a).compile()
    matmul(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        matmul(a, a).block_until_ready()
    return 5 * 2 * n**3 / (time.perf_counter() - start) / 1e9


def worker(args: argparse.Namespace) -> None:
    """Builds one framework's step, then times one call per `run` line read from stdin."""
    make = _jax_runner if args.worker == "jax" else _torch_runner
    start = time.perf_counter()
    run = make(args)
    run()  # compile / warm-up
    setup_s = time.perf_counter() - start
    info = {"setup_s": setup_s}
    if args.worker == "jax":
        info["matmul_gflops"] = _matmul_peak_gflops()
    _reset_peak_memory()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        run()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    print(json.dumps({"peak_bytes": _peak_memory_bytes()}), flush=True)


# ---------------------------------------------------------------- parent


class _Worker:
    def __init__(self, python: str, framework: str, args: argparse.Namespace):
        cmd = [python, "-m", "benchmarks.train_step", f"--worker={framework}"]
        cmd += [f"--{k}={getattr(args, k)}" for k in ("model", "height", "width", "batch", "mode")]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.framework = framework
        self.info = self._read()
        self.times: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.framework} worker died; run it alone to see why")
        return json.loads(line)

    def step(self) -> None:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        self.times.append(self._read()["seconds"])

    def finish(self) -> None:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.info.update(self._read())
        self.proc.wait()


def _report(args: argparse.Namespace, workers: list[_Worker]) -> None:
    from benchmarks import flops  # imports jax: the parent's business, not the torch worker's

    count = flops.train_flops if args.mode == "train" else flops.forward_flops
    total = count(args.model, args.height, args.width) * args.batch
    peak = workers[0].info.get("matmul_gflops")
    print(
        f"\n{args.model} {args.mode}, batch {args.batch}, {args.height}x{args.width}, "
        f"{total / 1e9:.0f} GFLOP per step, {args.steps} timed steps alternating"
    )
    header = f"{'':8s}{'median s':>10s}{'images/s':>10s}{'GFLOP/s':>9s}{'of peak':>9s}"
    print(header + f"{'peak RSS':>10s}{'setup s':>9s}")
    for w in workers:
        median = statistics.median(w.times)
        gflops = total / median / 1e9
        print(
            f"{w.framework:8s}{median:10.3f}{args.batch / median:10.2f}{gflops:9.0f}"
            f"{gflops / peak:9.0%}{w.info['peak_bytes'] / 2**30:8.2f}Gi{w.info['setup_s']:9.1f}"
        )
    if len(workers) == 2:
        ratio = statistics.median(workers[0].times) / statistics.median(workers[1].times)
        memory = workers[0].info["peak_bytes"] / workers[1].info["peak_bytes"]
        print(f"jax / torch: time {ratio:.2f}x, peak memory {memory:.2f}x")
    print(f"matmul peak (4096^2 float32, XLA): {peak:.0f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fcn8s", choices=["fcn32s", "fcn16s", "fcn8s"])
    parser.add_argument(
        "--mode",
        default="train",
        choices=["train", "forward"],
        help="forward: the eval step (forward + argmax + confusion matrix)",
    )
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--torch-python", help="interpreter with torch, for the side-by-side run")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    workers = [_Worker(sys.executable, "jax", args)]
    if args.torch_python:
        workers.append(_Worker(args.torch_python, "torch", args))
    for _ in range(args.steps):
        for w in workers:
            w.step()
    for w in workers:
        w.finish()
    _report(args, workers)


if __name__ == "__main__":
    main()
