"""Skipping the constant frame that conv1_1's 100-pixel padding puts around the image.

conv1_1 pads the image by 100 pixels (docs/reference.md §2.4), so about half of each map in
VGG blocks 1-3 lies in a frame around the image. Along either axis such a map reads:

    edge | run | core | run | edge

* core: the rows whose receptive field reaches the image;
* edge: the rows at the map border that see the zero padding of the 3x3 convolutions;
* run: the rows in between, which see neither and are therefore all the same row.

Copies of one row can be dropped or added without changing any other value, as long as each
run keeps a row while the convolutions widen the edge and the core into it (one row from each
side per convolution). So blocks 1-3 run on maps whose runs are cut to the few rows their
convolutions need, and pool3 gets its full runs back before block 4 and the FCN-8s skip
(which the frame no longer reaches). The results are those of the full maps; the saving is
about a fifth of a whole train step: 711 of the reference's 878 GFLOP at 375x500
(benchmarks/flops.py).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

EDGE, RUN, CORE = "E", "R", "C"
KERNEL = 3  # every convolution of blocks 1-3 is 3x3 (padding 1 after conv1_1)


@dataclasses.dataclass(frozen=True)
class AxisLayout:
    """Lengths of the five parts of one axis of a map: edge, run, core, run, edge."""

    lead_edge: int
    lead_run: int
    core: int
    trail_run: int
    trail_edge: int

    @property
    def size(self) -> int:
        """The length of the axis."""
        return self.lead_edge + self.lead_run + self.core + self.trail_run + self.trail_edge

    def with_runs(self, lead_run: int, trail_run: int) -> "AxisLayout":
        """The same layout with runs of the given lengths."""
        return dataclasses.replace(self, lead_run=lead_run, trail_run=trail_run)


def _layout(labels: str) -> AxisLayout:
    """Parses labels of the form E*R+C+R+E* (the only one blocks 1-3 can produce)."""
    parts = []
    rest = labels
    for label in (EDGE, RUN, CORE, RUN, EDGE):
        length = len(rest) - len(rest.lstrip(label))
        parts.append(length)
        rest = rest[length:]
    layout = AxisLayout(*parts)
    if rest or not (layout.lead_run and layout.core and layout.trail_run):
        raise AssertionError(f"not an edge|run|core|run|edge layout: {labels}")
    return layout


def _labels(layout: AxisLayout) -> str:
    return (
        EDGE * layout.lead_edge
        + RUN * layout.lead_run
        + CORE * layout.core
        + RUN * layout.trail_run
        + EDGE * layout.trail_edge
    )


def _conv(labels: str) -> str:
    """Labels after a 3x3 convolution with padding 1: the border rows see the zero padding."""
    out = []
    for j in range(len(labels)):
        window = labels[max(0, j - 1) : j + 2]
        if CORE in window and (EDGE in window or j in (0, len(labels) - 1)):
            raise AssertionError(f"edge and core meet at {j}: {labels}")
        border = j in (0, len(labels) - 1) or EDGE in window
        out.append(EDGE if border else CORE if CORE in window else RUN)
    return "".join(out)


def _pool(labels: str) -> str:
    """Labels after 2x2 stride-2 max pooling with ceil rounding."""
    out = []
    for i in range(0, len(labels), 2):
        window = labels[i : i + 2]
        if CORE in window and EDGE in window:
            raise AssertionError(f"edge and core meet in a pooling window at {i}: {labels}")
        out.append(EDGE if EDGE in window else CORE if CORE in window else RUN)
    return "".join(out)


def _conv1_1_labels(size: int, padding: int) -> str:
    """conv1_1's output: rows whose 3x3 window reaches the image are core, the rest run."""
    return "".join(
        CORE if j + KERNEL > padding and j < padding + size else RUN
        for j in range(size + 2 * padding - KERNEL + 1)
    )


def _shortest_run(full_run: int, num_convs: int) -> int:
    # Each convolution takes a row from each end of a run; three rows left over always hold a
    # whole pooling window. The parity of the full run keeps the core on the same pooling
    # phase (and the map length on the same ceil rounding).
    shortest = 2 * num_convs + 3
    return shortest + (shortest - full_run) % 2


@dataclasses.dataclass(frozen=True)
class AxisPlan:
    """One axis through blocks 1-3, with runs cut short.

    Attributes:
      conv1_1_padding: the padding that gives conv1_1's output its short runs.
      after_pool: for blocks 1 and 2, (layout of the block's pooled output, layout the next
        block runs on); for block 3, (its pooled output, the full pool3 layout).
    """

    conv1_1_padding: int
    after_pool: dict[int, tuple[AxisLayout, AxisLayout]]


