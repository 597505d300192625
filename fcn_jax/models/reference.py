"""The reference geometry: FCN-32s, 16s, 8s and 8s at-once as in the paper's Caffe models.

Every layer, offset and initialisation follows docs/reference.md (cited as §N below).
Layer names follow the reference (`conv1_1` ... `fc7`, `score_fr`, `score_pool4`, `upscore2`...)
so a converted checkpoint maps onto the parameters by name.

Variables of a model live in two collections:

* ``params``: everything the optimiser trains (convolutions, fc6/fc7, score layers).
* ``upsampling``: the bilinear transposed-convolution kernels, frozen as in the reference
  (§2.2: ``lr_mult: 0``). Keeping them out of ``params`` means ``jax.grad`` over ``params``
  neither computes nor applies a gradient for them. With ``learnable_upsampling=True`` they
  move into ``params`` instead.

Build a model with `fcn_jax.models.get_model(name, num_classes)`, which also chooses the
speed tricks (`fcn_jax.fast_paths`) for the platform it will run on.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax import frame
from fcn_jax.layers import (
    HalfDropout,
    MatmulGradsConv,
    crop,
    plain_relu_max_pool_ceil,
    relu_max_pool_ceil,
    zero_beyond,
)
from fcn_jax.models.common import FC_CHANNELS, VGG16_BLOCKS, FCNModel

# conv1_1 pads by 100 so that every crop offset is non-negative and fc6 always has a 7x7
# input, whatever the image size (§2.4).
CONV1_1_PADDING = 100
# Blocks whose maps still have a constant frame that is cheaper to skip (fcn_jax.frame):
# in block 4 the frame is narrower than its three convolutions reach.
FRAMED_BLOCKS = 3
_CONVS = tuple(n for _, n, _ in VGG16_BLOCKS)
# Fixed scalings of the skip inputs in FCN-8s at-once (§2.3).
ATONCE_POOL4_SCALE = 0.01
ATONCE_POOL3_SCALE = 0.0001


class FCN(FCNModel):
    """One FCN head on the VGG16 backbone (§2.3), chosen by `stride`.

    Attributes (besides those of `FCNModel`):
      skip_scales: fixed multipliers of (pool4, pool3) before their score layers; (1, 1) for
        the staged models, (0.01, 0.0001) for FCN-8s at-once (§2.3).
      framed_blocks: with `fast.frame`, how many blocks skip the constant frame around the
        image (fcn_jax.frame); the values are the same for any number up to FRAMED_BLOCKS.
    """

    skip_scales: tuple[float, float] = (1.0, 1.0)
    framed_blocks: int = FRAMED_BLOCKS

    def _conv(self, features: int, size: int, padding: Any, matmul_grads: bool, name: str):
        use_matmul = matmul_grads and self.fast.matmul_grads
        if size == 3 and not matmul_grads:
            # XLA's forward pass where differentiated: conv1_1's padding makes a frame of
            # equal values (§2.4), whose max-pooling ties send the gradient to each window's
            # first maximum (as Caffe and XLA do). Winograd's forward rounding depends on the
            # position in its tile, so it would break those ties elsewhere and move the
            # frame's gradients (conv1_1's kernel gradient by 5% at 37x45,
            # tests/test_fast_paths.py). Inference computes no gradients: Winograd's there.
            return self.backbone_conv(features, padding, name, xla_forward_under_grad=True)
        conv = MatmulGradsConv if use_matmul else nn.Conv
        return conv(
            features,
            (size, size),
            padding=padding,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )

    def _backbone(
        self, x: jax.Array, sizes: jax.Array | None, train: bool
    ) -> tuple[dict[str, jax.Array], jax.Array | None]:
        """VGG16 as in §1 rows 1-22: the pool3, pool4 and fc7 activations and fc7's extent.

        With `sizes`, each example's maps are zeroed past the extent its own-size maps have
        (§2.5), which is what the zero padding of its own convolutions and the clipped
        windows of its own ceil pooling read there: inside that extent every value is the
        one the image alone gives, whatever the canvas around it.
        """
        framed = self.framed_blocks if self.fast.frame else 0
        plan = frame.CanvasPlan(*x.shape[1:3], CONV1_1_PADDING, _CONVS[:framed], sizes)
        pool = relu_max_pool_ceil if self.fast.fused_pool else plain_relu_max_pool_ceil
        x, extent = zero_beyond(x, sizes), plan.conv1_1_extent()
        pools = {}
        for block, num_convs, channels in VGG16_BLOCKS:
            for i in range(1, num_convs + 1):
                first = (block, i) == (1, 1)
                padding = plan.conv1_1_padding if first else 1
                x = self._conv(self.channels(channels), 3, padding, first, f"conv{block}_{i}")(x)
                # The block's last ReLU is fused into its pooling (relu_max_pool_ceil).
                x = zero_beyond(x if i == num_convs else nn.relu(x), extent)
            x, extent = pool(x), _ceil_half(extent)
            if block <= framed:
                x, extent = plan.after_pool(x, block)
            pools[block] = x
        # fc6 (7x7) / fc7 (1x1): the fully connected layers "convolutionalised" (§1 rows
        # 19-22); dropout is element-wise as in Caffe, not channel-wise like PyTorch's
        # Dropout2d (§1). A VALID convolution's outputs inside the extent read only inputs
        # inside it, so no zeroing is needed from here to the scores.
        for name, size in (("fc6", 7), ("fc7", 1)):
            x = self._conv(self.channels(FC_CHANNELS), size, "VALID", True, name)(x)
            x = HalfDropout(deterministic=not train)(nn.relu(x))
        extent = None if extent is None else extent - 6
        return {"pool3": pools[3], "pool4": pools[4], "fc7": x}, extent

    def _score(self, name: str) -> nn.Conv:
        # Score layers start at exactly zero: Caffe's default filler (§2.1, §3.1).
        return nn.Conv(
            self.num_classes,
            (1, 1),
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )

    def _upsample(self, factor: int, name: str, x: jax.Array, extent: jax.Array | None):
        """Deconvolution with k = 2 * stride, no padding, no bias, bilinear init (§2.2, §2.3).

        Returns the upsampled map and its extent, (extent - 1) * factor + 2 * factor (§2.1).
        """
        layer = self.upsampling_layer(factor, name)
        out = layer(zero_beyond(x, extent))
        return out, None if extent is None else (extent + 1) * factor

    @nn.compact
    def __call__(
        self, images: jax.Array, sizes: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """Computes per-pixel class scores.

        Args:
          images: preprocessed images (N, H, W, 3), any H, W >= 1.
          sizes: optional int32 (N, 2): the (height, width) of each example's image, placed
            in the top-left corner of its canvas (1 <= height <= H, 1 <= width <= W).
            Inside that region the logits are those of the image run alone at its own size;
            outside it they are meaningless. None: every image fills the whole input.
          train: enables dropout.

        Returns:
          float32 logits (N, H, W, num_classes).
        """
        self.check_stride()
        height, width = images.shape[1:3]
        if sizes is not None:
            sizes = jnp.clip(jnp.asarray(sizes, jnp.int32), 1, jnp.array([height, width]))
        feats, extent = self._backbone(images.astype(self.dtype), sizes, train)
        score = self._score("score_fr")(feats["fc7"])
        if self.stride == 32:
            upscore, _ = self._upsample(32, "upscore", score, extent)
            return crop(upscore, 19, height, width).astype(jnp.float32)

        pool4_scale, pool3_scale = self.skip_scales
        # FCN-16s / 8s: 2x upsampling fused with the pool4 scores (offset 5, §2.3-2.4).
        upscore2, extent = self._upsample(2, "upscore2", score, extent)
        score_pool4 = self._score("score_pool4")(feats["pool4"] * pool4_scale)
        fuse = upscore2 + crop(score_pool4, 5, *upscore2.shape[1:3])
        if self.stride == 16:
            upscore16, _ = self._upsample(16, "upscore16", fuse, extent)
            return crop(upscore16, 27, height, width).astype(jnp.float32)

        # FCN-8s: another 2x, fused with the pool3 scores (offset 9), then 8x (offset 31).
        upscore_pool4, extent = self._upsample(2, "upscore_pool4", fuse, extent)
        score_pool3 = self._score("score_pool3")(feats["pool3"] * pool3_scale)
        fuse = upscore_pool4 + crop(score_pool3, 9, *upscore_pool4.shape[1:3])
        upscore8, _ = self._upsample(8, "upscore8", fuse, extent)
        return crop(upscore8, 31, height, width).astype(jnp.float32)


def _ceil_half(extent: jax.Array | None) -> jax.Array | None:
    """The extent after 2x2 stride-2 pooling with ceil rounding (§2.5)."""
    return None if extent is None else (extent + 1) // 2


VARIANTS: dict[str, Callable[..., FCN]] = {
    "fcn32s": functools.partial(FCN, stride=32),
    "fcn16s": functools.partial(FCN, stride=16),
    "fcn8s": functools.partial(FCN, stride=8),
    "fcn8s_atonce": functools.partial(
        FCN, stride=8, skip_scales=(ATONCE_POOL4_SCALE, ATONCE_POOL3_SCALE)
    ),
}
