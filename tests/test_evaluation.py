import json
import math
import pathlib

from fcn_jax import evaluation


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
    (back,) = evaluation.read_scores(str(tmp_path))
    assert math.isnan(back["mean_accuracy"]) and back["mean_iou"] == 0.25
