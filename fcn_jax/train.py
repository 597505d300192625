"""Training and evaluation: the loop around the steps of `fcn_jax.steps`.

It builds the model and the state from the config, feeds the tf.data pipeline to the jitted
train step, evaluates, checkpoints and writes summaries.

Entry points: `train_and_evaluate(config, workdir)`, `evaluate_model(...)`, `predict(...)`.
"""

import json
import signal
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath
from jax.sharding import Mesh

from fcn_jax import checkpoint, input_pipeline, losses, models, optim, steps, visualize, weights

# ---------------------------------------------------------------------------- configuration


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every config field before anything compiles; ValueError names the field."""
    if config.model not in models.MODELS:
        raise ValueError(f"config.model={config.model!r}: use one of {sorted(models.MODELS)}")
    models.get_model(config.model, 1, config.model_geometry)  # ValueError names the problem
    if config.compute_dtype not in steps.DTYPES:
        raise ValueError(
            f"config.compute_dtype={config.compute_dtype!r}: use one of {list(steps.DTYPES)}"
        )
    if config.init.kind not in ("random", "vgg16", "pytorch_fcn", "stage"):
        raise ValueError(f"config.init.kind={config.init.kind!r} is unknown")
    if config.loss_reduction not in losses.REDUCTIONS:
        raise ValueError(
            f"config.loss_reduction={config.loss_reduction!r}: use {losses.REDUCTIONS}"
        )
    local_batch = config.batch_size // jax.process_count()
    if config.grad_accum_steps < 1 or local_batch % config.grad_accum_steps:
        raise ValueError(
            f"config.grad_accum_steps={config.grad_accum_steps} must divide the per-process "
            f"batch ({local_batch})"
        )
    for field in (
        "num_train_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
    ):
        if config[field] < 1:
            raise ValueError(f"config.{field}={config[field]} must be >= 1")
    optim.validate_config(config)
    input_pipeline.validate_config(config)


# ---------------------------------------------------------------------------- state


def initial_variables(config: ml_collections.ConfigDict, model: models.FCN, rng: jax.Array) -> dict:
    """The variables training starts from, as `config.init` says (§3)."""
    init = config.init
    options = dict(learnable_upsampling=config.learnable_upsampling, geometry=config.model_geometry)
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
    source = load_variables(path, init.source_model, config, model.num_classes)
    return weights.stage_variables(source, models.init_variables(model, rng))


def load_variables(
    path: str, model_name: str, config: ml_collections.ConfigDict, num_classes: int
) -> dict:
    """Variables of a trained model from a workdir of ours (best checkpoint) or a .pth file."""
    if str(path).endswith((".pth", ".pt", ".tar")):
        return weights.load_pytorch_fcn(
            path,
            model_name,
            width=config.width,
            learnable_upsampling=config.learnable_upsampling,
            geometry=config.model_geometry,
        )
    return checkpoint.restore_variables(path)


# ---------------------------------------------------------------------------- evaluation


def evaluate(
    variables: dict,
    eval_step_fn: Callable,
    batches: Iterator[dict],
    mesh: Mesh,
    *,
    num_batches: int,
    keep_predictions: int = 0,
) -> tuple[dict, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Runs one pass; the confusion matrix is summed on the device and pulled once.

    Returns:
      (scores of `fcn_jax.metrics.scores`, up to `keep_predictions` (image, label,
      prediction) triples of this process for visualisation).
    """
    total, kept = None, []
    report_every = max(1, num_batches // 10)
    for index, local in enumerate(batches, start=1):
        metric, predictions = eval_step_fn(variables, steps.global_batch(mesh, local))
        total = metric if total is None else total.merge(metric)
        if len(kept) < keep_predictions:
            local_predictions = _local_rows(predictions)
            for i in np.flatnonzero(local["mask"])[: keep_predictions - len(kept)]:
                kept.append((local["image"][i], local["label"][i], local_predictions[i]))
        if index % report_every == 0 or index == num_batches:
            logging.info("evaluation: batch %d/%d", index, num_batches)
    return total.compute(), kept


def _local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def log_scores(step: int, split: str, scores: dict, class_names: list[str], workdir: str) -> None:
    """Logs a per-class IoU table and appends a JSON line to WORKDIR/eval_results.jsonl."""
    rows = [
        f"{name:>14s} {iou:7.2%}"
        for name, iou in zip(class_names, scores["per_class_iou"], strict=True)
    ]
    logging.info(
        "step %d, %s: mean IoU %.4f, pixel acc %.4f, mean acc %.4f, fw IoU %.4f\n%s",
        step, split, scores["mean_iou"], scores["pixel_accuracy"], scores["mean_accuracy"],
        scores["fw_iou"], "\n".join(rows),
    )  # fmt: skip
    if jax.process_index() == 0:
        record = {"step": int(step), "split": split, **scores}
        with (epath.Path(workdir) / "eval_results.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------- the loop


class _Trainer:
    """The pieces of one training run, built once; `run` is the loop."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        validate_config(config)
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
        split = config.dataset.eval_split
        name = config.dataset.get("eval_name") or config.dataset.name
        per_batch = config.eval_batch_size
        num_batches = -(-input_pipeline.num_examples(config, split, name) // per_batch)
        scores, kept = evaluate(
            self.state.variables(),
            self.eval_step,
            input_pipeline.create_eval_iterator(config),
            self.mesh,
            num_batches=num_batches,
            keep_predictions=config.num_predictions_to_save,
        )
        log_scores(step, split, scores, self.class_names, self.workdir)
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
            with checkpoint.sigterm_flag() as sigterm:
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


# ---------------------------------------------------------------------------- eval / predict


def _trained_variables(
    config: ml_collections.ConfigDict, workdir: str, weights_path: str | None
) -> tuple[models.FCN, dict]:
    """The model and its trained variables: a pytorch-fcn file, else WORKDIR's checkpoint."""
    validate_config(config)
    model = steps.create_model(config, input_pipeline.num_classes(config))
    path = weights_path or workdir
    return model, load_variables(path, config.model, config, model.num_classes)


def evaluate_model(
    config: ml_collections.ConfigDict,
    workdir: str,
    weights_path: str | None = None,
    split: str | None = None,
) -> dict:
    """Evaluates trained variables on `split` (default the config's eval split).

    Appends the scores to WORKDIR/eval_results.jsonl (step -1 for imported weights).
    """
    model, variables = _trained_variables(config, workdir, weights_path)
    mesh = steps.make_mesh()
    split = split or config.dataset.eval_split
    name = config.dataset.get("eval_name") or config.dataset.name
    num_batches = -(-input_pipeline.num_examples(config, split, name) // config.eval_batch_size)
    scores, _ = evaluate(
        jax.device_put(variables, steps.replicated(mesh)),
        steps.jit_eval_step(model, mesh),
        input_pipeline.create_eval_iterator(config, split),
        mesh,
        num_batches=num_batches,
    )
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    log_scores(-1, split, scores, input_pipeline.class_names(config), workdir)
    return scores


def predict(
    config: ml_collections.ConfigDict,
    workdir: str,
    weights_path: str | None,
    inputs: list[str],
    output_dir: str,
) -> list:
    """Segments image files with trained variables; see `fcn_jax.predict.predict_files`."""
    from fcn_jax import predict as predict_lib

    model, variables = _trained_variables(config, workdir, weights_path)
    return predict_lib.predict_files(config, model, variables, inputs, output_dir)
