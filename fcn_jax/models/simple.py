"""The course-notes FCN: a simplified geometry of FCN-32s/16s/8s on VGG16.

Many people first meet FCN in course notes that simplify the paper's Caffe model
(docs/reference.md §2 describes that reference geometry, `fcn_jax.models.reference.FCN`):

* the VGG16 convolutions pad by 1 everywhere (no 100-pixel padding of conv1_1) and the 2x2
  max pooling needs no ceil rounding, because every side is a multiple of 32;
* fc6 and fc7 are 1x1 convolutions (512 -> 4096 -> 4096), each followed by ReLU and dropout;
* `score_fr` is a 1x1 convolution to the classes;
* upsampling is PyTorch's `ConvTranspose2d(C, C, k, stride=s, padding=p)` with k = 2s and
  p = s / 2, which gives exactly s times its input: FCN-32s `upscore` (64, 32, 16); FCN-16s
  `upscore2` (4, 2, 1) fused with pool4's scores, then `upscore16` (32, 16, 8); FCN-8s adds
  `upscore_pool4` (4, 2, 1) fused with pool3's scores, then `upscore8` (16, 8, 4).

There is no crop: every map of an H x W input (H, W multiples of 32) is aligned with the
input, and the logits are H x W. Layer names are the reference family's where the roles match,
so `fcn_jax.weights.load_vgg16(..., geometry="simple")` and `stage_variables` work by name.

Sizes. An input whose sides are not multiples of 32 is padded with zeros at the bottom/right to
the next multiple of 32 and the logits are cropped back to H x W. With `sizes` (an (N, 2)
array of each image's height and width, placed top-left on the canvas) each example's logits
inside its own H_i x W_i equal those of running it alone: the input is zeroed beyond the
image, and every activation beyond the example's padded extent (ceil(H_i / 32) * 32 / f at
stride f) is zeroed before each 3x3 convolution and each deconvolution, so nothing from the
rest of the canvas reaches the image. The pooling windows never straddle an extent (every
extent is even), and fc6, fc7 and the score layers are 1x1.

Variables live in `params` and, for the frozen bilinear deconvolutions, `upsampling`, exactly
as in the reference family (`fcn_jax.models.common`).

Build one with `fcn_jax.models.get_model(name, num_classes, geometry="simple")`.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.layers import (
    HalfDropout,
    MatmulGradsConv,
    plain_relu_max_pool_floor,
    recomputed_in_backward,
    relu_max_pool_floor,
    zero_beyond,
)
from fcn_jax.models.common import FC_CHANNELS, VGG16_BLOCKS, FCNModel

# Every side is padded to a multiple of this: the output stride of pool5.
MULTIPLE = 32
# Layers VGG16 cannot initialise in this geometry: its fc6 is a 7x7 layer (25088 inputs), and
# its fc7 expects that fc6's features. They start from He (Kaiming) normal, variance
# 2 / fan-in, the initialiser made for layers followed by a ReLU (He et al., 2015): it keeps
# the activations' scale through the two new ReLU layers, where Flax's default (LeCun normal,
# 1 / fan-in) would halve their variance at each. Biases start at zero.
FRESH_LAYERS = ("fc6", "fc7")
FC_KERNEL_INIT = nn.initializers.he_normal()


def fresh_init(key: jax.Array, leaf: str, shape: tuple[int, ...]) -> jax.Array:
    """The initial value of a `FRESH_LAYERS` tensor: He normal kernel, zero bias."""
    if leaf == "kernel":
        return FC_KERNEL_INIT(key, shape, jnp.float32)
    return jnp.zeros(shape, jnp.float32)


def padded_side(side: int) -> int:
    """The side an image of `side` pixels is run at: the next multiple of 32."""
    return MULTIPLE * math.ceil(side / MULTIPLE)


class SimpleFCN(FCNModel):
    """The course-notes FCN (module docstring), with a 32s, 16s or 8s head chosen by `stride`.

    Its attributes are those of `FCNModel`. The speed tricks (`fast`) apply as in the
    reference geometry, but for the frame, which this geometry does not have: fused ReLU and
    (floor) pooling, matrix-product gradients for conv1_1, fc6 and fc7, ordered gradients for
    the other 3x3 convolutions, and the sub-pixel deconvolutions; and those 3x3 convolutions
    as Winograd F(2x2, 3x3) forwards too, also where differentiated, where the reference
    geometry keeps XLA's forward pass (`FCNModel.backbone_conv`). Its own trick,
    `recompute_conv1_1`, recomputes conv1_1's full-size output in the backward pass instead
    of keeping it (`_first_block`).
    """

    def _conv(
        self, features: int, size: int, name: str, matmul_grads: bool = False, **kwargs: Any
    ) -> nn.Conv:
        """A 3x3 (padding 1) or 1x1 convolution; `matmul_grads` marks conv1_1, fc6 and fc7."""
        if size == 3 and not matmul_grads:
            return self.backbone_conv(features, 1, name)
        conv = MatmulGradsConv if matmul_grads and self.fast.matmul_grads else nn.Conv
        return conv(
            features,
            (size, size),
            padding=size // 2,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
            **kwargs,
        )

    def _backbone(
        self, x: jax.Array, extents: jax.Array | None, train: bool
    ) -> dict[str, jax.Array]:
        """VGG16 with padding 1 and 2x2 pooling, then the 1x1 fc6/fc7; pool3, pool4, fc7."""
        pool = relu_max_pool_floor if self.fast.fused_pool else plain_relu_max_pool_floor
        pools = {}
        for block, num_convs, channels in VGG16_BLOCKS:
            level = extents if extents is None else extents // 2 ** (block - 1)
            if block == 1:
                x = self._first_block(x, level)
            else:
                convs = [
                    self._conv(self.channels(channels), 3, f"conv{block}_{i}")
                    for i in range(1, num_convs + 1)
                ]
                x = _block(convs, x, level)
            # The block's last ReLU is fused into its pooling (relu_max_pool_floor).
            x = pool(x)
            pools[block] = x
        for name in FRESH_LAYERS:
            fc = self._conv(
                self.channels(FC_CHANNELS), 1, name, matmul_grads=True, kernel_init=FC_KERNEL_INIT
            )
            x = nn.relu(fc(x))
            x = HalfDropout(deterministic=not train)(x)
        return {"pool3": pools[3], "pool4": pools[4], "fc7": x}

    def _first_block(self, x: jax.Array, level: jax.Array | None) -> jax.Array:
        """conv1_1 (on the masked input), ReLU, conv1_2: block 1 before its last ReLU.

        With `fast.recompute_conv1_1` its backward pass recomputes conv1_1's output from the
        input instead of keeping it (`recomputed_in_backward`), and conv1_1's own backward
        pass recomputes it again.
        """
        channels = self.channels(VGG16_BLOCKS[0][2])
        convs = [self._conv(channels, 3, "conv1_1", True), self._conv(channels, 3, "conv1_2")]
        if not self.fast.recompute_conv1_1 or self.is_initializing():
            return _block(convs, x, level, first=True)
        conv1_1, conv1_2 = (conv.clone(parent=None) for conv in convs)

        def first_conv(x, params):
            return nn.relu(conv1_1.apply({"params": params}, x))

        def block(x, params, level):
            # conv1_1 and its ReLU are recomputed once more for their own backward pass,
            # after conv1_2's input gradient: kept from the block's recomputation, conv1_1's
            # output would be alive beside that gradient, at the step's peak.
            x = recomputed_in_backward(first_conv)(x, params[0])
            return _block([functools.partial(conv1_2.apply, {"params": params[1]})], x, level)

        params = [self.variables["params"][conv.name] for conv in convs]
        return recomputed_in_backward(block)(x, params, level)

    def _score(self, name: str) -> nn.Conv:
        # Zero-initialised like the reference family's score layers (§3).
        return self._conv(self.num_classes, 1, name, kernel_init=nn.initializers.zeros)

    def _upsample(
        self, x: jax.Array, factor: int, name: str, extents: jax.Array | None, stride: int
    ) -> jax.Array:
        """PyTorch's ConvTranspose2d(k=2f, stride=f, padding=f/2): exactly f times the input.

        Args:
          x: a map at `stride` pixels of the input per position.
          factor: the upsampling factor f.
          name: the layer's name.
          extents: the examples' padded extents in input pixels, or None.
          stride: the stride of `x`.
        """
        x = zero_beyond(x, extents if extents is None else extents // stride)
        up = self.upsampling_layer(factor, name)(x)
        # VALID gives (n - 1) f + 2f; PyTorch's padding f/2 drops f/2 from each side.
        crop = factor // 2
        return up[:, crop : up.shape[1] - crop, crop : up.shape[2] - crop]

    @nn.compact
    def __call__(
        self, images: jax.Array, sizes: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """Computes per-pixel class scores.

        Args:
          images: preprocessed images (N, H, W, 3), any H, W >= 1; sides that are not
            multiples of 32 are zero-padded to the next multiple and the logits cropped back.
          sizes: optional int (N, 2) (height, width) of each image, placed top-left; inside
            it the logits equal those of the image run alone (module docstring). Values must
            lie in [1, H] x [1, W]; they cannot be checked under jit.
          train: enables dropout.

        Returns:
          float32 logits (N, H, W, num_classes).
        """
        self.check_stride()
        height, width = images.shape[1:3]
        x = images.astype(self.dtype)
        x = jnp.pad(
            x, ((0, 0), (0, padded_side(height) - height), (0, padded_side(width) - width), (0, 0))
        )
        extents = None
        if sizes is not None:
            sizes = jnp.asarray(sizes, jnp.int32)
            x = zero_beyond(x, sizes)
            extents = MULTIPLE * ((sizes + MULTIPLE - 1) // MULTIPLE)
        feats = self._backbone(x, extents, train)
        score = self._score("score_fr")(feats["fc7"])
        upsample = functools.partial(self._upsample, extents=extents)
        if self.stride == 32:
            out = upsample(score, 32, "upscore", stride=32)
        else:
            upscore2 = upsample(score, 2, "upscore2", stride=32)
            fuse = upscore2 + self._score("score_pool4")(feats["pool4"])
            if self.stride == 16:
                out = upsample(fuse, 16, "upscore16", stride=16)
            else:
                upscore_pool4 = upsample(fuse, 2, "upscore_pool4", stride=16)
                fuse = upscore_pool4 + self._score("score_pool3")(feats["pool3"])
                out = upsample(fuse, 8, "upscore8", stride=8)
        return out[:, :height, :width].astype(jnp.float32)


def _block(
    convs: list[Callable[[jax.Array], jax.Array]],
    x: jax.Array,
    level: jax.Array | None,
    first: bool = False,
) -> jax.Array:
    """A VGG16 block's convolutions with ReLUs between them, each input masked beyond `level`.

    Block 1's input (`first`) is masked by the caller. The block's last ReLU is left to its
    pooling.
    """
    for i, conv in enumerate(convs):
        if i or not first:
            x = zero_beyond(x, level)
        x = conv(x)
        if i < len(convs) - 1:
            x = nn.relu(x)
    return x


VARIANTS: dict[str, Callable[..., SimpleFCN]] = {
    "fcn32s": functools.partial(SimpleFCN, stride=32),
    "fcn16s": functools.partial(SimpleFCN, stride=16),
    "fcn8s": functools.partial(SimpleFCN, stride=8),
}
