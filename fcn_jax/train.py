"""Training: the loop around the steps of `fcn_jax.steps`.

It builds the model and the state from the config, feeds the tf.data pipeline to the jitted
train step, evaluates (`fcn_jax.evaluation`), checkpoints and writes summaries.

Entry point: `train_and_evaluate(config, workdir)`.
"""

import collections
import contextlib
import itertools
import signal
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath
from jax.experimental import multihost_utils

from fcn_jax import (
    checkpoint,
    class_info,
    config_checks,
    evaluation,
    input_pipeline,
    models,
    optim,
    restore,
    steps,
    weights,
)
from fcn_jax.datasets import segmentation_folder
from fcn_jax.weight_files import fetch_weights

# ---------------------------------------------------------------------------- state


def initial_variables(
    config: ml_collections.ConfigDict, model: models.FCNModel, rng: jax.Array
) -> dict:
    """The variables training starts from, as `config.init` says (§3)."""
    init = config.init
    options = dict(learnable_upsampling=config.learnable_upsampling, geometry=config.model_geometry)
    if init.kind == "random":
        return models.init_variables(model, rng)
    path = init.path
    if init.kind == "vgg16":
        path = path or fetch_weights(init.weights)
        return weights.load_vgg16(
            path, config.model, model.num_classes, width=config.width, **options
        )
    if init.kind == "pytorch_fcn":
        path = path or fetch_weights(init.weights)
        return weights.load_pytorch_fcn(path, config.model, width=config.width, **options)
    # "stage": a trained coarser FCN, from one of our workdirs or a pytorch-fcn file (§3.1).
    source = restore.load_variables(path, config, init.source_model)
    return weights.stage_variables(source, models.init_variables(model, rng))


