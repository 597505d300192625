import argparse
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops
from benchmarks import layers as benchmark_layers
from benchmarks import memory as benchmark_memory
from benchmarks import steps as benchmark_steps
from benchmarks import threads as benchmark_threads
from benchmarks import tricks as benchmark_tricks
from configs import default
from fcn_jax import losses, steps
from fcn_jax.fast_paths import FastPaths
from tests.helpers import run_python, usage_error


def test_reference_counts_are_the_issues():
    # The issue's figures for full-width FCN-8s at 500x375: 878 GFLOP per train step, 294 per
    # forward.
    assert flops.train_flops("fcn8s", 375, 500) / 1e9 == pytest.approx(878, rel=2e-3)
    assert flops.forward_flops("fcn8s", 375, 500) / 1e9 == pytest.approx(294, rel=2e-3)


def test_executed_counts_agree_with_xla_cost_analysis():
    config = default.get_config()
    model = steps.create_model(config, 21)
    image = jax.ShapeDtypeStruct((1, 128, 160, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), image)
    params = variables.pop("params")

    def logits_sum(params, variables, image):
        return model.apply({"params": params, **variables}, image, train=False).sum()

    forward = jax.jit(logits_sum).lower(params, variables, image).cost_analysis()["flops"]
    train = jax.jit(jax.grad(logits_sum)).lower(params, variables, image).cost_analysis()["flops"]
    # XLA also counts the element-wise work and the sub-pixel upsampling's true cost. On this
    # CPU the reference geometry's gradients are Winograd's, its forward pass only in inference.
    assert model.fast.winograd
    expected = flops.forward_flops("fcn8s", 128, 160, framed=True, winograd=True)
    assert forward == pytest.approx(expected, rel=0.05)
    assert expected < 0.85 * flops.forward_flops("fcn8s", 128, 160, framed=True)
    expected = flops.train_flops("fcn8s", 128, 160, framed=True, winograd=True)
    assert train == pytest.approx(expected, rel=0.05)
    assert expected < 0.85 * flops.train_flops("fcn8s", 128, 160, framed=True)


def test_simple_geometry_counts_agree_with_xla_and_are_under_half_the_reference():
    config = default.get_config()
    config.model_geometry = "simple"
    model = steps.create_model(config, 21)
    # XLA leaves out the taps that fall on a convolution's zero padding, which the analytic
    # count (what PyTorch executes) includes: 8% of the total at 64x96, 2% at 256x384.
    image = jax.ShapeDtypeStruct((1, 256, 384, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), image)
    logits_sum = jax.jit(lambda v, x: model.apply(v, x).sum())
    forward = logits_sum.lower(variables, image).cost_analysis()["flops"]
    expected = flops.forward_flops("fcn8s", 256, 384, geometry="simple", winograd=True)
    assert model.fast.winograd and forward == pytest.approx(expected, rel=0.05)
    # Differentiated, its forward passes are Winograd's from fewer channels than in inference.
    # Larger maps run Winograd in bands, the steps of a loop, whose body XLA's cost analysis
    # counts once: at this size every map fits one band.
    small = jax.ShapeDtypeStruct((1, 128, 192, 3), jnp.float32)
    train = jax.jit(jax.grad(lambda v, x: model.apply(v, x, train=False).sum()))
    expected = flops.train_flops(
        "fcn8s", 128, 192, geometry="simple", winograd=True, recompute_conv1_1=True
    )
    assert train.lower(variables, small).cost_analysis()["flops"] == pytest.approx(
        expected, rel=0.05
    )
    plain = jax.jit(lambda v, x: model.clone(fast=FastPaths()).apply(v, x).sum())
    expected = flops.forward_flops("fcn8s", 256, 384, geometry="simple")
    assert plain.lower(variables, image).cost_analysis()["flops"] == pytest.approx(
        expected, rel=0.05
    )
    # Issue #14: about half the reference's FLOPs at 512x512.
    ratio = flops.forward_flops("fcn8s", 512, 512, geometry="simple") / flops.forward_flops(
        "fcn8s", 512, 512
    )
    assert 0.4 < ratio < 0.5


def _steps(*args: str) -> subprocess.CompletedProcess:
    return run_python("-m", "benchmarks.steps", *args)


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--steps=0", "--steps: must be at least 1"),
        ("--sizes=375", "bad size '375'"),
        ("--models=fcn4s", "unknown model 'fcn4s'"),
        ("--modes=test", "unknown mode 'test'"),
        ("--geometries=course", "unknown geometry 'course'"),
        ("--geometries=simple --models=fcn8s_atonce", "at-once is reference-only"),
        ("--torch-python=/no/such/python", "not an executable interpreter"),
    ],
)
def test_bad_arguments_are_named(argument, message, capsys):
    assert message in usage_error(benchmark_steps.main, argument.split(), capsys)


