import numpy as np
import pytest
from PIL import Image

from fcn_jax import evaluation, train
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
    written = evaluation.predict_images(config, str(workdir), None, [str(photos)], str(out))
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
        evaluation.predict_images(config, str(workdir), None, [str(tmp_path / "*.tif")], str(out))
