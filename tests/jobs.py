"""Jobs of `main.py` in subprocesses for the multi-process tests, and what they leave behind.

Every job talks only to 127.0.0.1, has its own simulated device count and a time limit, and
whatever still runs when its `with` block ends is killed.
"""

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from fcn_jax import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
TIMEOUT_S = 600  # per job; a healthy job on a loaded 2-core machine takes a minute or two


def job_flags(workdir, data_dir, **overrides) -> list[str]:
    """main.py flags: the quickstart shrunk to a width-1/32 model and a few steps."""
    config = {
        "width": 1 / 32,
        "batch_size": 4,
        "eval_batch_size": 8,
        "num_train_steps": STEPS,
        "log_every_steps": 2,
        "eval_every_steps": 1000,
        "checkpoint_every_steps": 1000,
        "num_predictions_to_save": 0,
        "optimizer.schedule": "constant",
        "optimizer.warmup_steps": 0,
        "dataset.data_dir": data_dir,
        **overrides,
    }
    return [
        "--config=configs/quickstart.py",
        f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in config.items()),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"  # compiles faster; every job the same
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


@contextlib.contextmanager
def job(tmp_path, name, flags, *, processes=1, devices=1, env=None, code=None):
    """Starts `main.py FLAGS` (or `python -c CODE`) as one job of `processes` processes.

    Yields the Popen objects; each writes to TMP_PATH/NAME.I.log. Whatever still runs at the
    end is killed.
    """
    port = _free_port()
    popens = []
    try:
        for index in range(processes):
            command = [sys.executable, "-c", code] if code else [sys.executable, "main.py"]
            command += flags
            if processes > 1:
                command += [
                    f"--coordinator_address=127.0.0.1:{port}",
                    f"--num_processes={processes}",
                    f"--process_id={index}",
                ]
            log = open(tmp_path / f"{name}.{index}.log", "w")  # noqa: SIM115 (closed below)
            popens.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=_env(devices, **(env or {})),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        yield popens
    finally:
        for popen in popens:
            if popen.poll() is None:
                popen.kill()
        for popen in popens:
            popen.wait(timeout=60)


def wait(popens, timeout=TIMEOUT_S) -> list[int]:
    """The exit codes of a job's processes, all within one `timeout`."""
    deadline = time.monotonic() + timeout
    return [p.wait(timeout=max(1, deadline - time.monotonic())) for p in popens]


def log_text(tmp_path, name, index=0) -> str:
    """What process `index` of job `name` has printed so far."""
    return (tmp_path / f"{name}.{index}.log").read_text()


def run_job(tmp_path, name, flags, **kwargs) -> None:
    """Runs a job to the end; every process must exit 0."""
    with job(tmp_path, name, flags, **kwargs) as popens:
        codes = wait(popens)
    assert codes == [0] * len(popens), [
        log_text(tmp_path, name, i)[-3000:] for i in range(len(codes))
    ]


def latest_checkpoint(workdir) -> tuple[int, dict]:
    """The latest checkpoint's step and parameters (as numpy)."""
    step, state = checkpoint.read_latest_state(workdir)
    return step, state["params"]


def read_scores(workdir) -> list[dict]:
    """The lines of WORKDIR/eval_results.jsonl."""
    lines = (pathlib.Path(workdir) / "eval_results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_same_params(got, want, atol=1e-6):
    """Every parameter of `got` within `atol` of `want`'s."""
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol), got, want)