@pytest.mark.slow
def test_eval_step_row():
    result = _steps("--sizes=16x16", "--modes=eval", "--steps=2")
    assert result.returncode == 0, result.stderr
    row = re.search(
        r"^\| fcn8s \| 16x16 \| eval \| jax \| ([0-9.]+) \| ([0-9.]+) \|", result.stdout, re.M
    )
    assert row, result.stdout
    median, images_per_s = float(row[1]), float(row[2])
    assert median > 0 and images_per_s == pytest.approx(1 / median, rel=0.02)


@pytest.mark.slow
def test_simple_geometry_eval_step_row():
    result = _steps("--sizes=32x64", "--modes=eval", "--steps=2", "--geometries=simple")
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^\| fcn8s \(simple\) \| 32x64 \| eval \| jax \| [0-9.]+ \|", result.stdout, re.M
    )


def test_each_geometry_trains_with_its_configs_recipe_on_both_sides():
    # What the PyTorch worker gets: the recipe of configs/default.py or configs/simple_fcn8s.py.
    reference, simple = (benchmark_steps.torch_recipe(g) for g in ("reference", "simple"))
    assert (reference["reduction"], reference["momentum"]) == ("sum", 0.99)
    assert (simple["reduction"], simple["momentum"], simple["learning_rate"]) == ("mean", 0.9, 1e-3)
    for recipe in (reference, simple):
        assert recipe["bias_lr_multiplier"] == 2.0 and recipe["weight_decay"] == 5e-4


def test_benchmark_labels_carry_void_pixels():
    args = argparse.Namespace(batch=2, height=64, width=48)
    labels = benchmark_steps._inputs(args)[1]
    void = float((labels == losses.VOID).mean())
    assert 0.03 < void < 0.07
    assert set(np.unique(labels[labels != losses.VOID])) <= set(range(benchmark_steps.NUM_CLASSES))


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--geometries=course", "unknown geometry 'course'"),
        ("--models=fcn8s_atonce", "unknown model 'fcn8s_atonce'"),
        ("--sizes=64", "bad size '64'"),
        ("--peak=-1", "--peak must be >= 0"),
    ],
)
def test_memory_bad_arguments_are_named(argument, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark_memory.main(argument.split())
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_memory_table_and_peak_buffers():
    result = run_python(
        "-m",
        "benchmarks.memory",
        "--geometries=simple",
        "--models=fcn32s",
        "--sizes=32x64",
        "--peak=3",
        "--without=ordered_grads,frame",  # four compiles rather than one per trick
    )
    assert result.returncode == 0, result.stderr
    rows = re.findall(
        r"^\| simple \| fcn32s \| 32x64 \| ([^|]+) \| ([0-9.]+) GiB \|", result.stdout, re.M
    )
    labels = [label.strip() for label, _ in rows]
    # 'auto' turns on frame too; the simple geometry ignores it.
    assert labels == ["auto", "none", "auto - ordered_grads", "auto - frame"]
    temporaries = dict((label.strip(), float(temp)) for label, temp in rows)
    assert temporaries["auto - frame"] == temporaries["auto"]
    summary, *peak = result.stdout.split("at the peak:")[1].strip().splitlines()
    in_use, allocated = map(float, re.match(r"([0-9.]+) of ([0-9.]+) MiB in use", summary).groups())
    assert 0 < in_use <= allocated
    assert len(peak) == 3 and all(re.match(r"\s*[0-9.]+ MiB  \S", line) for line in peak)
    sizes = [float(line.split()[0]) for line in peak]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) <= in_use


