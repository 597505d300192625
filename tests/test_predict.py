import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import quickstart
from fcn_jax import models, predict, preprocessing, train
from tests.helpers import tiny_config


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
    written = train.predict(config, str(workdir), None, [str(photos)], str(out))
    assert sorted(p.name for p in written) == [
        "a_mask.png",
        "a_overlay.png",
        "b_mask.png",
        "b_overlay.png",
    ]
    mask = Image.open(out / "a_mask.png")
    assert mask.mode == "P" and mask.size == (70, 50)
    assert np.asarray(mask).max() < 5
    assert Image.open(out / "b_overlay.png").size == (2 * 41, 33)
    with pytest.raises(FileNotFoundError, match="no image"):
        train.predict(config, str(workdir), None, [str(tmp_path / "*.tif")], str(out))


def test_predict_batches_sizes_on_canvases_with_own_size_results(tmp_path):
    # Three images share a 128 x 128 canvas, one larger than the largest canvas runs alone;
    # every mask is the argmax of that image's own-size forward pass.
    model = models.get_model("fcn8s", num_classes=3, width=1 / 32)
    variables = models.init_variables(model, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    variables = jax.tree.unflatten(
        treedef, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )
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
    predict.predict_files(config, model, variables, [str(photos)], str(tmp_path / "out"))
    for name in sizes:
        image = np.asarray(Image.open(photos / f"{name}.png"))
        logits = model.apply(variables, preprocessing.normalize(image[None], "caffe"))
        want = np.asarray(jnp.argmax(logits, -1))[0]
        got = np.asarray(Image.open(tmp_path / "out" / f"{name}_mask.png"))
        np.testing.assert_array_equal(got, want)
