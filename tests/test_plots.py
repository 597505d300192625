import numpy as np

from fcn_jax import class_info, metrics, plots
from fcn_jax.datasets import VOC_CLASSES

RED, GREEN, BLUE = (230, 25, 75), (60, 180, 75), (0, 130, 200)
CLASSES = class_info.ClassInfo(
    ("background", "circle", "square", "star"), ((0, 0, 0), RED, GREEN, BLUE)
)
VOID_COLOR = tuple(CLASSES.palette()[255])


def _has(picture: np.ndarray, color) -> bool:
    return bool(np.all(picture == np.array(color, np.uint8), axis=-1).any())


def test_panel_has_headings_and_a_legend_of_the_classes_shown():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    label = np.zeros((40, 60), np.uint8)
    label[5:20, 5:20], label[:, 55:] = 1, 255  # a circle; void at the right
    prediction = np.zeros((40, 60), np.uint8)
    prediction[10:30, 10:30] = 2  # a square where the circle is
    panel = plots.prediction_panel(image, label, prediction, CLASSES)
    # Drawn at least 200 pixels a column, with room above for headings and below for the legend.
    assert panel.dtype == np.uint8 and panel.shape[1] >= 3 * 200
    assert panel.shape[0] > 200 * 40 / 60 + 30
    legend = panel[-int(0.15 * panel.shape[0]) :]
    assert _has(legend, RED) and _has(legend, GREEN) and _has(legend, VOID_COLOR)
    assert not _has(panel, BLUE)  # no star anywhere: not in the legend either
    headings = panel[: int(0.1 * panel.shape[0])]
    assert (headings < 100).all(axis=-1).sum() > 50  # dark heading text on white


def test_confusion_heatmap_and_iou_bars_are_drawn_for_21_classes():
    voc = class_info.from_metadata({"class_names": VOC_CLASSES})
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, (21, 21)) + np.diag(rng.integers(500, 2000, 21))
    confusion[5] = 0  # bottle absent from the ground truth: a grey row
    heatmap = plots.confusion_heatmap(confusion, voc, "step 4")
    assert heatmap.shape[0] > 21 * 30 and heatmap.shape[1] > 21 * 30  # room for every name
    assert len(np.unique(heatmap.reshape(-1, 3), axis=0)) > 50  # shades, text, not a blank
    assert _has(heatmap, (204, 204, 204))  # the undefined row
    bars = plots.iou_bars(metrics.scores(confusion)["per_class_iou"], voc, "step 4")
    for color in voc.colors[1:5]:  # the bars in the class colours
        assert _has(bars, color)


def test_stack_pads_pictures_to_one_batch():
    batch = plots.stack([np.zeros((3, 5, 3), np.uint8), np.zeros((4, 2, 3), np.uint8)])
    assert batch.shape == (2, 4, 5, 3)
    assert (batch[0, 3] == 255).all() and (batch[1, :, 2:] == 255).all()
    assert not batch[0, :3].any() and not batch[1, :, :2].any()