def test_memory_unknown_trick_is_named(capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark_memory.main(["--without=frame,fused_relu"])
    assert exit_.value.code == 2
    assert "unknown trick 'fused_relu' in --without" in capsys.readouterr().err


def test_tricks_bad_size_is_named(capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark_tricks.main(["--size=512"])
    assert exit_.value.code == 2
    assert "bad --size '512'" in capsys.readouterr().err


@pytest.mark.slow
def test_layers_table_has_every_shape_at_its_map_size():
    # FCN_TORCH_PYTHON empty: fcn-jax's and XLA's columns only, as where torch is missing.
    result = run_python(
        "-m", "benchmarks.layers", "--size=64x96", "--reps=1", "--rounds=2", FCN_TORCH_PYTHON=""
    )
    assert result.returncode == 0, result.stderr
    number = r"([0-9.]+) / ([0-9.]+)"
    rows = re.findall(
        rf"^\| (conv\d_\d) \| (\d+)->(\d+) \| (\d+x\d+) \| {number} \| {number} \| {number} \|$",
        result.stdout,
        re.M,
    )
    assert [row[0] for row in rows] == [name for name, *_ in benchmark_layers.LAYERS]
    for (_, c_in, c_out, size, *times), (_, want_in, want_out, stride) in zip(
        rows, benchmark_layers.LAYERS, strict=True
    ):
        assert (int(c_in), int(c_out), size) == (
            want_in,
            want_out,
            f"{64 // stride}x{96 // stride}",
        )
        assert all(float(t) > 0 for t in times)


@pytest.mark.parametrize("size", ["384", "100x96", "0x32"])
def test_layers_bad_size_is_named(size, capsys):
    message = usage_error(benchmark_layers.main, [f"--size={size}"], capsys)
    assert f"bad --size '{size}'" in message


def _pool_regions(thread: str, start: int, stop: int) -> list[tuple[int, int, str, str]]:
    """A pool thread's trace marks around one piece of work from `start` to `stop`."""
    return [
        (start, start, thread, benchmark_threads.REGION_START),
        (stop, stop, thread, benchmark_threads.REGION_STOP),
    ]


def test_thread_shares_from_pool_regions():
    # Thread a works over [0, 10) and [30, 40), thread b over [5, 20): from 0 to 40, one
    # thread works 5 + 10 + 10 ns, both 5, none 10 (from 20 to 30).
    a, b = f"{benchmark_threads.POOL_THREAD}/1", f"{benchmark_threads.POOL_THREAD}/2"
    events = _pool_regions(a, 30, 40) + _pool_regions(b, 5, 20) + _pool_regions(a, 0, 10)
    events.append((0, 50, "python", benchmark_threads.REGION_START))  # not a pool thread
    busy = benchmark_threads.BusyThreads(benchmark_threads.busy_intervals(events))
    assert busy.between(0, 40) == {0: 10, 1: 25, 2: 5}
    assert busy.between(-5, 7) == {0: 5, 1: 5, 2: 2}
    assert busy.between(35, 60) == {1: 5, 0: 20}


def test_operations_own_the_time_until_the_next_one_starts():
    a, b = f"{benchmark_threads.POOL_THREAD}/1", f"{benchmark_threads.POOL_THREAD}/2"
    events = _pool_regions(a, 0, 10) + _pool_regions(b, 5, 20)
    events += [
        (0, 1, a, "dot_general.12"),
        (12, 13, b, "select_dynamic-update-slice_fusion.3"),
        (18, 19, a, "dot_general.7"),
        (25, 26, a, "ThunkExecutor::Execute"),  # not an operation
        (30, 31, b, "copy.2"),  # the last one started: nothing follows it
    ]
    busy = benchmark_threads.BusyThreads(benchmark_threads.busy_intervals(events))
    kinds = benchmark_threads.by_operation_kind(events, busy)
    # dot_general: [0, 12) (one thread 7 ns, both 5) and [18, 30) (one 2, none 10).
    assert kinds == {
        "dot_general": {1: 9, 2: 5, 0: 10},
        "select_dynamic-update-slice_fusion": {1: 6},
    }


@pytest.mark.slow
def test_threads_table_sums_to_the_traced_time():
    result = run_python("-m", "benchmarks.threads", "--size=64x96", "--steps=1", "--top=50")
    assert result.returncode == 0, result.stderr
    shares = re.findall(r"^  (\d): +([0-9.]+)% \((\d+) ms per step\)$", result.stdout, re.M)
    assert [int(n) for n, *_ in shares] == list(range(len(shares)))
    assert len(shares) >= 2
    assert sum(float(share) for _, share, _ in shares) == pytest.approx(100, abs=0.5)
    rows = re.findall(r"^\| ([a-z_\-]+) \|((?: [0-9.]+ \|)+)$", result.stdout, re.M)
    assert "dot_general" in [kind for kind, _ in rows]
    for _, cells in rows:
        *by_threads, total = (float(cell) for cell in cells.strip(" |").split(" | "))
        assert total == pytest.approx(sum(by_threads), abs=0.1 * len(by_threads))


def test_threads_bad_size_is_named(capsys):
    assert "bad --size '384'" in usage_error(benchmark_threads.main, ["--size=384"], capsys)
