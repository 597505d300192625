"""Several processes on localhost: the same results as one process, preemption, faults.

Each job is `main.py` in subprocesses that talk only to 127.0.0.1, with their own simulated
device count, a time limit, and a `finally` that kills whatever is still running.
"""

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fcn_jax import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
TIMEOUT_S = 600  # per job; a healthy job on a loaded 2-core machine takes a minute or two


def _flags(workdir, data_dir, **overrides) -> list[str]:
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
def _job(tmp_path, name, flags, *, processes=1, devices=1, env=None, code=None):
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


def _wait(popens, timeout=TIMEOUT_S) -> list[int]:
    deadline = time.monotonic() + timeout
    return [p.wait(timeout=max(1, deadline - time.monotonic())) for p in popens]


def _log(tmp_path, name, index=0) -> str:
    return (tmp_path / f"{name}.{index}.log").read_text()


def _run(tmp_path, name, flags, **kwargs) -> None:
    """Runs a job to the end; every process must exit 0."""
    with _job(tmp_path, name, flags, **kwargs) as popens:
        codes = _wait(popens)
    assert codes == [0] * len(popens), [_log(tmp_path, name, i)[-3000:] for i in range(len(codes))]


def _latest(workdir) -> tuple[int, dict]:
    """The latest checkpoint's step and parameters (as numpy)."""
    step, state = checkpoint.read_latest_state(workdir)
    return step, state["params"]


def _scores(workdir) -> list[dict]:
    lines = (pathlib.Path(workdir) / "eval_results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _assert_same_params(got, want, atol=1e-6):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol), got, want)


@pytest.fixture(scope="module")
def one_process_two_devices(synthetic_data_dir, tmp_path_factory):
    """The reference job: 1 process x 2 devices, STEPS steps, one evaluation at the end."""
    logs = tmp_path_factory.mktemp("logs")
    workdir = tmp_path_factory.mktemp("one_process")
    started = time.monotonic()
    _run(logs, "reference", _flags(workdir, synthetic_data_dir), devices=2)
    print(f"1 process x 2 devices: {time.monotonic() - started:.0f} s")
    return workdir, logs


def test_two_processes_train_like_one_process_with_two_devices(
    one_process_two_devices, synthetic_data_dir, tmp_path
):
    reference, _ = one_process_two_devices
    workdir = tmp_path / "two_processes"
    started = time.monotonic()
    _run(tmp_path, "job", _flags(workdir, synthetic_data_dir), processes=2)
    print(f"2 processes x 1 device: {time.monotonic() - started:.0f} s")
    step, params = _latest(workdir)
    want_step, want = _latest(reference)
    assert step == want_step == STEPS
    _assert_same_params(params, want)
    # One evaluation, written once (by process 0), with the same scores.
    (got_scores,), (want_scores,) = _scores(workdir), _scores(reference)
    assert got_scores["step"] == STEPS
    np.testing.assert_allclose(got_scores["per_class_iou"], want_scores["per_class_iou"], 1e-6)
    assert got_scores["mean_iou"] == pytest.approx(want_scores["mean_iou"], abs=1e-6)


def test_sigterm_to_one_process_saves_the_same_step_everywhere(synthetic_data_dir, tmp_path):
    workdir = tmp_path / "preempted"
    flags = _flags(workdir, synthetic_data_dir, num_train_steps=10_000)
    started = time.monotonic()
    with _job(tmp_path, "job", flags, processes=2) as popens:
        # Wait until both train (a log step has passed), then preempt process 1 only.
        deadline = time.monotonic() + TIMEOUT_S
        while not all("train/loss" in _log(tmp_path, "job", i) for i in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in popens)
            time.sleep(0.5)
        sent = time.monotonic()
        popens[1].send_signal(signal.SIGTERM)
        codes = _wait(popens)
        stopped = time.monotonic()
    assert codes == [128 + signal.SIGTERM] * 2
    logs = [_log(tmp_path, "job", i) for i in range(2)]
    saved = [int(log.split("SIGTERM: saved step ")[1].split(",")[0]) for log in logs]
    step, _ = _latest(workdir)
    assert saved[0] == saved[1] == step and 0 < step < 10_000
    print(
        f"preemption: training seen at {sent - started:.1f} s, SIGTERM to process 1, both "
        f"saved step {step} and exited 143 {stopped - sent:.1f} s later"
    )
    # The restart continues from the saved step to the end.
    _run(tmp_path, "restart", [*flags, f"--config.num_train_steps={step + 2}"], processes=2)
    assert f"resumed from step {step}" in _log(tmp_path, "restart")
    assert _latest(workdir)[0] == step + 2


def test_sigkill_during_a_save_resumes_to_the_same_parameters(
    one_process_two_devices, synthetic_data_dir, tmp_path
):
    reference, _ = one_process_two_devices
    workdir = tmp_path / "killed"
    flags = _flags(workdir, synthetic_data_dir, checkpoint_every_steps=1)
    checkpoints = workdir / "checkpoints"
    with _job(tmp_path, "job", flags, devices=2) as (popen,):
        deadline = time.monotonic() + TIMEOUT_S
        while not any(".orbax-checkpoint-tmp" in p.name for p in _entries(checkpoints)):
            assert time.monotonic() < deadline and popen.poll() is None, "no save seen"
            time.sleep(0.002)
        popen.kill()
        popen.wait(timeout=60)
    unfinished = [p.name for p in _entries(checkpoints) if "tmp" in p.name]
    assert unfinished, "the save finished before the kill"
    _run(tmp_path, "restart", flags, devices=2)
    step, params = _latest(workdir)
    assert step == STEPS
    _assert_same_params(params, _latest(reference)[1])


def _entries(folder: pathlib.Path) -> list[pathlib.Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def test_rerun_of_a_finished_workdir_prints_the_scores(
    one_process_two_devices, synthetic_data_dir, tmp_path
):
    reference, _ = one_process_two_devices
    # `~` in the path flags is expanded: HOME is the folder above the workdir.
    home = pathlib.Path(os.path.commonpath([reference, synthetic_data_dir]))
    flags = _flags(
        f"~/{reference.relative_to(home)}",
        f"~/{pathlib.Path(synthetic_data_dir).relative_to(home)}",
    )
    _run(tmp_path, "rerun", flags, devices=2, env={"HOME": str(home)})
    (scores,) = _scores(reference)  # nothing appended
    assert f"final validation mean IoU: {scores['mean_iou']:.4f}" in _log(tmp_path, "rerun")


_PREPARE = """
import sys
from absl import flags
import jax
from configs import quickstart
from fcn_jax import input_pipeline

flags.DEFINE_string("coordinator_address", None, "")
flags.DEFINE_integer("num_processes", None, "")
flags.DEFINE_integer("process_id", None, "")
flags.FLAGS(sys.argv)
jax.distributed.initialize(
    flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id
)
config = quickstart.get_config()
config.dataset.data_dir = sys.argv[1]
print("classes:", input_pipeline.num_classes(config), "examples:",
      input_pipeline.num_examples(config, "train"))
"""


def test_two_processes_prepare_a_missing_dataset_once(tmp_path):
    data_dir = tmp_path / "tfds"
    _run(tmp_path, "prepare", [str(data_dir)], processes=2, code=_PREPARE)
    logs = [_log(tmp_path, "prepare", i) for i in range(2)]
    assert all("classes: 5 examples: 800" in log for log in logs)
    marker = "Downloading and preparing dataset"  # printed by TFDS when it builds
    assert marker in logs[0] and marker not in logs[1]
