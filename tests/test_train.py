import json
import os
import pathlib
import signal
import threading
import time

import jax
import numpy as np
import pytest

from fcn_jax import (
    checkpoint,
    class_info,
    config_checks,
    evaluation,
    input_pipeline,
    losses,
    models,
    preprocessing,
    train,
)
from fcn_jax.datasets import synthetic_shapes
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("fewer_xla_optimizations")


def _params(workdir):
    step, state = checkpoint.read_latest_state(workdir)
    return step, state["params"]


@pytest.fixture(scope="module")
def trained_workdir(synthetic_data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    scores = train.train_and_evaluate(tiny_config(synthetic_data_dir), workdir)
    return workdir, scores


def _mean_iou_by_hand(config, workdir) -> float:
    """The step-4 model's validation mean IoU, from its checkpoint, with numpy (§5.2)."""
    step, state = checkpoint.read_latest_state(workdir)
    assert step == 4
    variables = {"params": state["params"], **state["frozen"]}
    model = models.get_model(config.model, 5, width=config.width)
    confusion = np.zeros((5, 5), np.int64)
    for batch in input_pipeline.create_eval_iterator(config):
        images = preprocessing.normalize(batch["image"], config.dataset.preprocessing)
        predictions = np.argmax(model.apply(variables, images, sizes=batch["size"]), -1)
        counted = batch["mask"][:, None, None] & (batch["label"] != losses.VOID)
        pairs = 5 * batch["label"][counted] + predictions[counted]
        confusion += np.bincount(pairs, minlength=25).reshape(5, 5)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    return float(np.mean(hits[union > 0] / union[union > 0]))


@pytest.mark.slow
def test_train_and_evaluate_end_to_end(trained_workdir, synthetic_data_dir):
    workdir, scores = trained_workdir
    config = tiny_config(synthetic_data_dir)
    lines = [
        json.loads(x) for x in pathlib.Path(workdir, "eval_results.jsonl").read_text().splitlines()
    ]
    assert [(x["step"], x["split"]) for x in lines] == [(4, "validation")]
    assert lines[0]["mean_iou"] == scores["mean_iou"]
    np.testing.assert_allclose(scores["mean_iou"], _mean_iou_by_hand(config, workdir), rtol=1e-6)
    assert len(lines[0]["per_class_iou"]) == 5
    assert list(lines[0]["class_iou"]) == list(synthetic_shapes.CLASS_NAMES)
    assert class_info.load(workdir).names == tuple(synthetic_shapes.CLASS_NAMES)
    plots = sorted(p.name for p in pathlib.Path(workdir, "plots").iterdir())
    assert plots == ["step_0000004_confusion.png", "step_0000004_iou.png"]
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


@pytest.mark.slow
def test_evaluate_model_from_workdir(trained_workdir, synthetic_data_dir):
    workdir, scores = trained_workdir
    again = evaluation.evaluate_model(tiny_config(synthetic_data_dir), workdir)
    # The best checkpoint is the step-4 model, evaluated on the same split.
    np.testing.assert_allclose(again["mean_iou"], scores["mean_iou"], rtol=1e-6)
    last = json.loads(pathlib.Path(workdir, "eval_results.jsonl").read_text().splitlines()[-1])
    assert last["step"] == -1


def test_bad_config_is_refused_before_compiling(synthetic_data_dir, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="config.model='fcn4s'"):
        train.train_and_evaluate(tiny_config(synthetic_data_dir, model="fcn4s"), str(workdir))
    # The reference configs stage from a coarser model: without its path, nothing starts.
    staged = tiny_config(synthetic_data_dir, **{"init.kind": "stage"})
    with pytest.raises(ValueError, match="--config.init.path"):
        train.train_and_evaluate(staged, str(workdir))
    staged.init.path = str(tmp_path / "no_such_run")
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*no_such_run"):
        train.train_and_evaluate(staged, str(workdir))
    assert not workdir.exists()  # refused before the workdir was created
    with pytest.raises(ValueError, match="grad_accum_steps"):
        config_checks.validate_config(tiny_config(synthetic_data_dir, grad_accum_steps=3))
    # Scaling up without cropping could overflow the canvas mid-training.
    overflow = tiny_config(synthetic_data_dir, **{"dataset.max_scale": 2.0})
    with pytest.raises(ValueError, match=r"max_scale=2.0 .*random_crop=True"):
        config_checks.validate_config(overflow)
    overflow.dataset.random_crop = True
    config_checks.validate_config(overflow)


@pytest.mark.slow
def test_resume_refuses_a_changed_data_stream(trained_workdir, synthetic_data_dir):
    workdir, _ = trained_workdir
    changed = tiny_config(synthetic_data_dir, batch_size=8, num_train_steps=6)
    with pytest.raises(ValueError, match=r"config.batch_size=4; this run has 8"):
        train.train_and_evaluate(changed, workdir)


@pytest.mark.slow
def test_rerun_of_a_finished_workdir_returns_its_final_scores(trained_workdir, synthetic_data_dir):
    workdir, scores = trained_workdir
    lines_before = pathlib.Path(workdir, "eval_results.jsonl").read_text()
    again = train.train_and_evaluate(tiny_config(synthetic_data_dir), workdir)
    assert again["mean_iou"] == scores["mean_iou"] and again["step"] == 4
    assert pathlib.Path(workdir, "eval_results.jsonl").read_text() == lines_before


@pytest.mark.slow
def test_train_steps_make_no_host_transfer(synthetic_data_dir, tmp_path):
    config = tiny_config(synthetic_data_dir)
    trainer = train.Trainer(config, str(tmp_path))
    batches = train.prefetch_to_device(input_pipeline.create_train_iterator(config), trainer.mesh)
    trainer.advance(next(batches))  # compiles
    # Between log steps the loop only dispatches: any device-to-host (or implicit
    # host-to-device) transfer would raise here.
    with jax.transfer_guard("disallow"):
        for _ in range(3):
            trainer.advance(next(batches))
    assert int(trainer.state.step) == 4 and bool(trainer.health["finite"])


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


@pytest.mark.slow
def test_simple_geometry_trains_from_vgg16(synthetic_data_dir, tmp_path):
    # Issue #14: the course-notes geometry end to end, its convs from a (tiny) VGG16 file.
    vgg16 = pathlib.Path(__file__).parent / "testdata" / "parity" / "vgg16_tv.pth"
    config = tiny_config(synthetic_data_dir, model_geometry="simple", width=1 / 64)
    config.init.kind, config.init.path = "vgg16", str(vgg16)
    scores = train.train_and_evaluate(config, str(tmp_path))
    assert 0 <= scores["mean_iou"] <= 1
    step, params = _params(tmp_path)
    assert step == 4 and params["fc6"]["kernel"].shape == (1, 1, 8, 64)
