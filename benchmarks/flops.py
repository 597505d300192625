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
apply to it. `winograd=True` counts what fcn-jax executes with the `winograd` fast path: the
3x3 convolutions after conv1_1 that run Winograd multiply 16 times per 2x2 outputs where the
direct convolution multiplies 36 times (fcn_jax/winograd.py; the transforms' additions are
not counted). Those are every kernel gradient, the input gradients whose output gradient
has at least `fcn_jax.winograd.MIN_CHANNELS_UNDER_GRAD` channels and the forward passes
whose input has at least `fcn_jax.winograd.MIN_CHANNELS` (`MIN_CHANNELS_UNDER_GRAD` in a
train step; in the reference geometry only where nothing is differentiated: inference, not
the train step).
"""

import math
from typing import Any

import numpy as np

from fcn_jax import frame, models
from fcn_jax.models import reference, simple
from fcn_jax.winograd import MIN_CHANNELS, MIN_CHANNELS_UNDER_GRAD


def _conv(out_h: int, out_w: int, c_in: int, c_out: int, k: int) -> int:
    return 2 * out_h * out_w * c_in * c_out * k * k


def _deconv(in_h: int, in_w: int, c: int, k: int) -> int:
    return 2 * in_h * in_w * c * c * k * k


def _block_sizes(height: int, width: int, framed: bool) -> dict[int, tuple[int, int]]:
    """The map size each VGG block's convolutions run on, reference geometry."""
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


def _simple_block_sizes(height: int, width: int) -> dict[int, tuple[int, int]]:
    """The map size each VGG block's convolutions run on, course-notes geometry: the input
    padded to a multiple of 32, halved by each pooling before the block."""
    h, w = simple.padded_side(height), simple.padded_side(width)
    return {block: (h >> (block - 1), w >> (block - 1)) for block, _, _ in models.VGG16_BLOCKS}


def _winograd_layers() -> dict[str, tuple[int, int]]:
    """(input channels, output channels) of each 3x3 convolution `winograd` computes."""
    c_in, layers = 3, {}
    for block, num_convs, channels in models.VGG16_BLOCKS:
        for i in range(1, num_convs + 1):
            if (block, i) != (1, 1):
                layers[f"conv{block}_{i}"] = (c_in, channels)
            c_in = channels
    return layers


def _winograd(flops: int, deep_enough: bool = True) -> int:
    """A direct convolution's `flops` as Winograd counts them, where it runs Winograd.

    Kernel gradients always do; forward passes and input gradients where their correlation's
    input is `deep_enough` (`MIN_CHANNELS`, or `MIN_CHANNELS_UNDER_GRAD` where
    differentiated).
    """
    return flops * 16 // 36 if deep_enough else flops


def _vgg_flops(
    sizes: dict[int, tuple[int, int]],
) -> tuple[dict[str, int], dict[int, tuple[int, int]]]:
    """The 3x3 convolutions' FLOPs of each VGG block, and each block's ceil-mode pooled size."""
    flops, c_in, pools = {}, 3, {}
    for block, num_convs, channels in models.VGG16_BLOCKS:
        h, w = sizes[block]
        for i in range(1, num_convs + 1):
            flops[f"conv{block}_{i}"] = _conv(h, w, c_in, channels, 3)
            c_in = channels
        pools[block] = (math.ceil(h / 2), math.ceil(w / 2))
    return flops, pools


def _head_flops(
    name: str,
    score: tuple[int, int],
    pools: dict[int, tuple[int, int]],
    fuse16: tuple[int, int],
    fuse8: tuple[int, int],
    num_classes: int,
) -> dict[str, int]:
    """The skip and upsampling layers' FLOPs, from the sizes of their inputs.

    score: the size of `score_fr`'s map; fuse16 / fuse8: the sizes of the stride-16 and
    stride-8 fused scores. Both geometries upsample by f with a 2f kernel (the simple one's
    padding f/2 only crops the output).
    """
    if name == "fcn32s":
        return {"upscore": _deconv(*score, num_classes, 64)}
    flops = {
        "upscore2": _deconv(*score, num_classes, 4),
        "score_pool4": _conv(*pools[4], 512, num_classes, 1),
    }
    if name == "fcn16s":
        return flops | {"upscore16": _deconv(*fuse16, num_classes, 32)}
    return flops | {
        "upscore_pool4": _deconv(*fuse16, num_classes, 4),
        "score_pool3": _conv(*pools[3], 256, num_classes, 1),
        "upscore8": _deconv(*fuse8, num_classes, 16),
    }


