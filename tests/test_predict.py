import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from PIL import Image

from configs import quickstart
from fcn_jax import class_info, evaluation, models, predict, preprocessing, steps, train
from tests.helpers import random_variables, tiny_config


def _classes(count: int) -> class_info.ClassInfo:
    return class_info.from_metadata({"class_names": [f"class_{i}" for i in range(count)]})


@pytest.mark.slow
def test_predict_writes_palette_masks_and_overlays(tmp_path, synthetic_data_dir):
    workdir = tmp_path / "run"
    config = tiny_config(synthetic_data_dir, num_train_steps=2, eval_every_steps=2)
    train.train_and_evaluate(config, str(workdir))
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, size in [("a.jpg", (50, 70)), ("b.png", (33, 41))]:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(photos / name)
    out = tmp_path / "out"
    written = evaluation.predict_images(config, str(workdir), None, [str(photos)], str(out))
    assert sorted(p.name for p in written) == [
        "a_mask.png",
        "a_overlay.png",
        "b_mask.png",
        "b_overlay.png",
        "classes.json",
    ]
    # The workdir's classes: their names beside the masks, their colours in the masks.
    classes = class_info.load(workdir)
    assert class_info.load(out) == classes and classes.num_classes == 5
    mask = Image.open(out / "a_mask.png")
    assert mask.mode == "P" and mask.size == (70, 50)
    assert np.asarray(mask).max() < 5
    assert mask.getpalette()[:15] == classes.palette()[:5].reshape(-1).tolist()
    assert Image.open(out / "b_overlay.png").size == (2 * 41, 33)
    with pytest.raises(FileNotFoundError, match="no image"):
        evaluation.predict_images(config, str(workdir), None, [str(tmp_path / "*.tif")], str(out))


@pytest.mark.slow
def test_predict_batches_sizes_on_canvases_with_own_size_results(tmp_path):
    # Three images share a 128 x 128 canvas, one larger than the largest canvas runs alone;
    # every mask is the argmax of that image's own-size forward pass.
    model = models.get_model("fcn8s", num_classes=3, width=1 / 32)
    variables = random_variables(model, seed=1)
    config = quickstart.get_config()
    config.dataset.canvas_size = (128, 128)
    config.eval_batch_size = 2
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"a": (50, 70), "b": (33, 41), "c": (128, 9), "d": (130, 20)}
    for name, size in sizes.items():
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            photos / f"{name}.png"
        )
    assert predict.bucket_canvas(130, 20, (128, 128)) == (130, 20)
    assert predict.bucket_canvas(50, 70, (128, 128)) == (128, 128)
    assert predict.bucket_canvas(50, 70, (512, 512)) == (128, 128)
    predict.predict_files(
        config, model, variables, _classes(3), [str(photos)], str(tmp_path / "out")
    )
    for name in sizes:
        image = np.asarray(Image.open(photos / f"{name}.png"))
        logits = model.apply(variables, preprocessing.normalize(image[None], "caffe"))
        want = np.asarray(jnp.argmax(logits, -1))[0]
        got = np.asarray(Image.open(tmp_path / "out" / f"{name}_mask.png"))
        np.testing.assert_array_equal(got, want)


def _read(path) -> np.ndarray:
    return predict.read_rgb(epath.Path(path))


def test_read_rgb_turns_any_mode_into_8_bit_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(_read(tmp_path / "gray.png"), np.stack([gray] * 3, -1))

    deep = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    np.testing.assert_array_equal(_read(tmp_path / "deep.png")[..., 0], deep >> 8)

    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[:, :15, 3], rgba[:, 15:, 3] = 0, 255  # left half transparent, right half opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = _read(tmp_path / "rgba.png")
    assert not rgb[:, :15].any()  # composited on black
    np.testing.assert_array_equal(rgb[:, 15:], rgba[:, 15:, :3])

    Image.new("CMYK", (30, 20), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    cmyk = _read(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (20, 30, 3) and cmyk.min() >= 250  # no ink: white

    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
        tmp_path / "rotated.jpg", exif=exif
    )
    assert _read(tmp_path / "rotated.jpg").shape == (30, 20, 3)


def test_read_rgb_refuses_huge_and_unreadable_files_by_name(tmp_path):
    Image.new("1", (4100, 4100)).save(tmp_path / "huge.png")
    with pytest.raises(ValueError, match=r"huge.png: 4100x4100 is .* more than the limit"):
        _read(tmp_path / "huge.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg: not a readable image"):
        _read(tmp_path / "broken.jpg")


def test_predict_files_writes_every_readable_image_under_distinct_names(
    tmp_path, synthetic_data_dir
):
    config = tiny_config(synthetic_data_dir)
    model = steps.create_model(config, 5)
    variables = models.init_variables(model, jax.random.key(0))
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    image = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
    for name in ("a.jpg", "a.png", "sub/a.jpg"):
        image.save(photos / name)
    (photos / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    inputs = [str(photos), str(photos / "sub")]
    with pytest.raises(ValueError, match=r"the model has 5 classes, the class list 4"):
        predict.predict_files(config, model, variables, _classes(4), inputs, out)
    with pytest.raises(ValueError, match=r"1 of 4 images could not be read") as error:
        predict.predict_files(config, model, variables, _classes(5), inputs, out)
    assert "broken.jpg" in str(error.value)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["classes.json"]
        + [f"{stem}_{kind}.png" for stem in ("a", "a_2", "a_3") for kind in ("mask", "overlay")]
    )
