"""fcn_jax/checkpoint.py: saves and restores on real orbax managers, and managers closed.

A manager that has saved runs worker threads until it is closed, so "no thread of the block
left behind" is the check that `Checkpoints` closed both of its managers.
"""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import checkpoint

STATE = {"params": {"w": np.arange(3.0, dtype=np.float32)}, "frozen": {"upsampling": {}}}


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _started_since(before: set[threading.Thread], patience_s: float = 10.0) -> set:
    """The threads started since `before` that are still alive after up to `patience_s`."""
    deadline = time.monotonic() + patience_s
    while (left := _threads() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _state(scale: float) -> dict:
    return jax.tree.map(lambda x: jnp.asarray(x * scale), STATE)


def test_with_block_saves_and_closes_both_managers(tmp_path):
    before = _threads()
    with checkpoint.Checkpoints(str(tmp_path), max_to_keep=2) as checkpoints:
        checkpoints.save(1, _state(1.0), {"seed": 0})
        checkpoints.save(2, _state(2.0), {"seed": 0})
        checkpoints.save_best(2, {"params": _state(2.0)["params"]}, mean_iou=0.5)
        assert _threads() - before  # the managers' workers run inside the block
    assert _started_since(before) == set()
    step, state = checkpoint.read_latest_state(str(tmp_path))
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], 2 * STATE["params"]["w"])


def test_close_waits_for_pending_saves(tmp_path):
    checkpoints = checkpoint.Checkpoints(str(tmp_path), max_to_keep=1)
    checkpoints.save(3, _state(3.0), {"seed": 0})
    checkpoints.close()
    assert checkpoint.read_latest_state(str(tmp_path))[0] == 3


def test_restore_variables_reads_the_best_model_else_the_latest_state(tmp_path):
    with checkpoint.Checkpoints(str(tmp_path), max_to_keep=1) as checkpoints:
        checkpoints.save(1, _state(1.0), {"seed": 0})
    # No best model: restore_variables falls back to the latest train state.
    variables = checkpoint.restore_variables(str(tmp_path))
    np.testing.assert_array_equal(variables["params"]["w"], STATE["params"]["w"])
    assert checkpoint.read_latest_state(str(tmp_path / "nothing")) is None
    with checkpoint.Checkpoints(str(tmp_path), max_to_keep=1) as checkpoints:
        checkpoints.save_best(1, {"params": _state(4.0)["params"]}, mean_iou=0.25)
    variables = checkpoint.restore_variables(str(tmp_path))
    np.testing.assert_array_equal(variables["params"]["w"], 4 * STATE["params"]["w"])


def test_restore_variables_without_checkpoint_names_the_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*train there first"):
        checkpoint.restore_variables(str(tmp_path))