def layer_flops(
    name: str,
    height: int,
    width: int,
    num_classes: int = 21,
    framed: bool = False,
    geometry: str = "reference",
    winograd: bool = False,
    differentiated: bool = False,
) -> dict[str, int]:
    """Returns the forward FLOPs of each layer of model `name` for one `height` x `width` image.

    `framed` applies to the reference geometry only, `winograd` (the module docstring) to
    the forward passes, as in a train step if `differentiated`; the simple geometry has no
    at-once variant.
    """
    if geometry == "simple":
        flops, pools = _vgg_flops(_simple_block_sizes(height, width))
        fc, fc_kernel = pools[5], 1
    else:
        flops, pools = _vgg_flops(_block_sizes(height, width, framed))
        fc, fc_kernel = (pools[5][0] - 6, pools[5][1] - 6), 7  # fc6: a 7x7 VALID convolution
    if winograd:
        min_channels = MIN_CHANNELS_UNDER_GRAD if differentiated else MIN_CHANNELS
        for layer, (c_in, _) in _winograd_layers().items():
            flops[layer] = _winograd(flops[layer], c_in >= min_channels)
    flops["fc6"] = _conv(*fc, 512, models.FC_CHANNELS, fc_kernel)
    flops["fc7"] = _conv(*fc, models.FC_CHANNELS, models.FC_CHANNELS, 1)
    flops["score_fr"] = _conv(*fc, models.FC_CHANNELS, num_classes, 1)
    if geometry == "simple":  # each upsampling gives exactly the skip's size
        fuse16, fuse8 = pools[4], pools[3]
    else:  # each upsampling gives 2n + 2 (kernel 4, stride 2), cropped later
        fuse16 = (2 * fc[0] + 2, 2 * fc[1] + 2)
        fuse8 = (2 * fuse16[0] + 2, 2 * fuse16[1] + 2)
    return flops | _head_flops(name, fc, pools, fuse16, fuse8, num_classes)


def forward_flops(name: str, height: int, width: int, num_classes: int = 21, **options: Any) -> int:
    """Forward FLOPs of one image; `options` (`framed`, `geometry`, `winograd`) as for
    `layer_flops`."""
    return int(np.sum(list(layer_flops(name, height, width, num_classes, **options).values())))


def train_flops(
    name: str,
    height: int,
    width: int,
    num_classes: int = 21,
    winograd: bool = False,
    recompute_conv1_1: bool = False,
    **options: Any,
) -> int:
    """Forward + backward FLOPs of one image with frozen upsampling (the reference recipe).

    `winograd` (the module docstring) and `options` (`framed`, `geometry`) as for
    `layer_flops`; `recompute_conv1_1` (the fast path of that name) counts conv1_1's forward
    pass three times (block 1's recomputation and conv1_1's own for its backward pass) and
    block 1's forward passes as not differentiated (they run in a function whose backward
    pass recomputes them): conv1_2's is then XLA's.
    """
    winograd_layers = _winograd_layers() if winograd else {}
    direct = layer_flops(name, height, width, num_classes, **options)
    # Differentiated, the reference geometry's forward passes are XLA's (its max-pooling ties).
    winograd_forward = winograd and options.get("geometry") == "simple"
    forward = layer_flops(
        name, height, width, num_classes, winograd=winograd_forward, differentiated=True, **options
    )
    if recompute_conv1_1:
        inference = layer_flops(
            name, height, width, num_classes, winograd=winograd_forward, **options
        )
        forward["conv1_2"] = inference["conv1_2"]
        forward["conv1_1"] += 2 * direct["conv1_1"]
    total = int(np.sum(list(forward.values())))
    for layer, flops in direct.items():
        input_grad = 0 if layer == "conv1_1" else flops
        weight_grad = 0 if layer.startswith("upscore") else flops
        if layer in winograd_layers:
            # The input gradient correlates the output gradient: C_out channels deep.
            c_out = winograd_layers[layer][1]
            input_grad = _winograd(input_grad, c_out >= MIN_CHANNELS_UNDER_GRAD)
            weight_grad = _winograd(weight_grad)
        total += input_grad + weight_grad
    return total
