"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once on a VGG16 backbone, as Flax Linen modules.

Every layer, offset and initialisation follows docs/reference.md (cited as §N below).
Layer names follow the reference (`conv1_1` ... `fc7`, `score_fr`, `score_pool4`, `upscore2`...)
so a converted checkpoint maps onto the parameters by name.

Variables of a model live in two collections:

* ``params``: everything the optimiser trains (convolutions, fc6/fc7, score layers).
* ``upsampling``: the bilinear transposed-convolution kernels, frozen as in the reference
  (§2.2: ``lr_mult: 0``). Keeping them out of ``params`` means ``jax.grad`` over ``params``
  neither computes nor applies a gradient for them. With ``learnable_upsampling=True`` they
  move into ``params`` instead.

Example:
    model = get_model("fcn8s", num_classes=21)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    logits = model.apply(variables, images, train=False)  # (N, H, W, 21)
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax import fast_paths, frame
from fcn_jax.layers import (
    SubpixelConvTranspose,
    conv_with_matmul_grads,
    crop,
    plain_relu_max_pool_ceil,
    relu_max_pool_ceil,
    zero_beyond,
)

# (block, convs per block, output channels) of VGG16 configuration D (§1).
VGG16_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 2, 64),
    (2, 2, 128),
    (3, 3, 256),
    (4, 3, 512),
    (5, 3, 512),
)
FC_CHANNELS = 4096
# conv1_1 pads by 100 so that every crop offset is non-negative and fc6 always has a 7x7
# input, whatever the image size (§2.4).
CONV1_1_PADDING = 100
# Blocks whose maps still have a constant frame that is cheaper to skip (fcn_jax.frame):
# in block 4 the frame is narrower than its three convolutions reach.
FRAMED_BLOCKS = 3
_CONVS = tuple(n for _, n, _ in VGG16_BLOCKS)
DROPOUT_RATE = 0.5  # §1, drop6/drop7.
# Fixed scalings of the skip inputs in FCN-8s at-once (§2.3).
ATONCE_POOL4_SCALE = 0.01
ATONCE_POOL3_SCALE = 0.0001
UPSAMPLING_COLLECTION = "upsampling"


def bilinear_kernel_1d(size: int) -> np.ndarray:
    """Returns the 1-D bilinear interpolation profile of §2.2 for a kernel of `size` taps."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = np.arange(size, dtype=np.float64)
    return 1.0 - np.abs(taps - center) / factor


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """Returns the channel-diagonal bilinear upsampling kernel of §2.2 in Flax layout.

    Args:
      size: kernel size k (the FCN heads use k = 2 * stride).
      channels: number of input (= output) channels; there is no cross-channel mixing.

    Returns:
      float32 array of shape (k, k, channels, channels), the layout of `nn.ConvTranspose`.
      The 2-D filter is symmetric, so it is the same in the flipped and unflipped conventions.
    """
    profile = bilinear_kernel_1d(size)
    filt = np.outer(profile, profile)
    kernel = np.zeros((size, size, channels, channels), dtype=np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = filt
    return kernel


def _bilinear_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Flax initialiser producing `bilinear_kernel` for a (k, k, C, C) kernel shape."""
    del key
    size, size_w, in_channels, out_channels = shape
    if size != size_w or in_channels != out_channels:
        # Same restriction as the reference's surgery.interp (§2.2).
        raise ValueError(f"bilinear init needs a square kernel and in == out channels, got {shape}")
    return jnp.asarray(bilinear_kernel(size, in_channels), dtype)


