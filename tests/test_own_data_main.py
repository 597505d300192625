"""main.py end to end on a user's folder in each layout an annotation tool writes (issue 21).

Train (configs/custom.py shrunk to a width-1/32 model, a 96-pixel canvas and 4 steps from
random weights), then, each in a fresh process with the folder moved away, `--mode=eval`
(on the data prepared from it), `--mode=predict` and `--mode=export` (without the prepared
data either): the class names and colours of the folder reach eval_results.jsonl, the plots,
the predictions and the export.
"""

import concurrent.futures
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fcn_jax import class_info
from fcn_jax.datasets import synthetic_shapes, voc_palette
from tests.helpers import run_python
from tools import make_custom_datasets

COUNT = 12  # images in the folder; a quarter held out for validation


def _flags(folder, data_dir, workdir) -> list[str]:
    config = {
        "dataset.manual_dir": folder,
        "dataset.data_dir": data_dir,
        "dataset.val_fraction": 0.25,
        "dataset.canvas_size": "(96, 96)",  # the synthetic images are 64 to 96 pixels a side
        "dataset.shuffle_buffer": 16,
        "init.kind": "random",  # offline: no VGG16 download
        "width": 1 / 32,
        "batch_size": 4,
        "eval_batch_size": 4,
        "num_train_steps": 4,
        "log_every_steps": 2,
        "eval_every_steps": 4,
        "checkpoint_every_steps": 4,
        "num_predictions_to_save": 1,
        "optimizer.warmup_steps": 0,
    }
    return [
        "main.py",
        "--config=configs/custom.py",
        f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in config.items()),
    ]


def _main(*args: str) -> str:
    result = run_python(*args, JAX_DISABLE_MOST_OPTIMIZATIONS="true")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _expected_names(layout: str) -> list[str]:
    """The class names each layout gives: labelme2voc calls class 0 `_background_`."""
    names = list(synthetic_shapes.CLASS_NAMES)
    if layout == "labelme":
        names[0] = "_background_"
    return names


def _expected_colors(layout: str) -> list[list[int]]:
    """The class colours each layout defines: CVAT's label map, else the VOC palette's."""
    if layout == "cvat":
        return [list(c) for c in make_custom_datasets.CVAT_COLORS]
    return voc_palette()[: len(synthetic_shapes.CLASS_NAMES)].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("layout", make_custom_datasets.LAYOUTS)
def test_main_trains_then_evaluates_predicts_and_exports_without_the_folder(layout, tmp_path):
    folder, data_dir, workdir = tmp_path / layout, tmp_path / "tfds", tmp_path / "run"
    make_custom_datasets.write(layout, folder, COUNT)
    photos = tmp_path / "photos"
    photos.mkdir()
    image, _ = synthetic_shapes.generate_example("validation", 0)
    Image.fromarray(image).save(photos / "photo.png")
    flags = _flags(folder, data_dir, workdir)
    _main(*flags)
    names, colors = _expected_names(layout), _expected_colors(layout)
    assert json.loads((workdir / "classes.json").read_text()) == {
        "names": names,
        "colors": colors,
        "ignore_label": 255,
    }

    shutil.move(folder, tmp_path / "moved")
    out, export_dir = tmp_path / "predicted", tmp_path / "export"
    # Predict and export need neither the folder nor the data prepared from it.
    no_data = _flags(folder, tmp_path / "no_tfds", workdir)
    commands = [
        [*flags, "--mode=eval"],
        [*no_data, "--mode=predict", f"--inputs={photos}", f"--output_dir={out}"],
        [*no_data, "--mode=export", f"--export_dir={export_dir}"],
    ]
    # Three fresh processes at once: they read the workdir and write apart.
    with concurrent.futures.ThreadPoolExecutor() as pool:
        list(pool.map(lambda command: _main(*command), commands))
    assert not (tmp_path / "no_tfds").exists()
    records = [
        json.loads(line) for line in (workdir / "eval_results.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [4, -1]
    for record in records:
        assert list(record["class_iou"]) == names
    assert records[1]["class_iou"] == records[0]["class_iou"]  # the same model, the same data
    for picture in ("step_0000004_confusion", "step_0000004_iou", "eval_validation_iou"):
        assert (workdir / "plots" / f"{picture}.png").stat().st_size > 10_000

    assert class_info.load(out) == class_info.load(workdir)
    mask = Image.open(out / "photo_mask.png")
    assert mask.size == image.shape[1::-1]
    assert mask.getpalette()[:15] == np.ravel(colors).tolist()

    assert class_info.load(export_dir) == class_info.load(workdir)
    assert (export_dir / "model.stablehlo").stat().st_size > 0
