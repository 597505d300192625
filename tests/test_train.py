import json
import os
import pathlib
import signal
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fcn_jax import train
from tests.helpers import tiny_config


def _params(workdir):
    manager = ocp.CheckpointManager(f"{workdir}/checkpoints")
    state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
    return manager.latest_step(), state["params"]


@pytest.fixture(scope="module")
def trained_workdir(synthetic_data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    scores = train.train_and_evaluate(tiny_config(synthetic_data_dir), workdir)
    return workdir, scores


def test_train_and_evaluate_end_to_end(trained_workdir):
    workdir, scores = trained_workdir
    lines = [
        json.loads(x) for x in pathlib.Path(workdir, "eval_results.jsonl").read_text().splitlines()
    ]
    assert [(x["step"], x["split"]) for x in lines] == [(4, "validation")]
    assert lines[0]["mean_iou"] == scores["mean_iou"] and 0 <= scores["mean_iou"] <= 1
    assert len(lines[0]["per_class_iou"]) == 5
    step, params = _params(workdir)
    assert step == 4 and set(params) >= {"conv1_1", "fc7", "score_pool3"}
    pngs = sorted(p.name for p in pathlib.Path(workdir, "predictions").iterdir())
    assert pngs == ["step_0000004_0.png", "step_0000004_1.png"]


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(
    trained_workdir, synthetic_data_dir, tmp_path
):
    uninterrupted, _ = trained_workdir
    # Stop after 2 steps (a checkpoint is written there), then restart to 4.
    train.train_and_evaluate(tiny_config(synthetic_data_dir, num_train_steps=2), str(tmp_path))
    train.train_and_evaluate(tiny_config(synthetic_data_dir), str(tmp_path))
    _, want = _params(uninterrupted)
    step, got = _params(tmp_path)
    assert step == 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_nan_loss_stops_with_the_step_and_keeps_good_checkpoints(synthetic_data_dir, tmp_path):
    config = tiny_config(
        synthetic_data_dir,
        checkpoint_every_steps=1,
        num_train_steps=6,
        loss_reduction="sum",
        **{"optimizer.name": "sgd", "optimizer.learning_rate": 1e12, "optimizer.momentum": 0.9},
    )
    with pytest.raises(FloatingPointError, match=r"at step (\d+)") as error:
        train.train_and_evaluate(config, str(tmp_path))
    bad_step = int(error.value.args[0].split("at step ")[1].split(";")[0])
    step, params = _params(tmp_path)
    assert step == bad_step - 1
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_evaluate_model_from_workdir(trained_workdir, synthetic_data_dir):
    workdir, scores = trained_workdir
    again = train.evaluate_model(tiny_config(synthetic_data_dir), workdir)
    # The best checkpoint is the step-4 model, evaluated on the same split.
    np.testing.assert_allclose(again["mean_iou"], scores["mean_iou"], rtol=1e-6)
    last = json.loads(pathlib.Path(workdir, "eval_results.jsonl").read_text().splitlines()[-1])
    assert last["step"] == -1


def test_bad_config_is_refused_before_compiling(synthetic_data_dir, tmp_path):
    with pytest.raises(ValueError, match="config.model='fcn4s'"):
        train.train_and_evaluate(tiny_config(synthetic_data_dir, model="fcn4s"), str(tmp_path))
    with pytest.raises(ValueError, match="grad_accum_steps"):
        train.validate_config(tiny_config(synthetic_data_dir, grad_accum_steps=3))


def test_sigterm_saves_a_checkpoint_and_exits(synthetic_data_dir, tmp_path):
    config = tiny_config(synthetic_data_dir, num_train_steps=1000, checkpoint_every_steps=1000)

    default = signal.getsignal(signal.SIGTERM)

    def send_sigterm_once_training():
        while signal.getsignal(signal.SIGTERM) is default:  # the train loop's handler is in
            time.sleep(0.05)
        time.sleep(2.0)  # let a few steps run
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_sigterm_once_training, daemon=True).start()
    with pytest.raises(SystemExit) as exit_info:
        train.train_and_evaluate(config, str(tmp_path))
    assert exit_info.value.code == 128 + signal.SIGTERM
    step, _ = _params(tmp_path)
    assert 1 <= step < 1000  # saved where it stopped, not at a scheduled interval


def test_simple_geometry_trains_from_vgg16(synthetic_data_dir, tmp_path):
    # Issue #14: the course-notes geometry end to end, its convs from a (tiny) VGG16 file.
    vgg16 = pathlib.Path(__file__).parent / "testdata" / "parity" / "vgg16_tv.pth"
    config = tiny_config(synthetic_data_dir, model_geometry="simple", width=1 / 64)
    config.init.kind, config.init.path = "vgg16", str(vgg16)
    scores = train.train_and_evaluate(config, str(tmp_path))
    assert 0 <= scores["mean_iou"] <= 1
    step, params = _params(tmp_path)
    assert step == 4 and params["fc6"]["kernel"].shape == (1, 1, 8, 64)
