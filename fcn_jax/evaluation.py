"""Evaluation and prediction with trained variables, and the eval pass the train loop runs.

Entry points: `evaluate_model(config, workdir, ...)` (mode eval) and
`predict_images(config, workdir, ...)` (mode predict). `evaluate` is one pass over the eval
batches, giving a confusion matrix; `report` scores it and writes the scores and pictures:
the log, WORKDIR/eval_results.jsonl (`log_scores`), TensorBoard, WORKDIR/plots/.
"""

import json
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath
from jax.sharding import Mesh

from fcn_jax import (
    class_info,
    config_checks,
    input_pipeline,
    metrics,
    plots,
    predict,
    restore,
    steps,
    visualize,
)


def evaluate(
    variables: dict,
    eval_step_fn: Callable,
    batches: Iterator[dict],
    mesh: Mesh,
    *,
    num_batches: int,
    keep_predictions: int = 0,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Runs one pass; the confusion matrix is summed on the device and pulled once.

    Returns:
      (the confusion matrix, int (K, K), rows ground truth (`fcn_jax.metrics.scores` scores
      it); up to `keep_predictions` (uint8 image, label, prediction) triples of this process
      for pictures, each cropped to its image's size).
    """
    total, kept = None, []
    report_every = max(1, num_batches // 10)
    for index, local in enumerate(batches, start=1):
        metric, predictions = eval_step_fn(variables, steps.global_batch(mesh, local))
        total = metric if total is None else total.merge(metric)
        if len(kept) < keep_predictions:
            local_predictions = _local_rows(predictions)
            for i in np.flatnonzero(local["mask"])[: keep_predictions - len(kept)]:
                h, w = local["size"][i]
                kept.append(
                    (local["image"][i][:h, :w], local["label"][i][:h, :w],
                     local_predictions[i][:h, :w])
                )  # fmt: skip
        if index % report_every == 0 or index == num_batches:
            logging.info("evaluation: batch %d/%d", index, num_batches)
    return total.counts(), kept


def _local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def report(
    step: int,
    split: str,
    confusion: np.ndarray,
    classes: class_info.ClassInfo,
    workdir: str,
    *,
    examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] = (),
    writer: metric_writers.MetricWriter | None = None,
) -> dict:
    """Scores one evaluation and writes them everywhere; returns the scores.

    The log and WORKDIR/eval_results.jsonl (`log_scores`); the `writer`'s scalars
    (`eval/<score>`, `eval/iou/<class name>`) if given; and, from process 0, the pictures
    (`fcn_jax.plots`) as PNG files and to the `writer`: WORKDIR/plots/TAG_confusion.png and
    TAG_iou.png, and a panel per example in WORKDIR/predictions/TAG_<i>.png, where TAG is
    `step_<step>` (7 digits), or `eval_<split>` for an evaluation outside training (step -1).

    Args:
      step: the train step, or -1 outside training.
      split: the evaluated split.
      confusion: the confusion matrix of `evaluate`.
      classes: the class names and colours.
      workdir: where to write.
      examples: (image, label, prediction) triples to draw.
      writer: TensorBoard summaries, or None.
    """
    scores = metrics.scores(confusion)
    log_scores(step, split, scores, classes.names, workdir)
    if writer is not None:
        writer.write_scalars(step, _scalars(scores, classes))
    if jax.process_index() == 0:
        tag, title = (f"step_{step:07d}", f"step {step}") if step >= 0 else (f"eval_{split}", split)
        pictures = _write_pictures(tag, title, confusion, scores, classes, examples, workdir)
        if writer is not None:
            writer.write_images(step, {f"eval/{k}": v for k, v in pictures.items()})
    return scores


def _scalars(scores: dict, classes: class_info.ClassInfo) -> dict[str, float]:
    """The TensorBoard scalars of an evaluation: each score, and each class's IoU by name."""
    scalars = {f"eval/{k}": v for k, v in scores.items() if k != "per_class_iou"}
    for name, iou in zip(classes.names, scores["per_class_iou"], strict=True):
        scalars[f"eval/iou/{name}"] = iou
    return scalars


def _write_pictures(
    tag: str,
    title: str,
    confusion: np.ndarray,
    scores: dict,
    classes: class_info.ClassInfo,
    examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    workdir: str,
) -> dict[str, np.ndarray]:
    """Draws and saves the pictures of `report`; returns them as (N, H, W, 3) batches."""
    plots_dir, predictions_dir = epath.Path(workdir) / "plots", epath.Path(workdir) / "predictions"
    pictures = {
        "confusion_matrix": plots.confusion_heatmap(confusion, classes, title),
        "iou_per_class": plots.iou_bars(scores["per_class_iou"], classes, title),
    }
    plots_dir.mkdir(parents=True, exist_ok=True)
    visualize.save_png(pictures["confusion_matrix"], plots_dir / f"{tag}_confusion.png")
    visualize.save_png(pictures["iou_per_class"], plots_dir / f"{tag}_iou.png")
    batches = {name: picture[None] for name, picture in pictures.items()}
    if examples:
        panels = [plots.prediction_panel(*example, classes) for example in examples]
        predictions_dir.mkdir(parents=True, exist_ok=True)
        for index, panel in enumerate(panels):
            visualize.save_png(panel, predictions_dir / f"{tag}_{index}.png")
        batches["predictions"] = plots.stack(panels)
    return batches


def log_scores(
    step: int, split: str, scores: dict, class_names: Sequence[str], workdir: str
) -> None:
    """Logs a per-class IoU table and appends a JSON line to WORKDIR/eval_results.jsonl.

    The line holds the step, the split, the scores of `fcn_jax.metrics.scores` (with
    `per_class_iou` a list in label order) and `class_iou`, the same values by class name.
    A NaN score (a class absent from both labels and predictions) is written as `null`, which
    strict JSON readers accept; `read_scores` turns it back into NaN.
    """
    by_name = dict(zip(class_names, scores["per_class_iou"], strict=True))
    rows = [f"{name:>14s} {iou:7.2%}" for name, iou in by_name.items()]
    logging.info(
        "step %d, %s: mean IoU %.4f, pixel acc %.4f, mean acc %.4f, fw IoU %.4f\n%s",
        step, split, scores["mean_iou"], scores["pixel_accuracy"], scores["mean_accuracy"],
        scores["fw_iou"], "\n".join(rows),
    )  # fmt: skip
    if jax.process_index() == 0:
        record = _nan_to_none({"step": int(step), "split": split, **scores, "class_iou": by_name})
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

    Writes what `report` writes, at step -1: the scores in WORKDIR/eval_results.jsonl, the
    plots and `config.num_predictions_to_save` prediction panels.

    Raises:
      ValueError: WORKDIR records other classes than the dataset's (`class_info.record`).
      FileNotFoundError: no checkpoint in WORKDIR, or no such weights file.
    """
    # Before the workdir gets a record of the classes:
    config_checks.validate_config(config)
    restore.check_source(weights_path or workdir)
    classes = class_info.record(workdir, input_pipeline.dataset_classes(config))
    model, variables = restore.trained_model(config, weights_path or workdir, classes.num_classes)
    mesh = steps.make_mesh()
    data = input_pipeline.eval_data(config, split)
    confusion, examples = evaluate(
        jax.device_put(variables, steps.replicated(mesh)),
        steps.jit_eval_step(model, mesh, config.dataset.preprocessing),
        input_pipeline.create_eval_iterator(config, data.split),
        mesh,
        num_batches=data.num_batches,
        keep_predictions=config.num_predictions_to_save,
    )
    return report(-1, data.split, confusion, classes, workdir, examples=examples)


def predict_images(
    config: ml_collections.ConfigDict,
    workdir: str,
    weights_path: str | None,
    inputs: list[str],
    output_dir: str,
) -> list[epath.Path]:
    """Segments image files with trained variables; see `fcn_jax.predict.predict_files`.

    The classes are WORKDIR's record (`class_info.for_run`): no dataset is needed.
    """
    model, variables, classes = restore.trained_run(config, workdir, weights_path)
    return predict.predict_files(config, model, variables, classes, inputs, output_dir)
