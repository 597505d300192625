"""Speed and memory of fcn-jax's train and eval steps at full width, side by side with PyTorch.

    python -m benchmarks.steps                               # fcn8s train step, 375x500
    python -m benchmarks.steps --torch-python=PYTHON         # alternating with PyTorch
    python -m benchmarks.steps --models=fcn32s,fcn16s,fcn8s --sizes=375x500,512x512 \\
        --modes=train,eval --torch-python=PYTHON             # the whole table
    python -m benchmarks.steps --dtype=bfloat16 --batch=8    # on a GPU or TPU
    python -m benchmarks.steps --geometries=reference,simple # next to the course-notes FCN

Each (model, size, mode) gets fresh worker processes, one per framework, so that compile
time and memory are measured apart; the parent alternates them step by step on the same
input, so both see the same machine load, and prints the medians and their ratio. The JAX
worker runs the library's own jitted steps (fcn_jax.steps); the eval step is the forward
pass, the argmax and the confusion matrix. The PyTorch worker runs tools/torch_reference.py
(the model behind the parity fixtures), or for `--geometries=simple` (the course-notes
geometry of fcn_jax/models/simple.py, rows marked "(simple)")
tools/torch_simple_reference.py; its eval step is forward, argmax and bincount. PYTHON is an
interpreter that has torch (default: $FCN_TORCH_PYTHON, see docs/development.md); fcn-jax
itself never needs it.

Both frameworks train with the recipe of the geometry's config (`recipe_config`): the
reference's (configs/default.py: summed loss, SGD momentum 0.99) or the course notes'
(configs/simple_fcn8s.py: mean loss, SGD momentum 0.9), with the same parameter groups
on both sides (weights decayed at the learning rate, biases at its multiple without decay,
the bilinear upsampling frozen) and the void label 255 ignored (5% of the pixels carry it).

Columns: median seconds per step and images per second; GFLOP per step as executed (on a CPU
fcn-jax skips most of the padding frame, fcn_jax.frame, and multiplies less in its Winograd
convolutions, fcn_jax.winograd; PyTorch runs the analytic count, printed
beside it) and the GFLOP/s they make, also as a fraction of a measured matmul peak; peak
memory (on a CPU each worker's resident set from after set-up to the end, on an accelerator
the device's peak bytes in use); compile time (JAX: lowering and compiling; PyTorch: its
first step). On an accelerator whose kind is in PEAK_TFLOPS the MFU against its peak for the
compute dtype is printed too.

CPU timings swing from run to run unless glibc hands both processes huge pages: set
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (the workers inherit it).
"""

import argparse
import ctypes
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 21
VOID = 255  # fcn_jax.losses.VOID, which both frameworks' losses ignore
VOID_FRACTION = 0.05
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # fcn_jax.preprocessing's
# Dense per-chip peaks in TFLOP/s by compute dtype, from the vendors' data sheets. For
# float32 on NVIDIA Ampere and newer the peak is TF32's (XLA's default precision uses it), on
# TPUs the bfloat16 one (float32 matmuls run as bfloat16 passes by default).
PEAK_TFLOPS = {
    "h100": {"bfloat16": 989, "float32": 495},
    "h200": {"bfloat16": 989, "float32": 495},
    "a100": {"bfloat16": 312, "float32": 156},
    "l4": {"bfloat16": 121, "float32": 60},
    "a10g": {"bfloat16": 70, "float32": 35},
    "tpu v4": {"bfloat16": 275, "float32": 275},
    "tpu v5 lite": {"bfloat16": 197, "float32": 197},
    "tpu v5p": {"bfloat16": 459, "float32": 459},
    "tpu v6 lite": {"bfloat16": 918, "float32": 918},
}


# ---------------------------------------------------------------- workers (child processes)


def _reset_peak_rss() -> None:
    """Resets the kernel's peak-RSS counter (VmHWM) so set-up does not count as a step.

    Memory freed during set-up (initialisation temporaries, compilation) stays in the process
    until glibc gives it back, so both workers hand it back first (malloc_trim).
    """
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _inputs(args: argparse.Namespace):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (args.batch, args.height, args.width)
    images = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=shape, dtype=np.int32)
    labels[rng.random(shape) < VOID_FRACTION] = VOID
    return images, labels


def recipe_config(geometry: str):
    """The config whose training recipe `geometry`'s rows use."""
    # Imported here: ml_collections is not in the PyTorch worker's environment.
    from configs import default, simple_fcn8s

    return {"reference": default, "simple": simple_fcn8s}[geometry].get_config()


