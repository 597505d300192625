"""Tests for fcn_jax.export: each artifact, loaded by its own runtime, against model.apply.

The exported model is the pytorch-fcn FCN-8s parity fixture (width 1/64, 5 classes, random
non-zero weights, see tests/test_weights.py) imported through `export_trained`, on a 48x48
canvas. The measure: max |exported - model.apply at the image's own size| <= 1e-4 of the
reference logits' range; the classes agree wherever the reference's two best logits are
further apart than that. ONNX is not built (README, Serving: why).
"""

import os
import pathlib

import jax
import numpy as np
import pytest
import tensorflow as tf

from fcn_jax import class_info, export, fast_paths, models, preprocessing, steps, weights
from fcn_jax.datasets import synthetic_shapes
from tests.helpers import run_python, tiny_config

PTH = pathlib.Path(__file__).parent / "testdata" / "parity" / "fcn8s_random.pth"
CANVAS = (48, 48)
RTOL = 1e-4
# (batch, height, width): the whole canvas, odd sizes, thin strips, a single pixel.
CASES = [(1, 48, 48), (3, 37, 45), (2, 9, 48), (1, 1, 1)]


def fixture_config(data_dir: str, **overrides):
    """tiny_config for the parity fixture: FCN-8s, width 1/64, a 48x48 canvas."""
    fields = {"model": "fcn8s", "width": 1 / 64, "dataset.canvas_size": CANVAS, **overrides}
    return tiny_config(data_dir, **fields)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_data_dir):
    """(model, variables, preprocessing, export_dir) of the fixture exported once."""
    config = fixture_config(synthetic_data_dir)
    out = tmp_path_factory.mktemp("export") / "out"
    written = export.export_trained(config, "unused-workdir", str(PTH), str(out))
    assert written == {
        "saved_model": str(out / "saved_model"),
        "stablehlo": str(out / "model.stablehlo"),
        "classes": str(out / "classes.json"),
    }
    # No workdir record: the config's dataset's classes.
    assert class_info.load(out).names == tuple(synthetic_shapes.CLASS_NAMES)
    model = steps.create_model(config, 5)
    variables = weights.load_pytorch_fcn(PTH, "fcn8s", width=1 / 64)
    return model, variables, config.dataset.preprocessing, out


def random_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), np.uint8)


def own_size_logits(exported, images: np.ndarray) -> np.ndarray:
    model, variables, name, _ = exported
    return np.asarray(model.apply(variables, preprocessing.normalize(images, name)))


