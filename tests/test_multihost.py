"""Several processes on localhost: the same results as one process, a kill mid-save, a rerun.

The jobs (tests/jobs.py) are `main.py` in subprocesses that talk only to 127.0.0.1.
"""

import os
import pathlib
import time

import numpy as np
import pytest

from tests.jobs import (
    STEPS,
    TIMEOUT_S,
    assert_same_params,
    job,
    job_flags,
    latest_checkpoint,
    log_text,
    read_scores,
    run_job,
)

pytestmark = pytest.mark.slow  # several processes (docs/development.md: the fast tier)


@pytest.fixture(scope="module")
def one_process_two_devices(synthetic_data_dir, tmp_path_factory):
    """The reference job: 1 process x 2 devices, STEPS steps, one evaluation at the end."""
    logs = tmp_path_factory.mktemp("logs")
    workdir = tmp_path_factory.mktemp("one_process")
    started = time.monotonic()
    run_job(logs, "reference", job_flags(workdir, synthetic_data_dir), devices=2)
    print(f"1 process x 2 devices: {time.monotonic() - started:.0f} s")
    return workdir, logs


def test_two_processes_train_like_one_process_with_two_devices(
    one_process_two_devices, synthetic_data_dir, tmp_path
):
    reference, _ = one_process_two_devices
    workdir = tmp_path / "two_processes"
    started = time.monotonic()
    run_job(tmp_path, "job", job_flags(workdir, synthetic_data_dir), processes=2)
    print(f"2 processes x 1 device: {time.monotonic() - started:.0f} s")
    step, params = latest_checkpoint(workdir)
    want_step, want = latest_checkpoint(reference)
    assert step == want_step == STEPS
    assert_same_params(params, want)
    # One evaluation, written once (by process 0), with the same scores.
    (got_scores,), (want_scores,) = read_scores(workdir), read_scores(reference)
    assert got_scores["step"] == STEPS
    np.testing.assert_allclose(got_scores["per_class_iou"], want_scores["per_class_iou"], 1e-6)
    assert got_scores["mean_iou"] == pytest.approx(want_scores["mean_iou"], abs=1e-6)


def test_sigkill_during_a_save_resumes_to_the_same_parameters(
    one_process_two_devices, synthetic_data_dir, tmp_path
):
    reference, _ = one_process_two_devices
    workdir = tmp_path / "killed"
    flags = job_flags(workdir, synthetic_data_dir, checkpoint_every_steps=1)
    checkpoints = workdir / "checkpoints"
    with job(tmp_path, "job", flags, devices=2) as (popen,):
        deadline = time.monotonic() + TIMEOUT_S
        while not any(".orbax-checkpoint-tmp" in p.name for p in _entries(checkpoints)):
            assert time.monotonic() < deadline and popen.poll() is None, "no save seen"
            time.sleep(0.002)
        popen.kill()
        popen.wait(timeout=60)
    unfinished = [p.name for p in _entries(checkpoints) if "tmp" in p.name]
    assert unfinished, "the save finished before the kill"
    run_job(tmp_path, "restart", flags, devices=2)
    step, params = latest_checkpoint(workdir)
    assert step == STEPS
    assert_same_params(params, latest_checkpoint(reference)[1])


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
    flags = job_flags(
        f"~/{reference.relative_to(home)}",
        f"~/{pathlib.Path(synthetic_data_dir).relative_to(home)}",
    )
    run_job(tmp_path, "rerun", flags, devices=2, env={"HOME": str(home)})
    (scores,) = read_scores(reference)  # nothing appended
    assert f"final validation mean IoU: {scores['mean_iou']:.4f}" in log_text(tmp_path, "rerun")
