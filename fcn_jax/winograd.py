"""3x3 convolutions by Winograd's minimal filtering, F(2x2, 3x3), forward and backward.

A 3x3 convolution (cross-correlation, as `lax.conv_general_dilated` computes it) makes each
2x2 block of outputs from the 4x4 tile of inputs under it. Winograd's algorithm F(2x2, 3x3)
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes that
block with 16 multiplications per input/output channel pair instead of 36:

    Y = A^T [ (G g G^T) * (B^T d B) ] A

with d the 4x4 input tile, g the 3x3 kernel and * the element-wise product. Summed over the
input channels, each of the 16 entries of the transformed tile is one matrix product of
(tiles x C_in) by (C_in x C_out): 2.25x fewer multiplications than the direct convolution,
in products that XLA's CPU backend runs near its matmul peak, and the transforms are cheap
element-wise sums (their coefficients are 0, +-1 and 1/2, so the rounding is that of a
direct convolution). The backward pass is Winograd too: the kernel gradient sums
(B^T d B) * (A dY A^T) over the tiles in 16 more products, and the input gradient is the same
forward algorithm run on the output gradient with the kernel turned 180 degrees. Shallow
correlations (`MIN_CHANNELS`, `MIN_CHANNELS_UNDER_GRAD`) run
XLA's convolution instead (the kernel gradient never does). Large maps run in bands of tile
rows, a few MiB each (`BAND_BYTES`), so that each band's transforms read it from the caches.

`WinogradConv` is `nn.Conv` for the FCN's 3x3 stride-1 layers computed this way; its backward
also computes the kernel and bias gradients before the input gradient, as
`fcn_jax.layers.ConvWithOrderedGrads` does. tests/test_winograd.py checks values and gradients
against XLA's convolution; where it wins: docs/cpu_speed.md.
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.layers import ConvWithOrderedGrads, after, conv_nhwc, sum_rows

TILE = 2  # output rows (and columns) of a tile: F(2x2, 3x3)
KERNEL = 3
# The transforms of F(2x2, 3x3), interpolating at 0, 1, -1 and infinity (Lavin and Gray).
INPUT_TRANSFORM = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])  # B^T
KERNEL_TRANSFORM = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # G
OUTPUT_TRANSFORM = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])  # A^T
# The entry of A dY A^T, flattened (a * 4 + b), that sums its 2x2 tile of dY: A's row 1 is
# (1, 1).
TILE_SUM = 1 * 4 + 1
# A forward pass that is not differentiated (inference), whose input has fewer channels, runs
# XLA's convolution instead: conv1_2's and conv2_1's. Products 64 deep won little there (on a
# Zen 4 CPU, conv1_2's shape, 384x512 with 64 channels in and out: 85-92 ms Winograd against
# 83-84 ms XLA; conv2_1's, 192x256 with 64 in and 128 out: 30 against 35 ms), while their 16
# products, together four times the output, are large at the full size: conv1_2's forward
# pass and input gradient as Winograd grew the train step's temporaries at 384x512 from 200
# to 321 MiB (before the bands). From 128 channels Winograd wins on that CPU (conv2_2's shape,
# 192x256 with 128 in and out: 54-57 against 72-73 ms; conv3_1's, 96x128 with 128 in and 256
# out: 23-24 against 35 ms).
MIN_CHANNELS = 128
# Where the call is differentiated (training), the forward pass and the input gradient (a
# correlation of the output gradient) are Winograd's from 64 channels of their input. In
# bands (`BAND_BYTES`) a forward pass's products do not grow the train step's peak, which is
# in the backward pass, and conv2_1's forward pass as Winograd made the course-notes train
# step about 2% faster on the Zen 4 CPU. The input gradients of conv1_2, conv2_1 and conv2_2
# (64 and 128 channels of output gradient) as Winograd made it another 3-4% faster at
# 384x512 and 512x512 and the reference's 3% at 384x512; the 22 MiB (384x512) and 38 MiB
# (512x512) of temporaries they added, the course-notes model took back elsewhere
# (docs/benchmarks.md, "Every input gradient Winograd's"). In inference the forward pass is the
# peak, and there 64-channel bands' products would add 26-34 MiB to the course-notes eval
# step at 384x512 and 512x512 (`MIN_CHANNELS`). Kernel gradients are Winograd's at every
# channel count: XLA's ran 3x slower than its forward pass.
MIN_CHANNELS_UNDER_GRAD = 64

Padding = tuple[tuple[int, int], tuple[int, int]]

# Winograd's forward passes, input gradients and kernel gradients run in bands of tile rows,
# each with about this many bytes of input (for the kernel gradient: of input or output
# gradient, whichever is larger), at most MAX_BANDS of them. Each of a band's 16 transforms
# reads the whole band, which then comes from the caches (32 MiB of L3 on the Zen 4 CPU)
# rather than from memory. On that CPU, kernel gradients in bands made the course-notes
# FCN-8s train step 2-4% faster at 384x512 and 512x512 and the reference's 2% at 384x512
# (conv1_2's kernel gradient alone, 384x512 with 64 channels: 155-160 -> 114-142 ms in 8 to
# 16 bands); forward passes and input gradients in bands another 3% in the course-notes train
# and eval steps at 384x512 (conv2_2's forward pass alone 85 -> 71 ms in 4 bands); the
# temporaries within 4 MiB. The bands are the steps of a loop, so their code is compiled once:
# unrolled, the course-notes train step took 13 -> 20 s to compile and its resident set grew
# by 0.12 GiB of code (docs/benchmarks.md). Small maps (the tests') run in one band.
BAND_BYTES = 6 * 2**20
MAX_BANDS = 8


def _weighted_sum(terms: list[tuple[float, jax.Array]]) -> jax.Array:
    """sum(coefficient * array) over the nonzero coefficients, without multiplying by +-1."""
    total = None
    for coefficient, array in terms:
        if coefficient == 0:
            continue
        term = array if coefficient == 1 else -array if coefficient == -1 else coefficient * array
        total = term if total is None else total + term
    return total


def _sandwich(matrix: np.ndarray, grid: list[list[jax.Array]]) -> list[list[jax.Array]]:
    """`matrix @ grid @ matrix.T` over a square grid of equal-shaped arrays, rows first.

    Entry [a][b] of the result is sum_ij matrix[a, i] * matrix[b, j] * grid[i][j], summed
    over i first (one array per [a][j]), then over j.
    """
    taps = range(matrix.shape[1])
    by_row = [
        [_weighted_sum([(matrix[a, i], grid[i][j]) for i in taps]) for j in taps]
        for a in range(matrix.shape[0])
    ]
    return [
        [_weighted_sum([(matrix[b, j], row[j]) for j in taps]) for b in range(matrix.shape[0])]
        for row in by_row
    ]


def _as_grid(entries: list[jax.Array]) -> list[list[jax.Array]]:
    """The 16 transformed-tile entries, flat at index 4a + b, as a 4x4 grid [a][b]."""
    size = len(INPUT_TRANSFORM)
    return [entries[a * size : (a + 1) * size] for a in range(size)]


def _tile_transforms(x: jax.Array, matrix: np.ndarray, rows: int, cols: int) -> list[jax.Array]:
    """`matrix @ tile @ matrix.T` for the tiles of `x` at stride 2, one array per entry.

    Args:
      x: (N, 2 * rows + taps - 2, 2 * cols + taps - 2, C); tile (i, j) is
        x[:, 2i : 2i + taps, 2j : 2j + taps] with taps = matrix.shape[1] (2 or 4).
      matrix: (k, taps).
      rows: the number of tiles down.
      cols: the number of tiles across.

    Returns:
      k * k arrays (N, rows, cols, C), entry (a, b) at index a * k + b. Each is its own
      element-wise sum of strided views of `x`: stacked into one array, XLA's CPU backend
      writes them several times slower.
    """
    n, height, width, channels = x.shape
    blocks = x.reshape(n, height // TILE, TILE, width // TILE, TILE, channels)

    def tap(r: int, s: int) -> jax.Array:  # element (r, s) of every tile
        row, col = divmod(r, TILE), divmod(s, TILE)
        return blocks[:, row[0] : row[0] + rows, row[1], col[0] : col[0] + cols, col[1]]

    taps = range(matrix.shape[1])
    return [
        _weighted_sum([(matrix[a, r] * matrix[b, s], tap(r, s)) for r in taps for s in taps])
        for a in range(matrix.shape[0])
        for b in range(matrix.shape[0])
    ]


def _tiles(height: int, width: int) -> tuple[int, int]:
    return -(-height // TILE), -(-width // TILE)


def _pad_to_tiles(x: jax.Array, padding: Padding, rows: int, cols: int, taps: int = 4) -> jax.Array:
    """`x` padded by `padding` (top, left), then with zeros (or cropped) to what the tiles cover.

    `rows` x `cols` tiles of `taps` x `taps` at stride 2 cover 2 * tiles + taps - 2 rows
    (columns).
    """
    (top, _), (left, _) = padding
    height, width = x.shape[1:3]
    config = (
        (0, 0, 0),
        (top, TILE * rows + taps - TILE - height - top, 0),
        (left, TILE * cols + taps - TILE - width - left, 0),
        (0, 0, 0),
    )
    return jax.lax.pad(x, jnp.zeros((), x.dtype), config)


def _products(
    lhs: list[jax.Array], rhs: list[jax.Array], precision: Any, transpose_lhs: bool = False
) -> list[jax.Array]:
    """lhs[i] @ rhs[i] over the flattened tiles (or lhs[i]^T @ rhs[i]), accumulated in float32."""
    out = []
    for a, b in zip(lhs, rhs, strict=True):
        a = a.reshape(-1, a.shape[-1])
        b = b.reshape(-1, b.shape[-1]) if transpose_lhs else b
        contract = (((0,), (0,)), ((), ())) if transpose_lhs else (((1,), (0,)), ((), ()))
        out.append(
            jax.lax.dot_general(
                a, b, contract, precision=precision, preferred_element_type=jnp.float32
            )
        )
    return out


# Turning a kernel 180 degrees reverses the columns of G, which swaps its rows 0 and 3.
TURNED_ROWS = (3, 1, 2, 0)


def _transformed_kernel(kernel: jax.Array, dtype: Any, turned: bool = False) -> list[jax.Array]:
    """G g G^T as 16 (C_in, C_out) matrices, entry (a, b) at index 4a + b.

    Rows, then columns, as sums of the kernel's (C_in, C_out) slices: as an einsum, XLA's
    CPU backend transposed the kernel twice for two products three deep, which took 2-9x
    as long (docs/benchmarks.md).

    With `turned`, the transform of the kernel turned 180 degrees with its input and output
    channels swapped (the input gradient's kernel): entry (a, b) is the kernel's own entry
    (TURNED_ROWS[a], TURNED_ROWS[b]), transposed. Turning and swapping the kernel first
    costs far more: XLA's CPU backend reads the swapped kernel across its rows in every one
    of the 16 sums.
    """
    taps = kernel.astype(jnp.float32)
    u = _sandwich(KERNEL_TRANSFORM, [[taps[i, j] for j in range(KERNEL)] for i in range(KERNEL)])
    if turned:
        u = [[u[a][b].T for b in TURNED_ROWS] for a in TURNED_ROWS]
    return [entry.astype(dtype) for row in u for entry in row]


def _outputs(
    padded: jax.Array, u: list[jax.Array], rows: int, cols: int, precision: Any
) -> jax.Array:
    """The (N, 2 * rows, 2 * cols, C_out) outputs of all tiles, A^T [U * V] A, in float32.

    Args:
      padded: the input, padded to (N, 2 * (rows + 1), 2 * (cols + 1), C_in).
      u: the transformed kernel (`_transformed_kernel`).
      rows: the number of tiles down.
      cols: the number of tiles across.
      precision: as `lax.dot_general`'s.
    """
    n, c_out = padded.shape[0], u[0].shape[-1]
    tiles = _tile_transforms(padded, INPUT_TRANSFORM, rows, cols)
    m = [p.reshape(n, rows, cols, c_out) for p in _products(tiles, u, precision)]
    # out[r][s]: output (2i + r, 2j + s) of tile (i, j)
    out = _sandwich(OUTPUT_TRANSFORM, _as_grid(m))
    y = jnp.stack([jnp.stack(row, axis=3) for row in out], axis=2)  # (n, rows, r, cols, s, o)
    return y.reshape(n, TILE * rows, TILE * cols, c_out)


def correlate(
    x: jax.Array, kernel: jax.Array, padding: Padding, precision: Any, turned: bool = False
) -> jax.Array:
    """NHWC 3x3 stride-1 cross-correlation of `x` padded by `padding`, as XLA computes it.

    Args:
      x: (N, H, W, C_in).
      kernel: (3, 3, C_in, C_out), or (3, 3, C_out, C_in) with `turned`.
      padding: ((top, bottom), (left, right)), each side >= -1 so the output is not empty;
        negative values crop.
      precision: as `lax.dot_general`'s, for the matrix products.
      turned: correlate with the kernel turned 180 degrees and its input and output
        channels swapped, `kernel[::-1, ::-1].transpose(0, 1, 3, 2)`, as the input gradient
        does; computed from the kernel's own transform (`_transformed_kernel`).

    A large `x` runs in bands of tile rows (`BAND_BYTES`), the steps of one loop, each
    writing its rows of the output.

    Returns:
      (N, H + top + bottom - 2, W + left + right - 2, C_out) in x's dtype.
    """
    (top, bottom), (left, right) = padding
    out_h = x.shape[1] + top + bottom - (KERNEL - 1)
    out_w = x.shape[2] + left + right - (KERNEL - 1)
    rows, cols = _tiles(out_h, out_w)
    band_rows, bands = _bands(rows, x.size * x.dtype.itemsize)
    padded = _pad_to_tiles(x, padding, bands * band_rows, cols)
    u = _transformed_kernel(kernel, x.dtype, turned)
    if bands == 1:
        y = _outputs(padded, u, rows, cols, precision)
    else:

        def add_band(y, first_row):
            band = _tile_rows(padded, first_row, band_rows + 1)  # 4x4 tiles overlap by 2 rows
            band_y = _outputs(band, u, band_rows, cols, precision)
            return jax.lax.dynamic_update_slice_in_dim(y, band_y, TILE * first_row, 1), None

        shape = (x.shape[0], TILE * bands * band_rows, TILE * cols, u[0].shape[-1])
        # The bands overwrite every row. Tied to the input, the initial buffer is not filled
        # ahead of it: XLA's scheduler placed such operand-free fills at the start of the
        # backward pass, where they stood beside its peak.
        first = after(jnp.zeros(shape, jnp.float32), x[(0,) * x.ndim])
        y, _ = jax.lax.scan(add_band, first, jnp.arange(bands) * band_rows)
    return y[:, :out_h, :out_w].astype(x.dtype)


def _tile_rows(x: jax.Array, first: jax.Array, count: int) -> jax.Array:
    """The map rows of `count` tile rows of `x` from tile row `first` (traced), 2 per tile row."""
    return jax.lax.dynamic_slice_in_dim(x, TILE * first, TILE * count, axis=1)


def _bands(rows: int, nbytes: int) -> tuple[int, int]:
    """(tile rows per band, bands) for `rows` tile rows over an input of `nbytes` bytes.

    Equal bands, about `BAND_BYTES` each and at most `MAX_BANDS`; the last may reach past
    `rows` (callers pad those rows with zeros).
    """
    count = max(1, min(rows, MAX_BANDS, round(nbytes / BAND_BYTES)))
    band_rows = -(-rows // count)
    return band_rows, -(-rows // band_rows)


def _band_grads(
    x: jax.Array, grad: jax.Array, rows: int, cols: int, precision: Any
) -> tuple[list[jax.Array], jax.Array]:
    """The 16 entries of dU (flat at 4a + b) and the bias gradient of `rows` tile rows.

    Args:
      x: the input of those tile rows, padded to what the tiles cover (`_pad_to_tiles`).
      grad: their output gradient, padded to whole 2x2 tiles.
      rows: the number of tile rows.
      cols: the number of tiles across.
      precision: as `lax.dot_general`'s.
    """
    tiles = _tile_transforms(x, INPUT_TRANSFORM, rows, cols)
    grad_tiles = _tile_transforms(grad, OUTPUT_TRANSFORM.T, rows, cols)
    du = _products(tiles, grad_tiles, precision, transpose_lhs=True)
    dbias = sum_rows(grad_tiles[TILE_SUM].reshape(-1, grad.shape[-1]), precision)
    return du, dbias


def _kernel_and_bias_grads(
    x: jax.Array, grad: jax.Array, padding: Padding, precision: Any
) -> tuple[jax.Array, jax.Array]:
    """The kernel and bias gradients of `correlate(x, kernel, padding) + bias`, in float32.

    Y = A^T [U * V] A per tile is linear in U = G g G^T, so dU sums V * (A dY A^T) over the
    tiles (one product per entry) and dg = G^T dU G. The bias gradient sums dY; row 1 of A
    is (1, 1), so entry (1, 1) of A dY A^T is each tile's sum of dY, and summing that entry
    over the tiles reads a quarter of what summing dY would. Both are summed over equal
    bands of tile rows (`BAND_BYTES`), one loop step each, so one band's code is compiled;
    the rows that round the bands up have a zero output gradient and add nothing.
    """
    out_h, out_w = grad.shape[1:3]
    rows, cols = _tiles(out_h, out_w)
    nbytes = max(x.size * x.dtype.itemsize, grad.size * grad.dtype.itemsize)
    band_rows, bands = _bands(rows, nbytes)
    x = _pad_to_tiles(x, padding, bands * band_rows, cols)
    # The output gradient's 2x2 tiles do not overlap: it is padded only where a side is odd
    # or the bands need more rows (a copy of a whole map, otherwise, at the step's peak).
    grad = _pad_to_tiles(grad, ((0, 0), (0, 0)), bands * band_rows, cols, taps=TILE)
    if bands == 1:
        du, dbias = _band_grads(x, grad, rows, cols, precision)
    else:

        def add_band(sums, first_row):
            band_x = _tile_rows(x, first_row, band_rows + 1)  # 4x4 tiles overlap by 2 rows
            band_grad = _tile_rows(grad, first_row, band_rows)
            band = _band_grads(band_x, band_grad, band_rows, cols, precision)
            return jax.tree.map(jnp.add, sums, band), None

        c_in, c_out = x.shape[-1], grad.shape[-1]
        entries = [jnp.zeros((c_in, c_out), jnp.float32)] * len(INPUT_TRANSFORM) ** 2
        zeros = (entries, jnp.zeros(c_out, jnp.float32))
        (du, dbias), _ = jax.lax.scan(add_band, zeros, jnp.arange(bands) * band_rows)
    dg = _sandwich(KERNEL_TRANSFORM.T, _as_grid(du))
    return jnp.stack([jnp.stack(row) for row in dg]), dbias


def _correlate_or_xla(
    x: jax.Array,
    kernel: jax.Array,
    padding: Padding,
    precision: Any,
    min_channels: float,
    turned: bool = False,
) -> jax.Array:
    """`correlate`, or XLA's convolution where `x` has fewer than `min_channels` channels."""
    if x.shape[-1] >= min_channels:
        return correlate(x, kernel, padding, precision, turned)
    if turned:
        kernel = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    return conv_nhwc(x, kernel.astype(x.dtype), padding, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def winograd_conv_bias(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    padding: Padding,
    precision: Any,
    xla_forward_under_grad: bool = False,
) -> jax.Array:
    """`correlate(x, kernel, padding) + bias` with a Winograd backward in a fixed order.

    The forward pass is Winograd's where its input has at least `MIN_CHANNELS` channels
    (`MIN_CHANNELS_UNDER_GRAD` where the call is differentiated), the input gradient where
    the output gradient has at least `MIN_CHANNELS_UNDER_GRAD`, and XLA's convolution
    computes them elsewhere (the same values up to float rounding); the kernel gradient is
    always Winograd's. With `xla_forward_under_grad`, the forward pass of a call that is
    differentiated (`jax.grad`, `jax.vjp`: the custom VJP's forward rule) is always XLA's, so
    the values whose ties route the gradients (max pooling's) are exactly XLA's; a call that
    is not differentiated, such as inference, stays Winograd's, since without gradients a
    tie decides nothing that rounding does not.

    The backward computes the kernel and bias gradients first and makes the input gradient
    depend on them (the product with zero of `fcn_jax.layers.conv_bias_with_ordered_grads`),
    so that each layer's output gradient and input die before the layers below run.

    Args:
      x: (N, H, W, C_in).
      kernel: (3, 3, C_in, C_out).
      bias: (C_out,).
      padding: ((top, bottom), (left, right)), each between 0 and 2.
      precision: as `lax.dot_general`'s.
      xla_forward_under_grad: whether a differentiated call's forward pass is XLA's.
    """
    y = _correlate_or_xla(x, kernel, padding, precision, MIN_CHANNELS)
    return y + bias.astype(x.dtype)


def _fwd(x, kernel, bias, padding, precision, xla_forward_under_grad):
    min_channels = math.inf if xla_forward_under_grad else MIN_CHANNELS_UNDER_GRAD
    y = _correlate_or_xla(x, kernel, padding, precision, min_channels)
    y = y + bias.astype(x.dtype)
    return y, (x, kernel, bias)


def _bwd(padding, precision, xla_forward_under_grad, residuals, grad):
    del xla_forward_under_grad  # the gradients are Winograd's either way
    x, kernel, bias = residuals
    # The kernel gradient transforms the same tiles of `x` as the forward pass did; tied to
    # the output gradient, they are neither shared with the forward pass (CSE) nor built
    # ahead of the backward pass by XLA's scheduler, either of which would keep 4x every
    # layer's input alive between the two passes.
    x = after(x, grad[0, 0, 0, 0])
    dkernel, dbias = _kernel_and_bias_grads(x, grad, padding, precision)
    dkernel, dbias = dkernel.astype(kernel.dtype), dbias.astype(bias.dtype)
    # The input gradient is the "full" correlation of the output gradient with the kernel
    # turned 180 degrees (input and output channels swapped), cropped by the padding. It waits
    # for the other two through the kernel: tied to the output gradient instead, the tie
    # would copy a whole map where XLA's convolution computes it.
    kernel = after(kernel, dkernel[0, 0, 0, 0] + dbias[0]).astype(x.dtype)
    (top, bottom), (left, right) = padding
    full = ((KERNEL - 1 - top, KERNEL - 1 - bottom), (KERNEL - 1 - left, KERNEL - 1 - right))
    dx = _correlate_or_xla(grad, kernel, full, precision, MIN_CHANNELS_UNDER_GRAD, turned=True)
    return dx, dkernel, dbias


winograd_conv_bias.defvjp(_fwd, _bwd)


class WinogradConv(ConvWithOrderedGrads):
    """`ConvWithOrderedGrads` for 3x3 kernels, computed by Winograd F(2x2, 3x3) both ways.

    Same parameters and values as `nn.Conv` (up to float rounding); padding may be SAME,
    VALID or explicit with 0 to 2 rows and columns on each side. Which passes are Winograd's:
    `winograd_conv_bias`.

    Attributes (besides `nn.Conv`'s):
      xla_forward_under_grad: where the layer is differentiated, compute its forward pass
        with XLA's convolution, whose values are exactly XLA's, for a model whose max-pooling
        ties must route the gradients as the plain path's do (`winograd_conv_bias`). Its
        gradients, and its forward pass where it is not differentiated, stay Winograd's.
    """

    xla_forward_under_grad: bool = False

    def _conv_bias(
        self, x: jax.Array, kernel: jax.Array, bias: jax.Array, pads: Padding
    ) -> jax.Array:
        if kernel.shape[:2] != (KERNEL, KERNEL) or not all(
            0 <= p <= KERNEL - 1 for side in pads for p in side
        ):
            raise ValueError(
                "WinogradConv supports 3x3 kernels with 0 to 2 rows and columns of padding on "
                f"each side, got a {kernel.shape[0]}x{kernel.shape[1]} kernel and padding {pads}"
            )
        return winograd_conv_bias(
            x, kernel, bias, pads, self.precision, self.xla_forward_under_grad
        )