@functools.cache
def axis_plan(size: int, padding: int, convs_per_block: tuple[int, ...]) -> AxisPlan:
    """Plans one axis of an image `size` pixels long through the first blocks.

    Args:
      size: image height or width.
      padding: conv1_1's padding in the reference (100).
      convs_per_block: the number of 3x3 convolutions of each block planned (VGG16 blocks
        1-3: 2, 2, 3); the last block's pooled output gets its full runs back.

    Raises:
      AssertionError: if an edge could reach the core (not for the VGG16 geometry: the
        tests check every size up to 2048).
    """
    full = _conv1_1_labels(size, padding)
    if not convs_per_block:
        return AxisPlan(padding, {})
    run = _shortest_run(_layout(full).lead_run, convs_per_block[0] - 1)
    short_padding = padding - (_layout(full).lead_run - run)
    short = _conv1_1_labels(size, short_padding)
    after_pool = {}
    for block, num_convs in enumerate(convs_per_block, start=1):
        for _ in range(num_convs - 1 if block == 1 else num_convs):
            full, short = _conv(full), _conv(short)
        full, short = _pool(full), _pool(short)
        want = _layout(full)
        if block < len(convs_per_block):
            next_convs = convs_per_block[block]
            want = want.with_runs(
                _shortest_run(want.lead_run, next_convs), _shortest_run(want.trail_run, next_convs)
            )
        after_pool[block] = (_layout(short), want)
        short = _labels(want)
    return AxisPlan(short_padding, after_pool)


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """Both axes of an image through blocks 1-3 (see the module docstring)."""

    rows: AxisPlan
    cols: AxisPlan

    @classmethod
    def for_image(
        cls, height: int, width: int, padding: int, convs_per_block: tuple[int, ...]
    ) -> "FramePlan":
        """Plans an NHWC image of `height` x `width` pixels; see `axis_plan`."""
        return cls(
            axis_plan(height, padding, convs_per_block), axis_plan(width, padding, convs_per_block)
        )

    @property
    def conv1_1_padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (rows, cols) padding of conv1_1 on the short maps."""
        return (self.rows.conv1_1_padding,) * 2, (self.cols.conv1_1_padding,) * 2

    def after_pool(self, x: jax.Array, block: int) -> jax.Array:
        """Resizes the runs of block `block`'s pooled NHWC output for the next block."""
        x = resize_runs(x, 1, *self.rows.after_pool[block])
        return resize_runs(x, 2, *self.cols.after_pool[block])


@functools.partial(jax.jit, static_argnums=(1, 2, 3))  # one operation outside jit, not eight
def resize_runs(x: jax.Array, axis: int, have: AxisLayout, want: AxisLayout) -> jax.Array:
    """Gives the runs of `x` along `axis` the lengths of `want` by dropping or copying rows."""
    if (have.lead_edge, have.core, have.trail_edge) != (want.lead_edge, want.core, want.trail_edge):
        raise ValueError(f"layouts differ beyond their runs: {have} vs {want}")

    def rows(start: int, stop: int) -> jax.Array:
        return jax.lax.slice_in_dim(x, start, stop, axis=axis)

    def run(start: int, length: int) -> jax.Array:
        row = rows(start, start + 1)
        return jnp.repeat(row, length, axis=axis)

    core_start = have.lead_edge + have.lead_run
    trail_start = core_start + have.core
    return jnp.concatenate(
        [
            rows(0, have.lead_edge),
            run(have.lead_edge, want.lead_run),
            rows(core_start, trail_start),
            run(trail_start, want.trail_run),
            rows(trail_start + have.trail_run, have.size),
        ],
        axis=axis,
    )


# ---------------------------------------------------------------------------- per-example sizes
#
# On a canvas each example is its own image, `size` pixels long, top-left. Its short maps are
# the prefix of the canvas's maps up to the example's own extent (the rows beyond are zeroed,
# standing in for the padding its own maps would have), so blocks 1-3 run as for the canvas
# and only the run resizing after each pooling differs per example: it becomes a gather whose
# row indices are looked up by size.


@dataclasses.dataclass(frozen=True)
class SizeTables:
    """One axis of a canvas through blocks 1-3, for every example length 1..canvas.

    Attributes:
      conv1_1_padding: conv1_1's padding (the same for every length).
      conv1_1_extent: (canvas + 1,) the extent of conv1_1's output for each length.
      gathers: per block, (canvas + 1, rows) the source row of each row of the resized map,
        `rows` (out of range: fill with zero) beyond the example's extent.
      extents: per block, (canvas + 1,) the extent of the resized map for each length.
    """

    conv1_1_padding: int
    conv1_1_extent: np.ndarray
    gathers: dict[int, np.ndarray]
    extents: dict[int, np.ndarray]


