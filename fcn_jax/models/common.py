"""What both FCN geometries share: VGG16's blocks, the bilinear upsampling, the base class.

`FCNModel` is the type of every FCN of this package (`reference.FCN`, `simple.SimpleFCN`):
its fields are the options every geometry takes, and its helpers build the layers whose
construction both share (channel widths under `width`, the frozen bilinear upsampling).
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.fast_paths import FastPaths
from fcn_jax.layers import ConvWithOrderedGrads, SubpixelConvTranspose
from fcn_jax.winograd import WinogradConv

# (block, convs per block, output channels) of VGG16 configuration D (docs/reference.md §1).
VGG16_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 2, 64),
    (2, 2, 128),
    (3, 3, 256),
    (4, 3, 512),
    (5, 3, 512),
)
FC_CHANNELS = 4096
STRIDES = (8, 16, 32)
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


def bilinear_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Flax initialiser producing `bilinear_kernel` for a (k, k, C, C) kernel shape.

    Raises:
      ValueError: for a kernel that is not square or whose in and out channels differ.
    """
    del key
    size, size_w, in_channels, out_channels = shape
    if size != size_w or in_channels != out_channels:
        # Same restriction as the reference's surgery.interp (§2.2).
        raise ValueError(f"bilinear init needs a square kernel and in == out channels, got {shape}")
    return jnp.asarray(bilinear_kernel(size, in_channels), dtype)


def frozen_params(module_cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """Wraps `module_cls` so its `params` are stored in the `upsampling` collection instead.

    The optimiser only sees `params`, so the wrapped layer stays as initialised: the
    reference's `lr_mult: 0` (§2.2).
    """
    return nn.map_variables(
        module_cls,
        mapped_collections=["params", UPSAMPLING_COLLECTION],
        trans_in_fn=lambda v: {"params": v.get(UPSAMPLING_COLLECTION, {})},
        trans_out_fn=lambda v: {UPSAMPLING_COLLECTION: v.get("params", {})},
        # mutable (not init=True): init=True breaks `apply(..., mutable=[...])` in Flax 0.12.
        # The kernel is still only written when the caller lets `upsampling` be mutable.
        mutable=True,
    )


FrozenConvTranspose = frozen_params(nn.ConvTranspose)
FrozenSubpixelConvTranspose = frozen_params(SubpixelConvTranspose)


class FCNModel(nn.Module):
    """An FCN on the VGG16 backbone; a geometry subclasses it and defines `__call__`.

    `model.apply(variables, images, sizes=None, train=False)` returns float32 logits
    (N, H, W, num_classes) for preprocessed images (N, H, W, 3).

    Attributes:
      num_classes: number of output classes (21 for PASCAL VOC).
      stride: 32, 16 or 8: FCN-32s, FCN-16s or FCN-8s.
      width: backbone channel multiplier (1.0 = VGG16; e.g. 1/16 for tiny test models).
      learnable_upsampling: train the upsampling kernels; when False (the reference, §2.2)
        they live in the `upsampling` collection and stay bilinear.
      dtype: compute dtype (float32, or bfloat16 on accelerators); parameters and the
        returned logits stay float32.
      fast: the speed tricks this model runs (`fcn_jax.fast_paths`; `get_model` resolves
        them for the platform); the default is the plain path.
    """

    num_classes: int = 21
    stride: int = 8
    width: float = 1.0
    learnable_upsampling: bool = False
    dtype: Any = jnp.float32
    fast: FastPaths = FastPaths()

    def channels(self, channels: int) -> int:
        """A layer's channel count under the `width` multiplier (at least 1)."""
        return max(1, int(round(channels * self.width)))

    def check_stride(self) -> None:
        """Raises ValueError unless `stride` is 8, 16 or 32."""
        if self.stride not in STRIDES:
            raise ValueError(f"{type(self).__name__} stride must be 8, 16 or 32, got {self.stride}")

    def backbone_conv(
        self, features: int, padding: Any, name: str, xla_forward_under_grad: bool = False
    ) -> nn.Module:
        """A 3x3 VGG16 convolution after conv1_1, as `fast` computes it.

        `WinogradConv` when `fast.winograd` (its forward pass Winograd's too, except where it
        is differentiated with `xla_forward_under_grad`, which a geometry sets where the
        values that route its gradients must be exactly XLA's), else `ConvWithOrderedGrads`
        when `fast.ordered_grads`, else `nn.Conv`: the same parameters and values
        (fcn_jax.layers, fcn_jax.winograd).
        conv1_1 is left out: its 3 input channels make poor matrix products, and its input
        gradient is never computed.
        """
        options = dict(padding=padding, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        if self.fast.winograd:
            return WinogradConv(
                features, (3, 3), xla_forward_under_grad=xla_forward_under_grad, **options
            )
        if self.fast.ordered_grads:
            return ConvWithOrderedGrads(features, (3, 3), **options)
        return nn.Conv(features, (3, 3), **options)

    def upsampling_layer(self, factor: int, name: str) -> nn.Module:
        """The bilinear-initialised deconvolution k = 2 * factor, stride factor, VALID, no bias.

        Frozen unless `learnable_upsampling`; a sub-pixel convolution when `fast.subpixel`
        (the same parameters and values as `nn.ConvTranspose`, fcn_jax.layers).
        """
        if self.learnable_upsampling:
            cls = SubpixelConvTranspose if self.fast.subpixel else nn.ConvTranspose
        else:
            cls = FrozenSubpixelConvTranspose if self.fast.subpixel else FrozenConvTranspose
        return cls(
            self.num_classes,
            (2 * factor, 2 * factor),
            strides=(factor, factor),
            padding="VALID",
            use_bias=False,
            kernel_init=bilinear_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )
