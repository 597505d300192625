"""Pictures of an evaluation, drawn with matplotlib into uint8 RGB arrays.

* `prediction_panel`: image | truth | prediction, with headings and a legend of the classes
  shown (their names in their colours);
* `confusion_heatmap`: the row-normalised confusion matrix, class names on both axes;
* `iou_bars`: the per-class IoU, one bar per class in its colour, the mean IoU marked.

The figures are drawn off-screen by matplotlib's Agg canvas (no pyplot, no display, no global
state), so the same arrays go to PNG files and to TensorBoard.
"""

import math

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fcn_jax import visualize
from fcn_jax.class_info import ClassInfo

DPI = 100
# A panel column is drawn 200 to 400 pixels wide, whatever the image's size: headings and the
# legend stay readable next to a 64-pixel image, and a 500-pixel photo is not blown up.
_COLUMN_PIXELS = (200, 400)
# Matrices up to this many classes get the percentage written in each cell (VOC has 21).
_ANNOTATE_UP_TO = 30


def _figure(width: float, height: float, **kwargs) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _pixels(figure: Figure) -> np.ndarray:
    """The drawn figure as uint8 RGB (H, W, 3)."""
    figure.canvas.draw()
    return np.array(figure.canvas.buffer_rgba())[..., :3]


def _swatch(classes: ClassInfo, label: int, name: str | None = None) -> Patch:
    color = classes.palette()[label] / 255
    return Patch(
        facecolor=color, edgecolor="black", linewidth=0.5, label=name or classes.names[label]
    )


def prediction_panel(
    image: np.ndarray, label: np.ndarray, prediction: np.ndarray, classes: ClassInfo
) -> np.ndarray:
    """One example as a picture: image | truth | prediction, headed, with a legend below.

    Args:
      image: uint8 RGB (H, W, 3).
      label: the ground truth (H, W), class indices with `classes.ignore_label` for void.
      prediction: the predicted classes (H, W).
      classes: the names and colours.

    Returns:
      uint8 RGB, taller than (H, W) for the headings and the legend. The legend lists the
      classes in the truth or the prediction, in label order, and "void" if the truth has it.
    """
    height, width = label.shape
    column = min(max(width, _COLUMN_PIXELS[0]), _COLUMN_PIXELS[1]) / DPI
    row = column * height / width
    shown = np.union1d(np.unique(label), np.unique(prediction))
    handles = [_swatch(classes, int(c)) for c in shown if c < classes.num_classes]
    if np.any(label == classes.ignore_label):
        handles.append(_swatch(classes, classes.ignore_label, "void (not scored)"))
    columns = max(1, int(3 * column / 1.4))
    legend_rows = math.ceil(len(handles) / columns)
    figure = _figure(3 * column + 0.2, row + 0.45 + 0.28 * legend_rows, layout="constrained")
    pictures = (
        image,
        visualize.colorize(label, classes.palette()),
        visualize.colorize(prediction, classes.palette()),
    )
    for axes, picture, heading in zip(
        figure.subplots(1, 3), pictures, ("image", "truth", "prediction"), strict=True
    ):
        axes.imshow(picture, interpolation="nearest")
        axes.set_title(heading, fontsize=11)
        axes.set_axis_off()
    figure.legend(
        handles=handles, loc="outside lower center", ncol=columns, fontsize=9, frameon=False
    )
    return _pixels(figure)


def confusion_heatmap(confusion: np.ndarray, classes: ClassInfo, title: str) -> np.ndarray:
    """The confusion matrix as a heatmap, each row divided by its total.

    Cell (i, j) is the fraction of class i's pixels predicted as class j; a class absent from
    the ground truth has a grey row.

    Args:
      confusion: (K, K) counts, rows ground truth, columns predictions.
      classes: the names on both axes.
      title: the heading (e.g. the step).

    Returns:
      uint8 RGB.
    """
    counts = np.asarray(confusion, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = np.ma.masked_invalid(counts / totals)
    k = classes.num_classes
    side = max(4.0, 0.42 * k + 2.6)
    figure = _figure(side + 1.0, side, layout="constrained")
    axes = figure.subplots()
    # Undefined cells (a class absent from the ground truth) are drawn grey.
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.8")
    image = axes.imshow(rates, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class's pixels")
    ticks = np.arange(k)
    axes.set_xticks(ticks, classes.names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(ticks, classes.names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"confusion matrix (rows sum to 1), {title}")
    if k <= _ANNOTATE_UP_TO:
        size = 8 if k <= 12 else 7
        for (i, j), value in np.ndenumerate(rates.filled(np.nan)):
            if np.isfinite(value) and value >= 0.005:
                color = "white" if value > 0.5 else "black"
                axes.text(
                    j, i, f"{value:.0%}", ha="center", va="center", fontsize=size, color=color
                )
    return _pixels(figure)


def iou_bars(per_class_iou: list[float], classes: ClassInfo, title: str) -> np.ndarray:
    """The per-class IoU as horizontal bars in the class colours, the mean IoU dashed.

    Args:
      per_class_iou: K values in [0, 1], NaN for a class absent from truth and prediction.
      classes: the names and colours.
      title: the heading (e.g. the step).

    Returns:
      uint8 RGB.
    """
    iou = np.asarray(per_class_iou, np.float64)
    k = classes.num_classes
    figure = _figure(7.0, max(2.5, 0.3 * k + 1.3), layout="constrained")
    axes = figure.subplots()
    rows = np.arange(k)
    colors = classes.palette()[:k] / 255
    axes.barh(rows, np.nan_to_num(iou), color=colors, edgecolor="black", linewidth=0.5)
    for row, value in zip(rows, iou, strict=True):
        text = "absent" if np.isnan(value) else f"{value:.1%}"
        axes.text(min(np.nan_to_num(value), 1.0) + 0.01, row, text, va="center", fontsize=8)
    heading = f"IoU per class, {title}"
    if np.isfinite(iou).any():
        mean = float(np.nanmean(iou))
        axes.axvline(mean, color="black", linestyle="--", linewidth=1)
        heading += f" (dashed: mean {mean:.1%})"
    axes.set_yticks(rows, classes.names)
    axes.set_ylim(k - 0.5, -0.5)  # the first class on top
    axes.set_xlim(0.0, 1.15)
    axes.set_xticks(np.linspace(0, 1, 6))
    axes.set_xlabel("intersection over union")
    axes.set_title(heading)
    return _pixels(figure)


def stack(pictures: list[np.ndarray]) -> np.ndarray:
    """Pictures of different sizes as one (N, H, W, 3) batch, padded white at right and bottom."""
    height = max(p.shape[0] for p in pictures)
    width = max(p.shape[1] for p in pictures)
    batch = np.full((len(pictures), height, width, 3), 255, np.uint8)
    for out, picture in zip(batch, pictures, strict=True):
        out[: picture.shape[0], : picture.shape[1]] = picture
    return batch