def assert_matches(outputs: dict, expected_logits: np.ndarray) -> None:
    logits, classes = np.asarray(outputs["logits"]), np.asarray(outputs["classes"])
    assert logits.dtype == np.float32 and classes.dtype == np.int32
    assert logits.shape == expected_logits.shape and classes.shape == expected_logits.shape[:-1]
    tolerance = RTOL * float(expected_logits.max() - expected_logits.min())
    assert tolerance > 0  # non-zero weights: a real signal
    assert np.abs(logits - expected_logits).max() <= tolerance
    top2 = np.sort(expected_logits, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > tolerance
    np.testing.assert_array_equal(classes[clear], expected_logits.argmax(-1)[clear])


@pytest.mark.parametrize("batch,height,width", CASES)
def test_stablehlo_matches_model_apply_at_own_size(exported, batch, height, width):
    images = random_images(batch, height, width)
    artifact = jax.export.deserialize((exported[3] / "model.stablehlo").read_bytes())
    assert_matches(artifact.call(images), own_size_logits(exported, images))


@pytest.mark.parametrize("batch,height,width", CASES)
def test_saved_model_matches_model_apply_at_own_size(exported, batch, height, width):
    images = random_images(batch, height, width)
    serving = tf.saved_model.load(str(exported[3] / "saved_model")).signatures["serving_default"]
    assert_matches(serving(images=tf.constant(images)), own_size_logits(exported, images))


def test_stablehlo_lowers_for_other_platforms_too(exported, synthetic_data_dir):
    _, variables, name, _ = exported
    platforms = ("cpu", "cuda")
    model = steps.create_model(fixture_config(synthetic_data_dir), 5, platform=platforms)
    assert model.fast == fast_paths.FastPaths()  # 'auto' for CPU and CUDA: the plain path
    serve = export.serving_function(model, CANVAS, name)
    artifact = export.export_stablehlo(serve, variables, CANVAS, platforms)
    assert artifact.platforms == ("cpu", "cuda")
    images = random_images(2, 30, 40)
    assert_matches(artifact.call(images), own_size_logits(exported, images))


def test_stablehlo_of_a_course_notes_geometry_file_matches_too():
    path = PTH.parent / "simple_fcn8s_random.pth"
    variables = weights.load_pytorch_fcn(path, "fcn8s", geometry="simple")
    model = models.get_model("fcn8s", 5, "simple", width=1 / 64)
    serve = export.serving_function(model, (64, 64), "torchvision")
    artifact = export.export_stablehlo(serve, variables, (64, 64), ("cpu",))
    images = random_images(2, 40, 52)
    expected = model.apply(variables, preprocessing.normalize(images, "torchvision"))
    assert_matches(artifact.call(images), np.asarray(expected))


def test_saved_model_with_sizes_serves_a_batch_of_mixed_sizes(exported):
    sizes = [(37, 45), (20, 30), (48, 11)]
    padded = np.zeros((len(sizes), 48, 45, 3), np.uint8)
    originals = [random_images(1, h, w, seed=i)[0] for i, (h, w) in enumerate(sizes)]
    for i, image in enumerate(originals):
        padded[i, : image.shape[0], : image.shape[1]] = image
    serving = tf.saved_model.load(str(exported[3] / "saved_model")).signatures["with_sizes"]
    outputs = serving(images=tf.constant(padded), sizes=tf.constant(sizes, tf.int32))
    for i, image in enumerate(originals):
        h, w = image.shape[:2]
        own = {key: np.asarray(value)[i : i + 1, :h, :w] for key, value in outputs.items()}
        assert_matches(own, own_size_logits(exported, image[None]))


def test_saved_model_refuses_images_larger_than_the_canvas(exported):
    serving = tf.saved_model.load(str(exported[3] / "saved_model")).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than the export canvas 48x48"):
        serving(images=tf.constant(random_images(1, 49, 20)))


def test_stablehlo_refuses_images_larger_than_the_canvas(exported):
    artifact = jax.export.deserialize((exported[3] / "model.stablehlo").read_bytes())
    with pytest.raises(ValueError, match="Error refining shapes"):
        artifact.call(random_images(1, 20, 49))


def test_refuses_a_non_empty_export_dir_unless_overwrite(exported, tmp_path):
    model, variables, name, _ = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        export.export(model, variables, str(out), (16, 16), name)
    assert os.listdir(out) == ["old.txt"]
    export.export(model, variables, str(out), (16, 16), name, overwrite=True)
    assert sorted(os.listdir(out)) == ["model.stablehlo", "saved_model"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or old folder left behind


def test_failed_export_leaves_no_export_dir(exported, tmp_path, synthetic_data_dir):
    # Variables of the width-1/64 fixture do not fit a width-1/32 model: the export fails
    # while tracing the model, after its staging folder was created.
    _, variables, name, _ = exported
    model = steps.create_model(fixture_config(synthetic_data_dir, width=1 / 32), 5)
    with pytest.raises(Exception, match="shape"):
        export.export(model, variables, str(tmp_path / "out"), CANVAS, name)
    assert os.listdir(tmp_path) == []


def test_export_trained_errors_name_the_problem(tmp_path, synthetic_data_dir):
    out = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        export.export_trained(
            fixture_config(synthetic_data_dir), str(tmp_path / "empty"), None, out
        )
    with pytest.raises(FileNotFoundError):
        export.export_trained(
            fixture_config(synthetic_data_dir), "unused", str(tmp_path / "missing.pth"), out
        )
    with pytest.raises(ValueError, match="must be a local folder"):
        export.export_trained(fixture_config(synthetic_data_dir), "w", None, "gs://bucket/out")
    with pytest.raises(ValueError, match="config.model='fcn4s'"):
        export.export_trained(fixture_config(synthetic_data_dir, model="fcn4s"), "w", None, out)
    assert not os.path.exists(out)


@pytest.mark.slow
def test_main_exports_a_pytorch_fcn_file_and_refuses_to_overwrite(tmp_path, synthetic_data_dir):
    out = tmp_path / "out"
    command = [
        "main.py",
        "--config=configs/quickstart.py",
        f"--workdir={tmp_path / 'unused'}",
        f"--weights={PTH}",
        "--mode=export",
        f"--export_dir={out}",
        "--config.width=0.015625",
        "--config.dataset.canvas_size=(16, 16)",
        f"--config.dataset.data_dir={synthetic_data_dir}",
    ]
    result = run_python(*command)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["classes.json", "model.stablehlo", "saved_model"]
    again = run_python(*command)
    assert again.returncode != 0
    assert "exists and is not empty; choose another or pass --overwrite" in again.stderr
