"""Analytic FLOP counts of the FCN models (multiply-adds count as two FLOPs).

The forward count sums every convolution and transposed convolution at the sizes of
docs/reference.md §2.5; a train step adds the input gradient of every layer but conv1_1 (its
input is the image) and the weight gradient of every trained layer, each as costly as the
forward of that layer.

`framed=False` counts the reference computation (what PyTorch executes); `framed=True` what
fcn-jax executes: blocks 1-3 on the maps of `fcn_jax.frame`, without most of the constant
frame.

`geometry="simple"` counts the course-notes geometry (fcn_jax/models/simple.py): every map is
the input padded to a multiple of 32, divided by the stride; fc6 is 1x1; `framed` does not
apply to it.
"""

import math

import numpy as np

from fcn_jax import frame, models
from fcn_jax.models import reference, simple


def _conv(out_h: int, out_w: int, c_in: int, c_out: int, k: int) -> int:
    return 2 * out_h * out_w * c_in * c_out * k * k


def _deconv(in_h: int, in_w: int, c: int, k: int) -> int:
    return 2 * in_h * in_w * c * c * k * k


def _block_sizes(height: int, width: int, framed: bool) -> dict[int, tuple[int, int]]:
    """The map size each VGG block's convolutions run on."""
    full_h, full_w = (
        height + 2 * reference.CONV1_1_PADDING - 2,
        width + 2 * reference.CONV1_1_PADDING - 2,
    )
    sizes = {}
    for block, _, _ in models.VGG16_BLOCKS:
        sizes[block] = (full_h, full_w)
        full_h, full_w = math.ceil(full_h / 2), math.ceil(full_w / 2)
    if framed:
        plan = frame.FramePlan.for_image(
            height,
            width,
            reference.CONV1_1_PADDING,
            tuple(n for _, n, _ in models.VGG16_BLOCKS[: reference.FRAMED_BLOCKS]),
        )
        pad_h, pad_w = plan.rows.conv1_1_padding, plan.cols.conv1_1_padding
        sizes[1] = (height + 2 * pad_h - 2, width + 2 * pad_w - 2)
        for block in range(2, reference.FRAMED_BLOCKS + 1):
            rows, cols = plan.rows.after_pool[block - 1][1], plan.cols.after_pool[block - 1][1]
            sizes[block] = (rows.size, cols.size)
    return sizes


def simple_layer_flops(name: str, height: int, width: int, num_classes: int = 21) -> dict[str, int]:
    """Forward FLOPs of each layer of the simple-geometry model `name` (no at-once)."""
    h, w = simple.padded_side(height), simple.padded_side(width)
    flops, c_in, pools = {}, 3, {}
    for block, num_convs, channels in models.VGG16_BLOCKS:
        for i in range(1, num_convs + 1):
            flops[f"conv{block}_{i}"] = _conv(h, w, c_in, channels, 3)
            c_in = channels
        h, w = h // 2, w // 2
        pools[block] = (h, w)
    flops["fc6"] = _conv(h, w, 512, models.FC_CHANNELS, 1)
    flops["fc7"] = _conv(h, w, models.FC_CHANNELS, models.FC_CHANNELS, 1)
    flops["score_fr"] = _conv(h, w, models.FC_CHANNELS, num_classes, 1)
    # Upsampling by f from an n x m map: k = 2f taps per input pixel (the padding p = f/2
    # only crops the output).
    if name == "fcn32s":
        flops["upscore"] = _deconv(h, w, num_classes, 64)
        return flops
    flops["upscore2"] = _deconv(h, w, num_classes, 4)
    flops["score_pool4"] = _conv(*pools[4], 512, num_classes, 1)
    if name == "fcn16s":
        flops["upscore16"] = _deconv(*pools[4], num_classes, 32)
        return flops
    flops["upscore_pool4"] = _deconv(*pools[4], num_classes, 4)
    flops["score_pool3"] = _conv(*pools[3], 256, num_classes, 1)
    flops["upscore8"] = _deconv(*pools[3], num_classes, 16)
    return flops


def layer_flops(
    name: str,
    height: int,
    width: int,
    num_classes: int = 21,
    framed: bool = False,
    geometry: str = "reference",
) -> dict[str, int]:
    """Returns the forward FLOPs of each layer of model `name` for one `height` x `width` image."""
    if geometry == "simple":
        return simple_layer_flops(name, height, width, num_classes)
    flops = {}
    sizes = _block_sizes(height, width, framed)
    c_in = 3
    pools = {}
    for block, num_convs, channels in models.VGG16_BLOCKS:
        h, w = sizes[block]
        for i in range(1, num_convs + 1):
            flops[f"conv{block}_{i}"] = _conv(h, w, c_in, channels, 3)
            c_in = channels
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        pools[block] = (h, w, channels)
    h, w = h - 6, w - 6  # fc6 is a 7x7 VALID convolution
    flops["fc6"] = _conv(h, w, 512, models.FC_CHANNELS, 7)
    flops["fc7"] = _conv(h, w, models.FC_CHANNELS, models.FC_CHANNELS, 1)
    flops["score_fr"] = _conv(h, w, models.FC_CHANNELS, num_classes, 1)
    stride = {"fcn32s": 32, "fcn16s": 16}.get(name, 8)
    if stride == 32:
        flops["upscore"] = _deconv(h, w, num_classes, 64)
        return flops
    flops["upscore2"] = _deconv(h, w, num_classes, 4)
    flops["score_pool4"] = _conv(*pools[4][:2], 512, num_classes, 1)
    h, w = 2 * h + 2, 2 * w + 2
    if stride == 16:
        flops["upscore16"] = _deconv(h, w, num_classes, 32)
        return flops
    flops["upscore_pool4"] = _deconv(h, w, num_classes, 4)
    flops["score_pool3"] = _conv(*pools[3][:2], 256, num_classes, 1)
    flops["upscore8"] = _deconv(2 * h + 2, 2 * w + 2, num_classes, 16)
    return flops


def forward_flops(
    name: str,
    height: int,
    width: int,
    num_classes: int = 21,
    framed: bool = False,
    geometry: str = "reference",
) -> int:
    """Forward FLOPs of one image."""
    counts = layer_flops(name, height, width, num_classes, framed, geometry)
    return int(np.sum(list(counts.values())))


def train_flops(
    name: str,
    height: int,
    width: int,
    num_classes: int = 21,
    framed: bool = False,
    geometry: str = "reference",
) -> int:
    """Forward + backward FLOPs of one image with frozen upsampling (the reference recipe)."""
    total = 0
    for layer, fwd in layer_flops(name, height, width, num_classes, framed, geometry).items():
        input_grad = 0 if layer == "conv1_1" else fwd
        weight_grad = 0 if layer.startswith("upscore") else fwd
        total += fwd + input_grad + weight_grad
    return total
