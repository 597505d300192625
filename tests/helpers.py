"""Shared test helpers: a tiny config, random model variables, a one-device subprocess, the
error a command line refuses, and the gradient temporaries of a stack of convolutions."""

import os
import subprocess
import sys
from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections
import pytest

from configs import quickstart
from fcn_jax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """The quickstart config shrunk to seconds: tiny model, few steps, constant lr."""
    config = quickstart.get_config()
    config.dataset.data_dir = data_dir
    config.width = 1 / 32
    config.batch_size = 4
    config.eval_batch_size = 8
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 2
    config.num_predictions_to_save = 2
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def random_variables(model: nn.Module, seed: int = 0, scale: float = 0.3) -> dict:
    """Normal noise of std `scale` in every variable of `model`, so no layer is a silent zero.

    Only the variables' shapes come from the model: no forward pass runs.
    """
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noise = [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, noise)


def run_python(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Runs `python ARGS` from the project root on one CPU device, as users run it.

    The tests' simulated devices (XLA_FLAGS) are left out: batch 1 does not split over them.
    `env` adds variables to the child's environment.
    """
    child_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    child_env.update(env)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def usage_error(main: Callable[[list[str]], object], argv: list[str], capsys) -> str:
    """What an argparse `main(argv)` prints to stderr when it refuses `argv` (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


class _ConvStack(nn.Module):
    """Four 3x3 convolutions of class `conv`, each followed by a ReLU."""

    conv: type

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(4):
            x = nn.relu(self.conv(16, (3, 3), padding=1, name=f"conv{i}")(x))
        return x


def conv_stack_grad_temporaries(conv: type, x: jax.Array) -> int:
    """XLA's temporary bytes for the parameter gradient of four `conv` layers on `x`."""
    model = _ConvStack(conv)
    variables = model.init(jax.random.key(0), x)
    loss = jax.grad(lambda v: model.apply(v, x).sum())
    return jax.jit(loss).lower(variables).compile().memory_analysis().temp_size_in_bytes
