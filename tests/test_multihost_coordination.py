"""Processes of one job agree: on the step a SIGTERM saves, on who prepares the dataset.

The jobs (tests/jobs.py) are `main.py` (or a short script) in subprocesses on 127.0.0.1.
"""

import signal
import time

import pytest

from tests.jobs import TIMEOUT_S, job, job_flags, latest_checkpoint, log_text, run_job, wait

pytestmark = pytest.mark.slow  # several processes (docs/development.md: the fast tier)


def test_sigterm_to_one_process_saves_the_same_step_everywhere(synthetic_data_dir, tmp_path):
    workdir = tmp_path / "preempted"
    flags = job_flags(workdir, synthetic_data_dir, num_train_steps=10_000)
    started = time.monotonic()
    with job(tmp_path, "job", flags, processes=2) as popens:
        # Wait until both train (a log step has passed), then preempt process 1 only.
        deadline = time.monotonic() + TIMEOUT_S
        while not all("train/loss" in log_text(tmp_path, "job", i) for i in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in popens)
            time.sleep(0.5)
        sent = time.monotonic()
        popens[1].send_signal(signal.SIGTERM)
        codes = wait(popens)
        stopped = time.monotonic()
    assert codes == [128 + signal.SIGTERM] * 2
    logs = [log_text(tmp_path, "job", i) for i in range(2)]
    saved = [int(log.split("SIGTERM: saved step ")[1].split(",")[0]) for log in logs]
    step, _ = latest_checkpoint(workdir)
    assert saved[0] == saved[1] == step and 0 < step < 10_000
    print(
        f"preemption: training seen at {sent - started:.1f} s, SIGTERM to process 1, both "
        f"saved step {step} and exited 143 {stopped - sent:.1f} s later"
    )
    # The restart continues from the saved step to the end.
    run_job(tmp_path, "restart", [*flags, f"--config.num_train_steps={step + 2}"], processes=2)
    assert f"resumed from step {step}" in log_text(tmp_path, "restart")
    assert latest_checkpoint(workdir)[0] == step + 2


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
print("classes:", input_pipeline.dataset_classes(config).num_classes, "examples:",
      input_pipeline.num_examples(config, "train"))
"""


def test_two_processes_prepare_a_missing_dataset_once(tmp_path):
    data_dir = tmp_path / "tfds"
    run_job(tmp_path, "prepare", [str(data_dir)], processes=2, code=_PREPARE)
    logs = [log_text(tmp_path, "prepare", i) for i in range(2)]
    assert all("classes: 5 examples: 800" in log for log in logs)
    marker = "Downloading and preparing dataset"  # printed by TFDS when it builds
    assert marker in logs[0] and marker not in logs[1]