def _resize_index(have: AxisLayout, want: AxisLayout) -> np.ndarray:
    """The source row in `have` of each row of `want` (what `resize_runs` copies)."""
    core_start = have.lead_edge + have.lead_run
    trail_start = core_start + have.core
    return np.concatenate(
        [
            np.arange(have.lead_edge),
            np.full(want.lead_run, have.lead_edge),
            core_start + np.arange(have.core),
            np.full(want.trail_run, trail_start),
            trail_start + have.trail_run + np.arange(have.trail_edge),
        ]
    )


@functools.cache
def size_tables(canvas: int, padding: int, convs_per_block: tuple[int, ...]) -> SizeTables:
    """The gathers of `FramePlan.after_pool` for every example length up to `canvas`."""
    plans = [axis_plan(size, padding, convs_per_block) for size in range(1, canvas + 1)]
    short_padding = plans[0].conv1_1_padding
    if any(plan.conv1_1_padding != short_padding for plan in plans):
        raise AssertionError("conv1_1's short padding depends on the image size")
    sizes = np.arange(canvas + 1)
    gathers, extents = {}, {}
    for block in range(1, len(convs_per_block) + 1):
        rows = max(plan.after_pool[block][1].size for plan in plans)
        table = np.full((canvas + 1, rows), rows, np.int32)
        extent = np.zeros(canvas + 1, np.int32)
        for size, plan in enumerate(plans, start=1):
            index = _resize_index(*plan.after_pool[block])
            table[size, : index.size], extent[size] = index, index.size
        gathers[block], extents[block] = table, extent
    conv1_1_extent = (sizes + 2 * short_padding - KERNEL + 1).astype(np.int32)
    return SizeTables(short_padding, conv1_1_extent, gathers, extents)


def gather_rows(x: jax.Array, axis: int, index: jax.Array) -> jax.Array:
    """Per-example row gather along `axis` (1 or 2) of NHWC `x`; out-of-range rows are 0.

    Args:
      x: (N, H, W, C).
      axis: 1 (rows) or 2 (columns).
      index: int32 (N, L), the source of each of the L output rows of each example.
    """
    shape = [index.shape[0], 1, 1, 1]
    shape[axis] = index.shape[1]
    return jnp.take_along_axis(x, index.reshape(shape), axis=axis, mode="fill", fill_value=0)


class CanvasPlan:
    """Blocks 1-3 of an NHWC input, for the whole input or for per-example image sizes.

    With no framed blocks it is the reference's geometry (conv1_1 padded by `padding`, no
    resizing). With framed blocks and `sizes=None` it is `FramePlan`; with `sizes` each
    example gets its own resizing, by `size_tables`.
    """

    def __init__(
        self,
        height: int,
        width: int,
        padding: int,
        convs_per_block: tuple[int, ...],
        sizes: jax.Array | None,
    ):
        self.padding, self.framed, self.sizes = padding, bool(convs_per_block), sizes
        self.static = FramePlan.for_image(height, width, padding, convs_per_block)
        if self.framed and sizes is not None:
            self.tables = tuple(
                size_tables(length, padding, convs_per_block) for length in (height, width)
            )

    @property
    def conv1_1_padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (rows, cols) padding of conv1_1."""
        return self.static.conv1_1_padding

    def conv1_1_extent(self) -> jax.Array | None:
        """Each example's (rows, cols) extent of conv1_1's output; None without sizes."""
        if self.sizes is None:
            return None
        if not self.framed:
            return self.sizes + 2 * self.padding - KERNEL + 1
        return jnp.stack(self._per_axis(lambda tables: tables.conv1_1_extent), axis=1)

    def after_pool(self, x: jax.Array, block: int) -> tuple[jax.Array, jax.Array | None]:
        """Resizes the runs of block `block`'s pooled output; returns it and its extents."""
        if self.sizes is None:
            return self.static.after_pool(x, block), None
        rows, cols = self._per_axis(lambda tables: tables.gathers[block])
        x = gather_rows(gather_rows(x, 1, rows), 2, cols)
        return x, jnp.stack(self._per_axis(lambda tables: tables.extents[block]), axis=1)

    def _per_axis(self, table_of) -> list[jax.Array]:
        """Each example's entry of a per-length table, for rows and for columns."""
        return [
            jnp.asarray(table_of(tables))[sizes]
            for tables, sizes in zip(self.tables, self.sizes.T, strict=True)
        ]