def torch_recipe(geometry: str) -> dict:
    """What the PyTorch worker needs of `recipe_config(geometry)`, which it cannot import."""
    config = recipe_config(geometry)
    opt = config.optimizer
    if opt.name != "sgd":
        raise ValueError(f"the PyTorch worker runs SGD only; the {geometry} recipe uses {opt.name}")
    return {
        "reduction": config.loss_reduction,
        "learning_rate": opt.learning_rate,
        "momentum": opt.momentum,
        "weight_decay": opt.weight_decay,
        "bias_lr_multiplier": opt.bias_lr_multiplier,
    }


def _jax_variables(model):
    """Random variables drawn by NumPy: no init temporaries, no compilation per shape.

    A jitted generator, compiled for each parameter shape, left 0.03 GiB in the process, and
    so did a scaled copy of each draw passed to `jnp.asarray`: each array is drawn in
    float32, scaled in place and handed to the device as it is.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)

    def draw(shape: jax.ShapeDtypeStruct) -> jax.Array:
        values = rng.standard_normal(shape.shape, shape.dtype)
        values *= 0.01
        return jax.device_put(values)

    return jax.tree.map(draw, shapes)


def _compiled(jitted, *example):
    start = time.perf_counter()
    compiled = jitted.lower(*example).compile()
    return compiled, time.perf_counter() - start


def _jax_runner(args: argparse.Namespace):
    """The library's jitted train (or eval) step; returns (run one step, compile seconds)."""
    from fcn_jax import xla_setup

    xla_setup.add_default_xla_flags()  # main.py's CPU settings, before the first computation
    import jax
    import numpy as np

    from fcn_jax import steps

    config = recipe_config(args.geometry)
    config.model, config.batch_size, config.compute_dtype = args.model, args.batch, args.dtype
    config.model_geometry = args.geometry
    model = steps.create_model(config, NUM_CLASSES)
    mesh = steps.make_mesh()
    images, labels = _inputs(args)
    # Each image fills its canvas: the per-example sizes cost what they cost in training.
    sizes = np.tile(np.array([[args.height, args.width]], np.int32), (args.batch, 1))
    batch = {"image": images, "label": labels, "size": sizes, "mask": np.ones(args.batch, bool)}
    batch = steps.global_batch(mesh, batch)
    variables = _jax_variables(model)
    if args.mode == "eval":
        variables = jax.device_put(variables, steps.replicated(mesh))
        step, compile_s = _compiled(
            steps.jit_eval_step(model, mesh, config.dataset.preprocessing), variables, batch
        )
        return (lambda: jax.block_until_ready(step(variables, batch))), compile_s
    state, tx = steps.create_train_state(config, variables, jax.random.PRNGKey(0))
    holder = [jax.device_put(state, steps.replicated(mesh))]
    step, compile_s = _compiled(steps.jit_train_step(config, model, tx, mesh), holder[0], batch)

    def run():
        holder[0], out = step(holder[0], batch)
        jax.block_until_ready(out)

    return run, compile_s


def _torch_runner(args: argparse.Namespace):
    """The PyTorch model of `args.geometry`, trained or evaluated like the JAX worker's."""
    import torch

    sys.path.insert(0, ROOT)
    if args.geometry == "simple":
        from tools.torch_simple_reference import build_model
    else:
        from tools.torch_reference import build_model

    torch.manual_seed(0)
    model = build_model(args.model, NUM_CLASSES)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "upscore" not in name:
                p.normal_(0, 0.01)
    images, labels = (torch.from_numpy(a) for a in _inputs(args))
    # PyTorch's loader hands the network normalised floats: the preprocessing is not timed.
    mean = torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float32)
    images = (images.flip(-1).float() - mean).permute(0, 3, 1, 2).contiguous()
    labels = labels.long()
    if args.mode == "eval":
        model.eval()

        def evaluate():
            with torch.no_grad():
                predictions = model(images).argmax(1)
                torch.bincount(labels.flatten() * NUM_CLASSES + predictions.flatten())

        return evaluate
    # The geometry's recipe, with the parameter groups of fcn_jax.optim: the frozen bilinear
    # upsampling gets no gradient at all, as in fcn-jax where it is not in `params`.
    recipe = json.loads(args.recipe)
    lr = recipe["learning_rate"]
    for name, p in model.named_parameters():
        p.requires_grad_("upscore" not in name)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for n, p in trained if not n.endswith("bias")],
            "weight_decay": recipe["weight_decay"],
        },
        {
            "params": [p for n, p in trained if n.endswith("bias")],
            "lr": lr * recipe["bias_lr_multiplier"],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=recipe["momentum"])
    model.train()  # dropout on

    def step():
        optimizer.zero_grad()
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(
            logits, labels, ignore_index=VOID, reduction=recipe["reduction"]
        )
        if recipe["reduction"] == "sum":
            loss = loss / len(images)  # fcn_jax.losses: summed per image
        loss.backward()
        optimizer.step()

    return step