def check_start(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Checks the config and where training starts from, before anything is created.

    A workdir with a train state resumes from it; otherwise `config.init` must name a source
    that exists.

    Raises:
      ValueError: a bad config field, or 'stage' without `config.init.path`.
      FileNotFoundError: `config.init.path` does not exist or holds no checkpoint.
    """
    config_checks.validate_config(config)
    init = config.init
    if checkpoint.has_train_state(workdir) or init.kind == "random":
        return
    if init.kind == "stage" and init.path is None:
        raise ValueError(
            "config.init.kind='stage' starts from a trained coarser FCN: set "
            "--config.init.path to its workdir or pytorch-fcn file (and "
            "--config.init.source_model to its model), or choose another config.init.kind "
            f"of {config_checks.INIT_KINDS}"
        )
    if init.path is not None:
        restore.check_source(init.path)


# ---------------------------------------------------------------------------- preemption


class SigtermFlag:
    """Set when this process receives SIGTERM; `agreed` tells whether any process has."""

    received = False

    def agreed(self) -> bool:
        """Whether any process has received SIGTERM.

        A collective: every process calls it at the same steps, all get the same answer.
        """
        if jax.process_count() == 1:
            return self.received
        flags = multihost_utils.process_allgather(np.int32(self.received))
        return bool(np.any(flags))


@contextlib.contextmanager
def sigterm_flag() -> Iterator[SigtermFlag]:
    """Catches SIGTERM (a preempted VM) for the duration; restores the old handler after.

    The handler only sets a flag: saving from inside a signal handler could catch the train
    state between a donated step input and its output, and in a multi-process job the other
    processes must save the same step (`SigtermFlag.agreed`).
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


# ---------------------------------------------------------------------------- the loop


def prefetch_to_device(
    batches: Iterator[dict], mesh: jax.sharding.Mesh, size: int = 2
) -> Iterator[dict]:
    """Global batches put on the devices `size` steps ahead of the step that uses them.

    `jax.make_array_from_process_local_data` only starts the copies, so the next batches
    travel while the current step runs. These copies are the loop's only transfers: they are
    allowed even where a `jax.transfer_guard` forbids the rest.
    """
    queue = collections.deque()

    def enqueue(n: int) -> None:
        for local in itertools.islice(batches, n):
            with jax.transfer_guard_host_to_device("allow"):
                queue.append(steps.global_batch(mesh, local))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


@jax.jit
def _update_health(health: dict, loss: jax.Array, step: jax.Array) -> dict:
    """On the device: whether every loss since the start was finite, and the first bad step."""
    finite = jnp.isfinite(loss)
    return {
        "finite": health["finite"] & finite,
        "first_bad_step": jnp.where(health["finite"] & ~finite, step, health["first_bad_step"]),
        "loss": loss,
    }


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def data_stream(config: ml_collections.ConfigDict) -> dict:
    """What decides which examples step k trains on; a resumed run must not change it.

    The process count is recorded but may change: every process reads the same global
    stream and keeps its own slice of each batch (`fcn_jax.input_pipeline`).
    """
    data = config.dataset
    stream = {
        "batch_size": config.batch_size,
        "seed": config.seed,
        "dataset.name": data.name,
        "dataset.train_split": data.train_split,
        "dataset.shuffle_buffer": data.shuffle_buffer,
        "dataset.canvas_size": list(data.canvas_size),
        "process_count": jax.process_count(),
    }
    if data.name == segmentation_folder.NAME:
        # Which folder, and which of its images are held out for validation.
        stream["dataset.manual_dir"] = data.manual_dir
        stream["dataset.val_fraction"] = data.val_fraction
    return stream


def check_data_stream(recorded: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ValueError naming the first field of the data stream a resumed run changes."""
    current = data_stream(config)
    for field, value in recorded.items():
        if field != "process_count" and current.get(field) != value:
            raise ValueError(
                f"{workdir} was trained with config.{field}={value!r}; this run has "
                f"{current.get(field)!r}. Resuming would change the examples each step sees: "
                "restore the value or train in a new workdir."
            )


class Trainer:
    """The pieces of one training run, built once; `run` is the loop.

    A context manager: leaving it waits for pending saves and closes the checkpoint managers
    and the summary writer.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        check_start(config, workdir)  # before the workdir is created
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        self.config, self.workdir = config, workdir
        self.mesh = steps.make_mesh()
        self.classes = class_info.record(workdir, input_pipeline.dataset_classes(config))
        self.model = steps.create_model(config, self.classes.num_classes)
        self.writer = metric_writers.create_default_writer(
            workdir, just_logging=jax.process_index() > 0
        )
        self.checkpoints = checkpoint.Checkpoints(workdir, config.max_checkpoints_to_keep)
        try:
            self.state, self.tx = self._initial_state()
        except BaseException:
            self.close()
            raise
        self.train_fn = steps.jit_train_step(config, self.model, self.tx, self.mesh)
        self.eval_fn = steps.jit_eval_step(self.model, self.mesh, config.dataset.preprocessing)
        self.lr = optim.learning_rate_schedule(config)
        self.health = jax.device_put(
            {"finite": np.bool_(True), "first_bad_step": np.int32(-1), "loss": np.float32(0)},
            steps.replicated(self.mesh),
        )

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Waits for pending saves; closes the checkpoint managers and the writer."""
        self.checkpoints.close()
        self.writer.close()

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
            state, stream = self.checkpoints.restore_latest(abstract, steps.replicated(self.mesh))
            check_data_stream(stream, self.config, self.workdir)
            logging.info("resumed from step %d", int(state.step))
            return state, optim.create_optimizer(self.config, state.params)
        variables = initial_variables(self.config, self.model, init_rng)
        parameter_overview.log_parameter_overview(variables["params"])
        state, tx = steps.create_train_state(self.config, variables, rng)
        return jax.device_put(state, steps.replicated(self.mesh)), tx

    def evaluate(self, step: int) -> dict:
        """Evaluates the current parameters; logs, writes and returns the scores."""
        config = self.config
        data = input_pipeline.eval_data(config)
        confusion, examples = evaluation.evaluate(
            self.state.variables(),
            self.eval_fn,
            input_pipeline.create_eval_iterator(config, data.split),
            self.mesh,
            num_batches=data.num_batches,
            keep_predictions=config.num_predictions_to_save,
        )
        return evaluation.report(
            step,
            data.split,
            confusion,
            self.classes,
            self.workdir,
            examples=examples,
            writer=self.writer,
        )

    def run(self) -> dict:
        """Trains to `config.num_train_steps`; returns the last evaluation's scores.

        Between sync steps (log, eval and checkpoint steps, and the last) the loop never waits
        for the device: nothing moves from a device to the host (`jax.transfer_guard`), the
        batches are sent ahead. At a sync step the loop checks that every loss since the
        start was finite, agrees with the other processes on preemption, logs, evaluates and
        saves.
        """
        config = self.config
        step = int(self.state.step)
        if step >= config.num_train_steps:
            return self._finished_scores(step)
        batches = prefetch_to_device(
            input_pipeline.create_train_iterator(config, start_step=step), self.mesh
        )
        report = periodic_actions.ReportProgress(
            num_train_steps=config.num_train_steps, writer=self.writer
        )
        scores, self._window = {}, (step, time.perf_counter())
        try:
            with sigterm_flag() as sigterm:
                while step < config.num_train_steps:
                    stop = self._next_sync_step(step)
                    with jax.transfer_guard("disallow"):
                        for k in range(step + 1, stop + 1):
                            self.advance(next(batches))
                            report(k)
                    step = stop
                    scores = self._sync(step, sigterm) or scores
        finally:
            # Pending asynchronous saves of good states finish even when a NaN stops the run.
            self.checkpoints.wait()
        return scores

    def _next_sync_step(self, step: int) -> int:
        config = self.config
        intervals = (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps)
        return min(config.num_train_steps, *(step - step % n + n for n in intervals))

    def advance(self, batch: dict) -> None:
        """One train step on a global batch; nothing is copied to the host."""
        self.state, out = self.train_fn(self.state, batch)
        self.health = _update_health(self.health, out["loss"], self.state.step)

    def _sync(self, step: int, sigterm: SigtermFlag) -> dict | None:
        """Health check, logging, evaluation, checkpointing and preemption at a sync step."""
        config, last = self.config, step == self.config.num_train_steps
        health = jax.device_get(self.health)
        if not health["finite"]:
            # Raised before this state is saved: the last good checkpoint stays the latest.
            raise FloatingPointError(
                f"loss is not finite at step {health['first_bad_step']}; stopping at step "
                f"{step}, the last checkpoint is the last good state"
            )
        scores = None
        if step % config.log_every_steps == 0 or last:
            self._log_train(step, float(health["loss"]))
        if step % config.eval_every_steps == 0 or last:
            scores = self.evaluate(step)
            self.checkpoints.save_best(step, self.state.variables(), scores["mean_iou"])
        if step % config.checkpoint_every_steps == 0 or last:
            self._save()
        if sigterm.agreed():
            self._save()
            self.checkpoints.wait()
            logging.warning("SIGTERM: saved step %d, exiting", step)
            raise SystemExit(128 + signal.SIGTERM)
        return scores

    def _save(self) -> None:
        if not bool(_all_finite(self.state.params)):
            raise FloatingPointError(
                f"parameters not finite at step {int(self.state.step)}; not saved, stopping"
            )
        self.checkpoints.save(int(self.state.step), self.state, data_stream(self.config))

    def _log_train(self, step: int, loss: float) -> None:
        start_step, start_time = self._window
        now = time.perf_counter()
        self._window = (step, now)
        images_per_s = (step - start_step) * self.config.batch_size / max(now - start_time, 1e-9)
        self.writer.write_scalars(
            step,
            {"train/loss": loss, "train/learning_rate": float(self.lr(step)),
             "train/images_per_second": images_per_s},
        )  # fmt: skip

    def _finished_scores(self, step: int) -> dict:
        """The final scores of a finished workdir: its last evaluation at `step`, or a new one."""
        split = input_pipeline.eval_data(self.config).split
        for record in reversed(evaluation.read_scores(self.workdir)):
            if record["step"] == step and record["split"] == split:
                logging.info("%s is already trained to step %d", self.workdir, step)
                return record
        return self.evaluate(step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from WORKDIR's latest checkpoint if any), evaluating periodically.

    A workdir already trained to `config.num_train_steps` is not trained further: its final
    scores are returned.

    Returns:
      The scores of the last evaluation (see `fcn_jax.metrics.scores`).
    """
    with Trainer(config, workdir) as trainer:
        return trainer.run()
