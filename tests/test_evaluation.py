import json
import math
import pathlib

import numpy as np
import tensorflow as tf
from clu import metric_writers
from PIL import Image

from fcn_jax import class_info, evaluation, metrics


def test_nan_scores_are_written_as_null_and_read_back_as_nan(tmp_path):
    scores = {
        "pixel_accuracy": 0.5,
        "mean_accuracy": math.nan,
        "mean_iou": 0.25,
        "fw_iou": 0.5,
        "per_class_iou": [0.5, math.nan],
    }
    evaluation.log_scores(3, "validation", scores, ["a", "b"], str(tmp_path))
    line = pathlib.Path(tmp_path, "eval_results.jsonl").read_text()

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    record = json.loads(line, parse_constant=refuse)
    assert record["mean_accuracy"] is None and record["per_class_iou"] == [0.5, None]
    assert record["class_iou"] == {"a": 0.5, "b": None}
    (back,) = evaluation.read_scores(str(tmp_path))
    assert math.isnan(back["mean_accuracy"]) and back["mean_iou"] == 0.25


def _event_tags(logdir: pathlib.Path) -> set[str]:
    tags = set()
    for path in logdir.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_report_writes_scores_by_class_name_plots_and_panels(tmp_path):
    classes = class_info.ClassInfo(
        ("background", "traffic light", "car"), ((0, 0, 0), (250, 170, 30), (0, 0, 142))
    )
    confusion = np.array([[50, 2, 0], [3, 20, 1], [0, 0, 0]])  # no car in the ground truth
    label = np.zeros((20, 30), np.uint8)
    label[5:10, 5:10] = 1
    example = (np.zeros((20, 30, 3), np.uint8), label, np.ones_like(label))
    writer = metric_writers.create_default_writer(str(tmp_path))
    scores = evaluation.report(
        7, "validation", confusion, classes, str(tmp_path), examples=[example] * 2, writer=writer
    )
    writer.close()
    assert scores == metrics.scores(confusion)
    (record,) = evaluation.read_scores(str(tmp_path))
    assert list(record["class_iou"]) == ["background", "traffic light", "car"]
    assert record["class_iou"]["traffic light"] == scores["per_class_iou"][1] == 20 / 26
    assert record["per_class_iou"][:2] == scores["per_class_iou"][:2]  # the list stays
    assert record["class_iou"]["car"] == 0.0  # predicted once, never present
    for name in ("plots/step_0000007_confusion.png", "plots/step_0000007_iou.png",
                 "predictions/step_0000007_0.png", "predictions/step_0000007_1.png"):  # fmt: skip
        picture = np.asarray(Image.open(tmp_path / name))
        assert min(picture.shape[:2]) > 150 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 3
    assert _event_tags(tmp_path) >= {
        "eval/mean_iou",
        "eval/iou/background",
        "eval/iou/traffic light",
        "eval/iou/car",
        "eval/confusion_matrix",
        "eval/iou_per_class",
        "eval/predictions",
    }
    # Outside training (step -1) the pictures are named by the split.
    evaluation.report(-1, "test", confusion, classes, str(tmp_path))
    assert (tmp_path / "plots" / "eval_test_confusion.png").exists()