def _device_info(dtype: str) -> dict:
    """The JAX device's kind, a measured matmul peak in GFLOP/s, and its spec peak if known."""
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    n = 4096 if device.platform == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    matmul = jax.jit(jnp.matmul).lower(a, a).compile()
    matmul(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        matmul(a, a).block_until_ready()
    info = {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "matmul_gflops": 5 * 2 * n**3 / (time.perf_counter() - start) / 1e9,
    }
    kind = device.device_kind.lower()
    for name, peaks in PEAK_TFLOPS.items():
        if name in kind:
            info["spec_gflops"] = peaks[dtype] * 1e3
    return info


def _peak_memory_bytes(framework: str) -> int:
    if framework == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats and jax.devices()[0].platform != "cpu":
            return stats["peak_bytes_in_use"]
    return _peak_rss_bytes()


def worker(args: argparse.Namespace) -> None:
    """Builds one framework's step, then times one call per `run` line read from stdin."""
    info = {}
    if args.worker == "jax":
        run, info["compile_s"] = _jax_runner(args)
        start = time.perf_counter()
        run()  # warm-up
        info["first_step_s"] = time.perf_counter() - start
        info.update(_device_info(args.dtype))
    else:
        run = _torch_runner(args)
        start = time.perf_counter()
        run()  # warm-up; PyTorch's set-up happens in its first step
        info["compile_s"] = info["first_step_s"] = time.perf_counter() - start
    _reset_peak_rss()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        run()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    print(json.dumps({"peak_bytes": _peak_memory_bytes(args.worker)}), flush=True)


# ---------------------------------------------------------------- parent


class _Worker:
    def __init__(self, python: str, framework: str, args: argparse.Namespace, case: dict):
        cmd = [python, "-m", "benchmarks.steps", f"--worker={framework}"]
        cmd += [f"--{k}={v}" for k, v in case.items()]
        cmd += [f"--batch={args.batch}", f"--dtype={args.dtype}"]
        if framework == "torch":
            cmd.append(f"--recipe={json.dumps(torch_recipe(case['geometry']))}")
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


def _run_case(args: argparse.Namespace, case: dict) -> list[_Worker]:
    workers = [_Worker(sys.executable, "jax", args, case)]
    if args.torch_python:
        workers.append(_Worker(args.torch_python, "torch", args, case))
    for _ in range(args.steps):
        for w in workers:
            w.step()
    for w in workers:
        w.finish()
    return workers


def _rows(args: argparse.Namespace, case: dict, workers: list[_Worker]) -> list[str]:
    # These import jax: the parent's business, not the torch worker's.
    from benchmarks import flops
    from fcn_jax import fast_paths

    count = flops.train_flops if case["mode"] == "train" else flops.forward_flops
    size = (case["model"], case["height"], case["width"], NUM_CLASSES)
    geometry = case["geometry"]
    device = workers[0].info
    # What the JAX worker's model runs: the frame (reference), Winograd and conv1_1's
    # recomputation (simple) where on.
    fast = fast_paths.resolve("auto", device["platform"])
    options = dict(framed=fast.frame, geometry=geometry, winograd=fast.winograd)
    if case["mode"] == "train" and geometry == "simple":
        options["recompute_conv1_1"] = fast.recompute_conv1_1
    executed = {"jax": count(*size, **options), "torch": count(*size, geometry=geometry)}
    label = case["model"] + (" (simple)" if geometry == "simple" else "")
    rows = []
    for w in workers:
        median = statistics.median(w.times)
        gflop = executed[w.framework] * args.batch / 1e9
        gflops = gflop / median
        peak = device["matmul_gflops"] if w.framework == "jax" or device["platform"] == "cpu" else 0
        of_peak = f"{gflops / peak:.0%}" if peak else "-"
        mfu = device.get("spec_gflops")
        mfu = f"{gflops / mfu:.1%}" if mfu and w.framework == "jax" else "-"
        ratios = "| - | -"
        if len(workers) == 2:
            ratios = (
                f"| {median / statistics.median(workers[1].times):.2f} "
                f"| {w.info['peak_bytes'] / workers[1].info['peak_bytes']:.2f}"
            )
        rows.append(
            f"| {label} | {case['height']}x{case['width']} | {case['mode']} "
            f"| {w.framework} | {median:.3f} | {args.batch / median:.2f} | {gflop:.0f} "
            f"| {gflops:.0f} | {of_peak} | {mfu} | {w.info['peak_bytes'] / 2**30:.2f} GiB "
            f"| {w.info['compile_s']:.1f} {ratios} |"
        )
    return rows


MODELS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")
GEOMETRIES = ("reference", "simple")


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """The median wall time of `repeats` calls of `call`, after one untimed call.

    `call` must wait for its own result (`jax.block_until_ready` for JAX).
    """
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_size(text: str) -> tuple[int, int]:
    """Parses HxW (e.g. 375x500) into two positive ints; argparse reports a ValueError."""
    height, width = (int(v) for v in text.lower().split("x"))
    if height < 1 or width < 1:
        raise ValueError(text)
    return height, width


def _cases(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    """The (geometry, model, size, mode) combinations asked for, each checked."""
    cases = []
    for geometry, model in itertools.product(args.geometries.split(","), args.models.split(",")):
        if geometry not in GEOMETRIES:
            parser.error(f"unknown geometry {geometry!r}: use one of {', '.join(GEOMETRIES)}")
        if model not in MODELS:
            parser.error(f"unknown model {model!r}: use one of {', '.join(MODELS)}")
        if geometry == "simple" and model == "fcn8s_atonce":
            parser.error("fcn8s_atonce has no simple geometry (at-once is reference-only)")
        for size in args.sizes.split(","):
            try:
                height, width = parse_size(size)
            except ValueError:
                parser.error(f"bad size {size!r} in --sizes: use HxW with H, W >= 1, e.g. 375x500")
            for mode in args.modes.split(","):
                if mode not in ("train", "eval"):
                    parser.error(f"unknown mode {mode!r}: use train or eval")
                case = dict(model=model, height=height, width=width, mode=mode)
                cases.append(dict(case, geometry=geometry))
    return cases


def positive_int(text: str) -> int:
    """An argparse type: `text` as an int of at least 1 (the benchmarks' counts)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark; `argv` defaults to the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fcn8s", help="comma-separated: fcn32s,fcn16s,fcn8s")
    parser.add_argument("--sizes", default="375x500", help="comma-separated HxW, e.g. 512x512")
    parser.add_argument("--modes", default="train", help="comma-separated: train,eval")
    parser.add_argument(
        "--geometries", default="reference", help="comma-separated: reference,simple"
    )
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps per framework")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--torch-python",
        default=os.environ.get("FCN_TORCH_PYTHON"),
        help="interpreter with torch, for the side-by-side run (default: $FCN_TORCH_PYTHON)",
    )
    # Worker-only arguments (one case each).
    worker_args = ("model", str), ("height", int), ("width", int), ("mode", str), ("geometry", str)
    for name, kind in worker_args:
        parser.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)  # torch_recipe's JSON
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    cases = _cases(args, parser)
    if args.torch_python and not os.access(args.torch_python, os.X_OK):
        parser.error(f"--torch-python={args.torch_python} is not an executable interpreter")
    header = (
        "| model | size | step | framework | median s | images/s | GFLOP/step | GFLOP/s "
        "| of matmul peak | MFU | peak memory | compile s | time / torch | memory / torch |"
    )
    table = [header, "|" + "---|" * (header.count("|") - 1)]
    device = None
    for case in cases:
        workers = _run_case(args, case)
        device = workers[0].info
        rows = _rows(args, case, workers)
        print("\n".join(rows), flush=True)
        table += rows
    print(
        f"\n{device['device_kind']} ({device['platform']}), batch {args.batch}, {args.dtype}, "
        f"{args.steps} timed steps per framework, alternating; matmul peak "
        f"({'4096' if device['platform'] == 'cpu' else '8192'}^2 {args.dtype}, XLA): "
        f"{device['matmul_gflops']:.0f} GFLOP/s\n"
    )
    print("\n".join(table))


if __name__ == "__main__":
    main()
