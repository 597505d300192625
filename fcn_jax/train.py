"""Training: the loop around the steps of `fcn_jax.steps`.

It builds the model and the state from the config, feeds the tf.data pipeline to the jitted
train step, evaluates (`fcn_jax.evaluation`), checkpoints and writes summaries.

Entry point: `train_and_evaluate(config, workdir)`.
"""

import contextlib
import signal
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath

from fcn_jax import (
    checkpoint,
    config_checks,
    evaluation,
    input_pipeline,
    models,
    optim,
    steps,
    visualize,
    weights,
)

# ---------------------------------------------------------------------------- state


def initial_variables(config: ml_collections.ConfigDict, model: models.FCN, rng: jax.Array) -> dict:
    """The variables training starts from, as `config.init` says (§3)."""
    init = config.init
    options = dict(learnable_upsampling=config.learnable_upsampling)
    if init.kind == "random":
        return models.init_variables(model, rng)
    path = init.path
    if init.kind == "vgg16":
        path = path or weights.fetch_weights(init.weights)
        return weights.load_vgg16(
            path, config.model, model.num_classes, width=config.width, **options
        )
    if init.kind == "pytorch_fcn":
        path = path or weights.fetch_weights(init.weights)
        return weights.load_pytorch_fcn(path, config.model, width=config.width, **options)
    # "stage": a trained coarser FCN, from one of our workdirs or a pytorch-fcn file (§3.1).
    if path is None:
        raise ValueError("config.init.kind='stage' needs config.init.path (a workdir or .pth)")
    source = evaluation.load_variables(path, init.source_model, config, model.num_classes)
    return weights.stage_variables(source, models.init_variables(model, rng))


# ---------------------------------------------------------------------------- the loop


class SigtermFlag:
    """Set when SIGTERM arrives; the train loop checks it between steps."""

    received = False


@contextlib.contextmanager
def sigterm_flag() -> Iterator[SigtermFlag]:
    """Catches SIGTERM (a preempted VM) for the duration; restores the old handler after.

    The handler only sets a flag: saving from inside a signal handler could catch the train
    state between a donated step input and its output.
    """
    flag = SigtermFlag()

    def handler(signum, frame):
        del signum, frame
        flag.received = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Trainer:
    """The pieces of one training run, built once; `run` is the loop."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        config_checks.validate_config(config)
        self.config, self.workdir = config, workdir
        self.mesh = steps.make_mesh()
        self.class_names = input_pipeline.class_names(config)
        self.model = steps.create_model(config, len(self.class_names))
        self.writer = metric_writers.create_default_writer(
            workdir, just_logging=jax.process_index() > 0
        )
        self.checkpoints = checkpoint.Checkpoints(workdir, config.max_checkpoints_to_keep)
        self.state, self.tx = self._initial_state()
        self.train_step = steps.jit_train_step(config, self.model, self.tx, self.mesh)
        self.eval_step = steps.jit_eval_step(self.model, self.mesh)
        self.lr = optim.learning_rate_schedule(config)

    def _initial_state(self) -> tuple[steps.TrainState, optax.GradientTransformation]:
        # A raw uint32 key (not a typed key array) so orbax can save it with the state.
        rng, init_rng = jax.random.split(jax.random.PRNGKey(self.config.seed))
        if self.checkpoints.latest_step() is not None:
            # Shapes only: the checkpoint holds the values.
            abstract = jax.eval_shape(
                lambda: steps.create_train_state(
                    self.config, models.init_variables(self.model, init_rng), rng
                )[0]
            )
            state = self.checkpoints.restore_latest(abstract, steps.replicated(self.mesh))
            logging.info("resumed from step %d", int(state.step))
            return state, optim.create_optimizer(self.config, state.params)
        variables = initial_variables(self.config, self.model, init_rng)
        parameter_overview.log_parameter_overview(variables["params"])
        state, tx = steps.create_train_state(self.config, variables, rng)
        return jax.device_put(state, steps.replicated(self.mesh)), tx

    def evaluate(self, step: int) -> dict:
        config = self.config
        data = input_pipeline.eval_data(config)
        scores, kept = evaluation.evaluate(
            self.state.variables(),
            self.eval_step,
            input_pipeline.create_eval_iterator(config, data.split),
            self.mesh,
            num_batches=data.num_batches,
            keep_predictions=config.num_predictions_to_save,
        )
        evaluation.log_scores(step, data.split, scores, self.class_names, self.workdir)
        self.writer.write_scalars(
            step, {f"eval/{k}": v for k, v in scores.items() if k != "per_class_iou"}
        )
        if kept and jax.process_index() == 0:
            panels = visualize.prediction_panels(kept, config.dataset.preprocessing)
            self.writer.write_images(step, {"eval/predictions": np.stack(panels)})
            visualize.save_panels(panels, epath.Path(self.workdir) / "predictions", step)
        return scores

    def run(self) -> dict:
        """Trains to `config.num_train_steps`; returns the last evaluation's scores."""
        config = self.config
        start = int(self.state.step)
        batches = input_pipeline.create_train_iterator(config, start_step=start)
        report = periodic_actions.ReportProgress(
            num_train_steps=config.num_train_steps, writer=self.writer
        )
        scores, self._window_start = {}, time.perf_counter()
        try:
            with sigterm_flag() as sigterm:
                for step in range(start + 1, config.num_train_steps + 1):
                    if sigterm.received:
                        self._save()
                        logging.warning("SIGTERM: saved step %d, exiting", step - 1)
                        raise SystemExit(128 + signal.SIGTERM)
                    loss = self._step(step, next(batches))
                    report(step)
                    scores = self._periodic(step, loss) or scores
        finally:
            # Pending asynchronous saves of good states finish even when a NaN stops the run.
            self.checkpoints.wait()
        return scores

    def _step(self, step: int, local_batch: dict) -> float:
        self.state, out = self.train_step(self.state, steps.global_batch(self.mesh, local_batch))
        loss = float(out["loss"])
        if not np.isfinite(loss):
            # Raised before this state is saved: the last good checkpoint stays the latest.
            raise FloatingPointError(f"loss is {loss} at step {step}; stopping")
        return loss

    def _periodic(self, step: int, loss: float) -> dict | None:
        """Logging, evaluation and checkpointing when their intervals come round."""
        config, last = self.config, step == self.config.num_train_steps
        scores = None
        if step % config.log_every_steps == 0 or last:
            now = time.perf_counter()
            self._log_train(step, loss, now - self._window_start)
            self._window_start = now
        if step % config.eval_every_steps == 0 or last:
            scores = self.evaluate(step)
            self.checkpoints.save_best(step, self.state.variables(), scores["mean_iou"])
        if step % config.checkpoint_every_steps == 0 or last:
            self._save()
        return scores

    def _save(self) -> None:
        self.checkpoints.save(int(self.state.step), self.state)

    def _log_train(self, step: int, loss: float, elapsed: float) -> None:
        steps = self.config.log_every_steps
        images_per_s = steps * self.config.batch_size / max(elapsed, 1e-9)
        self.writer.write_scalars(
            step,
            {"train/loss": loss, "train/learning_rate": float(self.lr(step)),
             "train/images_per_second": images_per_s},
        )  # fmt: skip


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from WORKDIR's latest checkpoint if any), evaluating periodically.

    Returns:
      The scores of the last evaluation (see `fcn_jax.metrics.scores`).
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    return _Trainer(config, workdir).run()
