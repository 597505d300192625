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