def _frozen_params(module_cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """Wraps `module_cls` so its `params` are stored in the `upsampling` collection instead."""
    return nn.map_variables(
        module_cls,
        mapped_collections=["params", UPSAMPLING_COLLECTION],
        trans_in_fn=lambda v: {"params": v.get(UPSAMPLING_COLLECTION, {})},
        trans_out_fn=lambda v: {UPSAMPLING_COLLECTION: v.get("params", {})},
        # mutable (not init=True): init=True breaks `apply(..., mutable=[...])` in Flax 0.12.
        # The kernel is still only written when the caller lets `upsampling` be mutable.
        mutable=True,
    )


_FrozenConvTranspose = _frozen_params(nn.ConvTranspose)
_FrozenSubpixelConvTranspose = _frozen_params(SubpixelConvTranspose)


class FCN(nn.Module):
    """One FCN head on the VGG16 backbone (§2.3), chosen by `stride`.

    Attributes:
      num_classes: number of output classes (21 for PASCAL VOC).
      stride: 32, 16 or 8: FCN-32s, FCN-16s or FCN-8s.
      skip_scales: fixed multipliers of (pool4, pool3) before their score layers; (1, 1) for
        the staged models, (0.01, 0.0001) for FCN-8s at-once (§2.3).
      width: backbone channel multiplier (1.0 = reference).
      learnable_upsampling: train the transposed-convolution kernels (the reference freezes
        them, §2.2); when False they live in the `upsampling` collection.
      dtype: compute dtype (float32, or bfloat16 on accelerators); parameters stay float32
        and the returned logits are float32.
      fast_paths: 'auto' | 'all' | 'none': which speed tricks of `fcn_jax.fast_paths` run
        ('none' is the plain path that reads like docs/reference.md). Results are the same.
    """

    num_classes: int = 21
    stride: int = 8
    skip_scales: tuple[float, float] = (1.0, 1.0)
    width: float = 1.0
    learnable_upsampling: bool = False
    dtype: Any = jnp.float32
    fast_paths: str = "auto"

    def _channels(self, channels: int) -> int:
        return max(1, int(round(channels * self.width)))

    def _fast(self, trick: str) -> bool:
        return fast_paths.enabled(self.fast_paths, trick)

    def _conv(self, features: int, size: int, padding: Any, matmul_grads: bool, name: str):
        use_matmul = matmul_grads and self._fast("matmul_grads")
        return nn.Conv(
            features,
            (size, size),
            padding=padding,
            conv_general_dilated=conv_with_matmul_grads if use_matmul else None,
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
        framed = FRAMED_BLOCKS if self._fast("frame") else 0
        plan = frame.CanvasPlan(*x.shape[1:3], CONV1_1_PADDING, _CONVS[:framed], sizes)
        pool = relu_max_pool_ceil if self._fast("fused_pool") else plain_relu_max_pool_ceil
        x, extent = zero_beyond(x, sizes), plan.conv1_1_extent()
        pools = {}
        for block, num_convs, channels in VGG16_BLOCKS:
            for i in range(1, num_convs + 1):
                first = (block, i) == (1, 1)
                padding = plan.conv1_1_padding if first else 1
                x = self._conv(self._channels(channels), 3, padding, first, f"conv{block}_{i}")(x)
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
            x = self._conv(self._channels(FC_CHANNELS), size, "VALID", True, name)(x)
            x = nn.Dropout(DROPOUT_RATE, deterministic=not train)(nn.relu(x))
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
        # SubpixelConvTranspose computes nn.ConvTranspose's result without the multiplications
        # by the zeros a stride-s transposed convolution inserts (fcn_jax.layers).
        subpixel = self._fast("subpixel")
        if self.learnable_upsampling:
            cls = SubpixelConvTranspose if subpixel else nn.ConvTranspose
        else:
            cls = _FrozenSubpixelConvTranspose if subpixel else _FrozenConvTranspose
        layer = cls(
            self.num_classes,
            (2 * factor, 2 * factor),
            strides=(factor, factor),
            padding="VALID",
            use_bias=False,
            kernel_init=_bilinear_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )
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
        if self.stride not in (8, 16, 32):
            raise ValueError(f"FCN stride must be 8, 16 or 32, got {self.stride}")
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


MODELS: dict[str, Callable[..., FCN]] = {
    "fcn32s": functools.partial(FCN, stride=32),
    "fcn16s": functools.partial(FCN, stride=16),
    "fcn8s": functools.partial(FCN, stride=8),
    "fcn8s_atonce": functools.partial(
        FCN, stride=8, skip_scales=(ATONCE_POOL4_SCALE, ATONCE_POOL3_SCALE)
    ),
}


MODEL_OPTIONS = ("width", "dtype", "learnable_upsampling", "fast_paths")
GEOMETRIES = ("reference", "simple")


def get_model(
    name: str, num_classes: int = 21, geometry: str = "reference", **options: Any
) -> nn.Module:
    """Returns the FCN variant `name` ready for `init` / `apply`.

    Args:
      name: one of `fcn32s`, `fcn16s`, `fcn8s`, `fcn8s_atonce`.
      num_classes: number of output classes.
      geometry: "reference" (the paper's Caffe model, `FCN`) or "simple" (the course-notes
        geometry, `fcn_jax.simple_models.SimpleFCN`, which has no at-once variant).
      **options: `width` (channel multiplier), `dtype` (compute dtype, e.g. jnp.bfloat16),
        `learnable_upsampling` (bool), `fast_paths` ('auto' | 'all' | 'none').

    Raises:
      ValueError: for an unknown name, geometry or option.
    """
    if geometry == "simple":
        from fcn_jax import simple_models  # here: simple_models imports this module

        return simple_models.get_model(name, num_classes, **options)
    if geometry != "reference":
        raise ValueError(f"unknown geometry {geometry!r}; choose one of {GEOMETRIES}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    unknown = set(options) - set(MODEL_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown model option(s) {sorted(unknown)}; allowed: {', '.join(MODEL_OPTIONS)}"
        )
    fast_paths.check_option(options.get("fast_paths", "auto"))
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if options.get("width", 1.0) <= 0:
        raise ValueError(f"width must be > 0, got {options['width']}")
    return MODELS[name](num_classes=num_classes, **options)


def init_variables(model: FCN, rng: jax.Array, image_shape: tuple[int, int] = (32, 32)) -> dict:
    """Initialises a model's variables (reference init: zero score layers, bilinear upsampling).

    The backbone gets Flax's default initialisation; load real weights with `fcn_jax.weights`.
    """
    return model.init(rng, jnp.zeros((1, *image_shape, 3), jnp.float32), train=False)
