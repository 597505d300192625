import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import flops
from configs import default
from fcn_jax import steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reference_counts_are_the_issues():
    # The issue's figures for full-width FCN-8s at 500x375: 878 GFLOP per train step, 294 per
    # forward.
    assert flops.train_flops("fcn8s", 375, 500) / 1e9 == pytest.approx(878, rel=2e-3)
    assert flops.forward_flops("fcn8s", 375, 500) / 1e9 == pytest.approx(294, rel=2e-3)


def test_executed_counts_agree_with_xla_cost_analysis():
    config = default.get_config()
    model = steps.create_model(config, 21)
    image = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), image)
    params = variables.pop("params")

    def logits_sum(params, variables, image):
        return model.apply({"params": params, **variables}, image, train=False).sum()

    forward = jax.jit(logits_sum).lower(params, variables, image).cost_analysis()["flops"]
    train = jax.jit(jax.grad(logits_sum)).lower(params, variables, image).cost_analysis()["flops"]
    # XLA also counts the element-wise work and the sub-pixel upsampling's true cost.
    assert forward == pytest.approx(flops.forward_flops("fcn8s", 64, 96, framed=True), rel=0.05)
    assert train == pytest.approx(flops.train_flops("fcn8s", 64, 96, framed=True), rel=0.05)


def _steps(*args: str) -> subprocess.CompletedProcess:
    # One device, as users run it: batch 1 does not split over the tests' simulated devices.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.steps", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--steps=0", "--steps: must be at least 1"),
        ("--sizes=375", "bad size '375'"),
        ("--models=fcn4s", "unknown model 'fcn4s'"),
        ("--modes=test", "unknown mode 'test'"),
        ("--torch-python=/no/such/python", "not an executable interpreter"),
    ],
)
def test_bad_arguments_are_named(argument, message):
    result = _steps(argument)
    assert result.returncode == 2
    assert message in result.stderr


def test_eval_step_row():
    result = _steps("--sizes=16x16", "--modes=eval", "--steps=2")
    assert result.returncode == 0, result.stderr
    row = re.search(
        r"^\| fcn8s \| 16x16 \| eval \| jax \| ([0-9.]+) \| ([0-9.]+) \|", result.stdout, re.M
    )
    assert row, result.stdout
    median, images_per_s = float(row[1]), float(row[2])
    assert median > 0 and images_per_s == pytest.approx(1 / median, rel=0.02)
