"""Evaluation and prediction with trained variables, and the eval pass the train loop runs.

Entry points: `evaluate_model(config, workdir, ...)` (mode eval) and
`predict_images(config, workdir, ...)` (mode predict). `evaluate` is one pass over the eval
batches; `log_scores` logs it and appends it to WORKDIR/eval_results.jsonl.
"""

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh

from fcn_jax import input_pipeline, losses, predict, restore, steps


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
      (scores of `fcn_jax.metrics.scores`, up to `keep_predictions` (uint8 image, label,
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
                # Off the image the prediction means nothing: show it as void, like the label.
                prediction = np.full_like(local_predictions[i], losses.VOID)
                h, w = local["size"][i]
                prediction[:h, :w] = local_predictions[i][:h, :w]
                kept.append((local["image"][i], local["label"][i], prediction))
        if index % report_every == 0 or index == num_batches:
            logging.info("evaluation: batch %d/%d", index, num_batches)
    return total.compute(), kept


def _local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def log_scores(step: int, split: str, scores: dict, class_names: list[str], workdir: str) -> None:
    """Logs a per-class IoU table and appends a JSON line to WORKDIR/eval_results.jsonl.

    A NaN score (a class absent from both labels and predictions) is written as `null`, which
    strict JSON readers accept; `read_scores` turns it back into NaN.
    """
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
        record = _nan_to_none({"step": int(step), "split": split, **scores})
        with (epath.Path(workdir) / "eval_results.jsonl").open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")


def read_scores(workdir: str) -> list[dict]:
    """The records of WORKDIR/eval_results.jsonl, oldest first (`null` scores as NaN)."""
    path = epath.Path(workdir) / "eval_results.jsonl"
    if not path.exists():
        return []
    return [_none_to_nan(json.loads(line)) for line in path.read_text().splitlines() if line]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _none_to_nan(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _none_to_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_none_to_nan(v) for v in value]
    return math.nan if value is None else value


def evaluate_model(
    config: ml_collections.ConfigDict,
    workdir: str,
    weights_path: str | None = None,
    split: str | None = None,
) -> dict:
    """Evaluates trained variables on `split` (default the config's eval split).

    Appends the scores to WORKDIR/eval_results.jsonl (step -1 for imported weights).
    """
    model, variables = restore.trained_model(
        config, weights_path or workdir, input_pipeline.num_classes(config)
    )
    mesh = steps.make_mesh()
    data = input_pipeline.eval_data(config, split)
    scores, _ = evaluate(
        jax.device_put(variables, steps.replicated(mesh)),
        steps.jit_eval_step(model, mesh, config.dataset.preprocessing),
        input_pipeline.create_eval_iterator(config, data.split),
        mesh,
        num_batches=data.num_batches,
    )
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    log_scores(-1, data.split, scores, input_pipeline.class_names(config), workdir)
    return scores


def predict_images(
    config: ml_collections.ConfigDict,
    workdir: str,
    weights_path: str | None,
    inputs: list[str],
    output_dir: str,
) -> list[epath.Path]:
    """Segments image files with trained variables; see `fcn_jax.predict.predict_files`."""
    model, variables = restore.trained_model(
        config, weights_path or workdir, input_pipeline.num_classes(config)
    )
    return predict.predict_files(config, model, variables, inputs, output_dir)
