"""Array operations of the FCN graph with reference semantics and fast gradients.

* `crop`: Caffe's top-left-anchored `Crop` (docs/reference.md §2.1).
* `relu_max_pool_ceil`: ReLU then ceil-mode 2x2 max pooling (§1, §2.6).
* `conv_with_matmul_grads`: a convolution whose backward pass is written as matrix products.
* `SubpixelConvTranspose`: `nn.ConvTranspose` for the FCN upsampling shape (kernel = 2 x
  stride, VALID), computed as a stride-1 convolution followed by a depth-to-space reshuffle.
* `relu_max_pool_floor`: `relu_max_pool_ceil` for floor rounding (the simple geometry).
* `ConvWithOrderedGrads`: `nn.Conv` whose backward computes the kernel and bias gradients
  before the input gradient.
* `MatmulGradsConv`: `nn.Conv` whose three gradients are matrix products
  (`conv_with_matmul_grads`, `add_bias_with_product_grad`).
* `HalfDropout`: dropout at rate 1/2 from one random bit per unit.

Each computes what its plain JAX/Flax counterpart computes (`HalfDropout`: the same
distribution as `nn.Dropout(0.5)`, from other random numbers), only faster or in less memory
on XLA's CPU backend; tests/test_layers.py checks them against those counterparts. Where each
wins, and the measurements: docs/cpu_speed.md.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding


def crop(x: jax.Array, offset: int, height: int, width: int) -> jax.Array:
    """Caffe `Crop` on an NHWC tensor: rows/cols [offset, offset + size), top-left anchored (§2.1).

    Raises:
      ValueError: if the crop would run past the source, as Caffe aborts in that case.
    """
    if x.shape[1] < offset + height or x.shape[2] < offset + width:
        raise ValueError(
            f"crop [{offset}:{offset + height}, {offset}:{offset + width}] runs past a "
            f"{x.shape[1]}x{x.shape[2]} map"
        )
    return x[:, offset : offset + height, offset : offset + width, :]


def _ceil_pad(x: jax.Array) -> tuple[tuple[int, int], tuple[int, int]]:
    """Bottom/right padding that makes 2x2 stride-2 pooling round up (Caffe's ceil mode)."""
    return (0, x.shape[1] % 2), (0, x.shape[2] % 2)


_TAPS = ((0, 0), (0, 1), (1, 0), (1, 1))  # a pooling window's taps in row-major order


def _windows(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, ceil(H/2), 2, ceil(W/2), 2, C), padded with -inf (ceil mode)."""
    n, height, width, c = x.shape
    padded = jnp.pad(x, ((0, 0), *_ceil_pad(x), (0, 0)), constant_values=-jnp.inf)
    return padded.reshape(n, -(-height // 2), 2, -(-width // 2), 2, c)


@jax.jit  # one compiled operation when called outside jit (tests, notebooks), not a dozen
def _pool_and_winner(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ReLU + max pooling of `x`, and for each window which candidate won, in one pass.

    The candidates are 0 (the ReLU floor) followed by the four taps; the first maximum wins.
    Winner 0 therefore means "the window's maximum is <= 0": no gradient goes through.
    """
    windows = _windows(x)
    taps = [windows[:, :, i, :, j, :] for i, j in _TAPS]
    candidates = jnp.stack([jnp.zeros_like(taps[0]), *taps], axis=-1)
    index = jax.lax.broadcasted_iota(jnp.uint8, candidates.shape, candidates.ndim - 1)
    init = (jnp.array(-jnp.inf, x.dtype), jnp.array(len(_TAPS) + 1, jnp.uint8))
    return jax.lax.reduce((candidates, index), init, _first_max, (candidates.ndim - 1,))


def _first_max(
    a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Reduction of (value, index) pairs to the largest value, the lower index on ties.

    NaN counts as larger than any number, so a NaN anywhere in a window comes out whatever
    order the reduction takes: the operation stays commutative and associative.
    """
    (value_a, index_a), (value_b, index_b) = a, b
    nan_a, nan_b = jnp.isnan(value_a), jnp.isnan(value_b)
    first = index_a < index_b
    keep_a = jnp.where(
        nan_a | nan_b,
        nan_a & (~nan_b | first),
        (value_a > value_b) | ((value_a == value_b) & first),
    )
    return jnp.where(keep_a, value_a, value_b), jnp.where(keep_a, index_a, index_b)


@jax.custom_vjp
def relu_max_pool_ceil(x: jax.Array) -> jax.Array:
    """ReLU then 2x2 stride-2 max pooling with Caffe's ceil rounding (§1; load-bearing, §2.6).

    An odd extent is padded by one -inf row/column at the bottom/right, which equals Caffe's
    clipped border windows since the pooling itself has no padding.

    The gradient is exactly that of `max_pool(relu(x))` in Caffe and XLA: it goes to the first
    maximum of each window in row-major order, and nowhere if that maximum is <= 0. Fusing
    the two lets the backward pass keep one byte per pooled value (which tap won) instead of
    the block's last activation map twice (the ReLU input and its output). The winner comes
    out of the same reduction as the pooled value: computed apart, XLA fused it into the
    backward pass and kept the whole padded input alive until then instead. The backward is
    element-wise, which also avoids XLA's CPU select-and-scatter, a slow gradient there
    (docs/cpu_speed.md).
    """
    return _pool_and_winner(x)[0]


def _relu_pool_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, tuple[int, ...]]]:
    y, winner = _pool_and_winner(x)
    return y, (winner, x.shape)


def _relu_pool_bwd(
    residuals: tuple[jax.Array, tuple[int, ...]], grad: jax.Array
) -> tuple[jax.Array]:
    winner, (n, height, width, c) = residuals
    out_h, out_w = winner.shape[1:3]
    # Input pixel (2i + r, 2j + s) gets window (i, j)'s gradient if its tap, 1 + 2r + s in
    # _TAPS' order, won: one element-wise pass that writes the input's layout directly
    # (stacking the four taps, then interleaving them, copied the whole map twice).
    windows = (n, out_h, 2, out_w, 2, c)
    tap = 1 + jax.lax.broadcasted_iota(jnp.uint8, windows, 2) * 2
    tap = tap + jax.lax.broadcasted_iota(jnp.uint8, windows, 4)
    won = winner[:, :, None, :, None] == tap
    dx = jnp.where(won, grad[:, :, None, :, None], jnp.zeros((), grad.dtype))
    return (dx.reshape(n, 2 * out_h, 2 * out_w, c)[:, :height, :width],)


relu_max_pool_ceil.defvjp(_relu_pool_fwd, _relu_pool_bwd)


def plain_relu_max_pool_ceil(x: jax.Array) -> jax.Array:
    """`relu_max_pool_ceil` as XLA's own ReLU and max pooling: the plain path and test oracle."""
    return nn.max_pool(jax.nn.relu(x), (2, 2), strides=(2, 2), padding=_ceil_pad(x))


def after(x: jax.Array, dependency: jax.Array) -> jax.Array:
    """`x`, made to depend on the scalar `dependency` through a product with zero.

    XLA cannot compute the result before `dependency`, nor share it with an equal value
    computed elsewhere (CSE). That is how the backward passes here order their work: XLA's
    CPU scheduler drops optimization barriers. Finite values are unchanged; a non-finite
    `dependency` makes `x` NaN.
    """
    return x + jnp.zeros((), x.dtype) * dependency.astype(x.dtype)


def zero_beyond(x: jax.Array, extents: jax.Array | None) -> jax.Array:
    """Zeroes every position of NHWC `x` at or past each example's (rows, cols) extent.

    Args:
      x: (N, H, W, C).
      extents: int32 (N, 2), or None for "the whole map" (x is returned as it is).
    """
    if extents is None:
        return x
    rows = jnp.arange(x.shape[1])[None, :, None, None] < extents[:, 0, None, None, None]
    cols = jnp.arange(x.shape[2])[None, None, :, None] < extents[:, 1, None, None, None]
    return jnp.where(rows & cols, x, jnp.zeros((), x.dtype))


def conv_nhwc(x: jax.Array, kernel: jax.Array, padding: tuple, precision: Any) -> jax.Array:
    """XLA's NHWC/HWIO stride-1 convolution with explicit ((top, bottom), (left, right)) padding."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


def sum_rows(matrix: jax.Array, precision: Any = None) -> jax.Array:
    """The sum of a (rows, C) matrix's rows in float32, as a product with a vector of ones.

    XLA's CPU backend sums a matrix's columns several times slower than it multiplies.
    """
    ones = jnp.ones(matrix.shape[:1], matrix.dtype)
    return jnp.dot(ones, matrix, precision=precision, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def add_bias_with_product_grad(y: jax.Array, bias: jax.Array, precision: Any = None) -> jax.Array:
    """`y + bias` over `y`'s last axis, whose bias gradient sums the pixels as a product.

    The plain bias gradient, a sum over the output gradient's pixels, is a reduction that
    XLA's CPU backend fuses into the optimiser's update of the bias at the end of the train
    step: it ran several times slower than this product (fc7's took 10 ms at 384x512) and
    kept the output gradient alive until then (docs/benchmarks.md).
    """
    return y + bias


def _bias_fwd(y, bias, precision):
    return y + bias, bias


def _bias_bwd(precision, bias, grad):
    dbias = sum_rows(grad.reshape(-1, grad.shape[-1]), precision)
    return grad, dbias.astype(bias.dtype)


add_bias_with_product_grad.defvjp(_bias_fwd, _bias_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_matmul_grads(
    x: jax.Array, kernel: jax.Array, padding: tuple, precision: Any
) -> jax.Array:
    return conv_nhwc(x, kernel, padding, precision)


def _matmul_grads_fwd(x, kernel, padding, precision):
    return conv_nhwc(x, kernel, padding, precision), (x, kernel)


# conv_with_matmul_grads builds a kernel gradient's patches channel-major for inputs up to
# this many channels (conv1_1's 3): one row per tap and channel. conv1_1's kernel gradient
# alone at 384x512 took 38 ms with pixel-major patches, 16.5 ms with channel-major ones (Zen 4,
# docs/benchmarks.md); fc6's and fc7's 512 and 4096 channels would make as many rows.
MAX_CHANNEL_MAJOR_PATCHES = 4


def _matmul_grads_bwd(padding, precision, residuals, grad):
    x, kernel = residuals
    kh, kw, c_in, c_out = kernel.shape
    out_h, out_w = grad.shape[1:3]
    taps = [(i, j) for i in range(kh) for j in range(kw)]
    # The patches need only the input, so XLA's CPU scheduler may build them long before the
    # gradient arrives and keep them alive across the step's peak (conv1_1's are 9x its
    # image). A product with zero ties them to the gradient (as in ConvWithOrderedGrads).
    x = after(x, grad[0, 0, 0, 0])
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    # Both products and the col2im sum accumulate in float32 and are cast once at the end, so
    # that a bfloat16 gradient is as accurate as XLA's own (fc6 sums 49 slabs per pixel).
    f32 = jnp.float32
    if c_in <= MAX_CHANNEL_MAJOR_PATCHES:
        # Kernel gradient: patches @ output_grad, patches (kh * kw * C_in, N, out_h, out_w),
        # one row of pixels per tap and channel, built in one pass in the layout the product
        # reads; pixel-major, XLA's CPU backend stacks them and then transposes them.
        patches = jnp.stack(
            [padded[:, i : i + out_h, j : j + out_w, c] for i, j in taps for c in range(c_in)]
        )
        dkernel = jnp.einsum(
            "knhw,nhwo->ko", patches, grad, precision=precision, preferred_element_type=f32
        )
    else:
        # Kernel gradient: patches^T @ output_grad, patches (N, out_h, out_w, kh * kw, C_in).
        patches = jnp.stack([padded[:, i : i + out_h, j : j + out_w] for i, j in taps], axis=3)
        dkernel = jnp.einsum(
            "nhwti,nhwo->tio", patches, grad, precision=precision, preferred_element_type=f32
        )
    # Input gradient: kernel @ output_grad^T gives every tap's contribution, summed back into
    # place (col2im). Written with the kernel first, XLA reads it in its stored layout; the
    # other way round it transposes fc6's 411 MB kernel every step. XLA drops this branch
    # when nobody asks for it (conv1_1's input).
    cols = jnp.einsum(
        "tio,nhwo->tinhw",
        kernel.reshape(kh * kw, c_in, c_out),
        grad,
        precision=precision,
        preferred_element_type=f32,
    )
    dpadded = sum(
        jnp.pad(cols[t].transpose(1, 2, 3, 0), ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
        for t, (i, j) in enumerate(taps)
    )
    (top, _), (left, _) = padding
    dx = dpadded[:, top : top + x.shape[1], left : left + x.shape[2]]
    return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_conv_matmul_grads.defvjp(_matmul_grads_fwd, _matmul_grads_bwd)


def conv_with_matmul_grads(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
) -> jax.Array:
    """Drop-in `lax.conv_general_dilated` for `nn.Conv` whose gradients are plain matmuls.

    The forward pass is XLA's convolution. The backward pass is written as matrix products
    because XLA's CPU gradient convolutions are slow in two FCN layers: conv1_1's kernel
    gradient (3 input channels over a 573x698 map, here one tall matmul), fc6's and fc7's
    (large kernels over a small map: XLA transposes the kernel every step; here neither
    kernel is copied). Elsewhere XLA's own gradients are faster, so only those layers use
    this (docs/cpu_speed.md). Only the plain case nn.Conv uses
    here is supported (NHWC, stride 1, no dilation, no groups); `precision` applies to the
    forward convolution and to both backward matmuls.
    """
    del dimension_numbers  # nn.Conv passes NHWC/HWIO.
    if tuple(window_strides) != (1, 1) or feature_group_count != 1:
        raise ValueError("conv_with_matmul_grads supports stride 1 without groups only")
    if any(d not in (None, (1, 1)) for d in (lhs_dilation, rhs_dilation)):
        raise ValueError("conv_with_matmul_grads does not support dilation")
    if isinstance(padding, str):  # nn.Conv passes "VALID" / "SAME" through unchanged.
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    return _conv_matmul_grads(lhs, rhs, tuple(tuple(p) for p in padding), precision)


class SubpixelConvTranspose(nn.ConvTranspose):
    """`nn.ConvTranspose` (2-D, VALID, no bias, kernel = 2 x stride) as a sub-pixel convolution.

    Same parameters (one `kernel` of shape (2s, 2s, in, out)) and the same output as
    `nn.ConvTranspose` with `transpose_kernel=False`, which XLA computes as a convolution over
    the input dilated by the stride: s^2 - 1 of every s^2 multiplications hit an inserted zero.
    Here output pixel (s*q + r) only ever sees input pixels q - 1 and q, through kernel taps
    that depend on the phase r alone, so the layer is one stride-1 2x2 convolution with s^2
    output channels per class, followed by a reshuffle of those channels into s x s blocks
    (depth to space). For FCN-8s' upscore8 (s = 8) that is 64x fewer multiplications; where
    that pays off: docs/cpu_speed.md.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Upsamples NHWC `inputs` by the stride: (N, H, W, C) -> (N, (H+1)s, (W+1)s, features)."""
        strides, stride = _pair(self.strides), _pair(self.strides)[0]
        if (
            _pair(self.kernel_size) != (2 * stride, 2 * stride)
            or strides != (stride, stride)
            or self.padding != "VALID"
            or self.use_bias
            or self.transpose_kernel
            or self.kernel_dilation not in (None, 1, (1, 1))
            or self.mask is not None
            or inputs.ndim != 4
        ):
            raise ValueError(
                "SubpixelConvTranspose supports 2-D NHWC inputs, kernel_size = 2 x strides, "
                "padding='VALID', no bias, no mask, no dilation and transpose_kernel=False"
            )
        kernel_shape = (2 * stride, 2 * stride, inputs.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        inputs, kernel = self.promote_dtype(inputs, kernel, dtype=self.dtype)
        return _subpixel_conv_transpose(inputs, kernel, stride)


@functools.partial(jax.jit, static_argnums=2)
def _subpixel_conv_transpose(inputs: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    n, height, width, _ = inputs.shape
    features = kernel.shape[-1]
    padded = jnp.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    phases = jax.lax.conv_general_dilated(
        padded,
        _phase_kernel(kernel, stride),
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    phases = phases.reshape(n, height + 1, width + 1, stride, stride, features)
    out = phases.transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(n, (height + 1) * stride, (width + 1) * stride, features)


def _pair(value: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value, value)


def _phase_kernel(kernel: jax.Array, stride: int) -> jax.Array:
    """(2s, 2s, in, out) transposed-conv kernel -> (2, 2, in, s * s * out) phase kernel.

    nn.ConvTranspose (transpose_kernel=False) gives y[s*q + r] = sum over a in {0, 1} of
    x[q - 1 + a] * kernel[s - 1 - r + s*a] along each spatial axis; tap a of phase r is
    therefore kernel row s*a + (s - 1 - r): split the kernel rows into (a, s - 1 - r) and
    reverse the second index to get r.
    """
    c_in, c_out = kernel.shape[2:]
    taps = kernel.reshape(2, stride, 2, stride, c_in, c_out)[:, ::-1, :, ::-1]
    # (a, r_h, b, r_w, in, out) -> (a, b, in, r_h, r_w, out)
    return taps.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, c_in, stride * stride * c_out)


def relu_max_pool_floor(x: jax.Array) -> jax.Array:
    """ReLU then 2x2 stride-2 max pooling with floor rounding, with the fused backward.

    Floor rounding (PyTorch's default, the simple geometry's) drops an odd last row or
    column; on the even part that remains, floor and ceil rounding are the same pooling, so
    this is `relu_max_pool_ceil` of that part and keeps its one-byte backward.
    """
    return relu_max_pool_ceil(x[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2])


def plain_relu_max_pool_floor(x: jax.Array) -> jax.Array:
    """`relu_max_pool_floor` as XLA's own ReLU and max pooling: the plain path and test oracle."""
    return nn.max_pool(jax.nn.relu(x), (2, 2), strides=(2, 2))


class ConvWithOrderedGrads(nn.Conv):
    """`nn.Conv` (2-D NHWC, stride 1, with bias) whose backward orders its three gradients.

    Same parameters (`kernel` (kh, kw, in, out) and `bias`, made by the same initialisers)
    and the same values as `nn.Conv`. Only the backward pass differs: it computes the kernel
    and bias gradients first and makes the input gradient depend on them, so that each
    layer's output gradient and input die before the layers below run. XLA's CPU scheduler
    otherwise defers the kernel and bias gradients of every layer towards the end of the
    step (the optimiser update, their only consumer), and a train step keeps the output
    gradients and inputs of all layers alive at once.

    The dependency is a product with zero (`conv_bias_with_ordered_grads`), which leaves
    every finite value as it is; a non-finite kernel or bias gradient turns the input
    gradients below into NaN, where the step is lost anyway.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Convolves NHWC `inputs`: (N, H, W, C) -> (N, H', W', features)."""
        kernel_size = tuple(self.kernel_size)
        padding = canonicalize_padding(self.padding, 2)
        if (
            inputs.ndim != 4
            or len(kernel_size) != 2
            or _pair(self.strides) != (1, 1)
            or self.input_dilation not in (None, 1, (1, 1))
            or self.kernel_dilation not in (None, 1, (1, 1))
            or self.feature_group_count != 1
            or not self.use_bias
            or self.mask is not None
            or self.conv_general_dilated is not None
            or padding in ("CIRCULAR", "CAUSAL", "REFLECT")
        ):
            raise ValueError(
                f"{type(self).__name__} supports 2-D NHWC inputs, stride 1, no dilation, no "
                "groups, no mask, a bias, and SAME, VALID or explicit padding"
            )
        kernel_shape = (*kernel_size, inputs.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        if isinstance(padding, str):
            padding = jax.lax.padtype_to_pads(inputs.shape[1:3], kernel_size, (1, 1), padding)
        pads = tuple(tuple(p) for p in padding)
        return self._conv_bias(inputs, kernel, bias, pads)

    def _conv_bias(
        self, x: jax.Array, kernel: jax.Array, bias: jax.Array, pads: tuple
    ) -> jax.Array:
        """The convolution plus bias with ordered gradients; subclasses compute it otherwise."""
        return conv_bias_with_ordered_grads(x, kernel, bias, pads, self.precision)


def _conv_bias(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: tuple, precision: Any
) -> jax.Array:
    return conv_nhwc(x, kernel, padding, precision) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv_bias_with_ordered_grads(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: tuple, precision: Any
) -> jax.Array:
    """NHWC stride-1 convolution plus bias, whose input gradient waits for the other two.

    Args:
      x: (N, H, W, C_in).
      kernel: (kh, kw, C_in, C_out).
      bias: (C_out,).
      padding: ((top, bottom), (left, right)).
      precision: as `lax.conv_general_dilated`'s.
    """
    return _conv_bias(x, kernel, bias, padding, precision)


def _ordered_fwd(x, kernel, bias, padding, precision):
    return _conv_bias(x, kernel, bias, padding, precision), (x, kernel, bias)


def _ordered_bwd(padding, precision, residuals, grad):
    # XLA drops what each call leaves unused: the forward convolution, and one call's input
    # gradient, the other's kernel and bias gradients.
    conv = functools.partial(_conv_bias, padding=padding, precision=precision)
    x, kernel, bias = residuals
    _, dkernel, dbias = jax.vjp(conv, x, kernel, bias)[1](grad)
    # A data dependency, which XLA cannot reorder (it drops optimization barriers before
    # scheduling on CPU): the input gradient reads the others through a product with zero,
    # taken with the kernel (tied to the output gradient, it would copy a whole map).
    kernel = after(kernel, dkernel[0, 0, 0, 0] + dbias[0])
    (dx, _, _) = jax.vjp(conv, x, kernel, bias)[1](grad)
    return dx, dkernel, dbias


conv_bias_with_ordered_grads.defvjp(_ordered_fwd, _ordered_bwd)


def recomputed_in_backward(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """`fn(x, *rest)` whose backward pass recomputes `fn`'s forward pass from its arguments.

    Only the arguments are kept between the passes, nothing `fn` computes. `jax.checkpoint`
    would keep the residuals of the custom-VJP layers inside `fn` (such as a
    `WinogradConv`'s input), which are what this is for. The recomputation is tied to the
    output gradient, so XLA neither shares it with the forward pass (CSE) nor runs it ahead
    of the backward pass.
    """

    @jax.custom_vjp
    def recomputed(x, *rest):
        return fn(x, *rest)

    def forward(x, *rest):
        return fn(x, *rest), (x, rest)

    def backward(arguments, grad):
        x, rest = arguments
        x = after(x, grad[(0,) * grad.ndim])
        return jax.vjp(fn, x, *rest)[1](grad)

    recomputed.defvjp(forward, backward)
    return recomputed


class MatmulGradsConv(ConvWithOrderedGrads):
    """`nn.Conv` (2-D NHWC, stride 1, with bias) whose gradients are all matrix products.

    The parameters, the values and the accepted settings are `ConvWithOrderedGrads`'s; the
    backward pass is not ordered. The kernel and input gradients are
    `conv_with_matmul_grads`'s, the bias gradient a product of the output gradient with ones
    (`add_bias_with_product_grad`): for conv1_1, fc6 and fc7, whose plain gradients XLA's
    CPU backend computes slowly (docs/cpu_speed.md).
    """

    def _conv_bias(
        self, x: jax.Array, kernel: jax.Array, bias: jax.Array, pads: tuple
    ) -> jax.Array:
        y = _conv_matmul_grads(x, kernel, pads, self.precision)
        return add_bias_with_product_grad(y, bias, self.precision)


class HalfDropout(nn.Module):
    """Element-wise dropout at rate 1/2, the FCN's (docs/reference.md §1), one random bit a unit.

    Each unit is kept with probability 1/2 and doubled, or zeroed, as `nn.Dropout(0.5)` does;
    the masks come from another stream of random numbers. `nn.Dropout` draws a 32-bit number
    per unit, and those draws (threefry) took about 30 ms of the course-notes train step at
    384x512 on XLA's CPU backend (fc6's and fc7's 4096 channels); one bit decides a unit at
    rate 1/2 exactly, so this draws 32 times fewer (docs/benchmarks.md).

    Attributes:
      deterministic: if true, the input is returned as it is (evaluation).
      rng_collection: the random-number collection the masks are drawn from.
    """

    deterministic: bool = False
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Drops half of `x`'s units at random and doubles the others, unless deterministic."""
        if self.deterministic:
            return x
        words = jax.random.bits(self.make_rng(self.rng_collection), (-(-x.size // 32), 1))
        bits = (words >> jnp.arange(32, dtype=words.dtype)) & 1
        keep = bits.reshape(-1)[: x.size].reshape(x.shape).astype(bool)
        return jax.lax.select(keep, x * 2, jnp.zeros_like(x))
