"""Which of fcn-jax's speed tricks run on which backend.

Each trick computes what a plain path computes (the one that reads like docs/reference.md
and serves as the oracle in the tests), faster or in less memory on the backends where it
was measured. The model option `fast_paths` chooses:

* ``'auto'`` (the default): each trick on the backends where it was measured to win, XLA's
  native path elsewhere. Every measurement so far is from a 2-core x86 CPU, so on GPU and
  TPU 'auto' is the plain path until a measurement on such a chip says otherwise
  (benchmarks/device_check.py measures exactly that).
* ``'all'``: every trick, on any backend.
* ``'none'``: the plain path.

'auto' is resolved while tracing, for the backend the computation will run on:
`jax.default_backend()`, unless the trace happens inside `lowering_for(platforms)`, which
is how to lower for another backend (for example `jax.export` for 'cuda' or 'tpu' from a
CPU host). `jax.jit` keeps one trace per function object, so trace a fresh jitted function
(or pass 'all' / 'none') when the target platform changes in one process.
"""

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import jax

OPTIONS = ("auto", "all", "none")


@dataclasses.dataclass(frozen=True)
class Trick:
    """A speed trick, the backends where it is measured to win, and by how much.

    Attributes:
      name: the name `enabled` takes.
      wins_on: backend families ('cpu', 'gpu', 'tpu') on which 'auto' turns it on.
      doc: what it replaces, where it wins and by how much.
    """

    name: str
    wins_on: frozenset[str]
    doc: str


_CPU = frozenset({"cpu"})
_TRICKS = (
    Trick(
        "frame",
        _CPU,
        "Blocks 1-3 skip the constant frame that conv1_1's 100-pixel padding creates "
        "(fcn_jax/frame.py) instead of convolving it. Fewer FLOPs on any backend (a 375x500 "
        "train step executes 711 of 878 GFLOP, a forward 238 of 294), measured on CPU only: "
        "with the two commits before it, the train step went from 6.15 to 4.38 s (fcn8s, "
        "375x500). On an accelerator the extra slices and pads may cost more than they save.",
    ),
    Trick(
        "fused_pool",
        _CPU,
        "ReLU + ceil-mode max pooling with a hand-written backward that keeps a one-byte "
        "winning tap per pooled value (layers.relu_max_pool_ceil) instead of relu followed "
        "by XLA's max pool. On CPU the backward is about 4x faster than XLA's "
        "select-and-scatter and the train step's temporaries are about 180 MB smaller "
        "(fcn8s, 375x500). GPU and TPU have fast native pooling gradients.",
    ),
    Trick(
        "matmul_grads",
        _CPU,
        "conv1_1's, fc6's and fc7's gradients as matrix products "
        "(layers.conv_with_matmul_grads) instead of XLA's gradient convolutions. On CPU "
        "conv1_1's kernel gradient is about 7x faster and fc6's 411 MB kernel is no longer "
        "transposed every step. On GPU/TPU conv1_1's im2col builds a 114 MB temporary at "
        "batch 8, 512x512, where cuDNN or the TPU's native gradient need none.",
    ),
    Trick(
        "subpixel",
        _CPU,
        "Upsampling as a stride-1 2x2 convolution and a depth-to-space reshuffle "
        "(layers.SubpixelConvTranspose) instead of nn.ConvTranspose, whose convolution over "
        "the stride-dilated input multiplies by inserted zeros (63 of 64 products for "
        "upscore8). On CPU the eval step went from 1.342 to 1.270 s and its peak memory from "
        "1.60 to 1.48 GiB (fcn8s, 375x500); not measured on an accelerator.",
    ),
)
TRICK_INFO: dict[str, Trick] = {trick.name: trick for trick in _TRICKS}
TRICKS = tuple(TRICK_INFO)

# Platform names as `jax.export` and `jax.default_backend()` spell them -> backend family.
_FAMILIES = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}
_lowering_platforms: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "fcn_jax_fast_paths_lowering_platforms", default=None
)


def check_option(option: str) -> str:
    """Returns `option` if it is one of OPTIONS.

    Raises:
      ValueError: otherwise.
    """
    if option not in OPTIONS:
        raise ValueError(f"fast_paths must be one of {OPTIONS}, got {option!r}")
    return option


@contextlib.contextmanager
def lowering_for(*platforms: str) -> Iterator[None]:
    """Resolves 'auto' for `platforms` instead of the default backend while tracing inside.

    With several platforms (a multi-platform `jax.export`), a trick is on only if it wins on
    all of them.

    Example:
      with fast_paths.lowering_for("tpu"):
        exported = jax.export.export(jax.jit(step), platforms=("tpu",))(*args)

    Raises:
      ValueError: for no platform or an unknown one.
    """
    if not platforms:
        raise ValueError("lowering_for needs at least one platform")
    for platform in platforms:
        _family(platform)
    token = _lowering_platforms.set(tuple(platforms))
    try:
        yield
    finally:
        _lowering_platforms.reset(token)


def target_platforms() -> tuple[str, ...]:
    """The platforms 'auto' resolves for now: those of `lowering_for`, or the default backend."""
    return _lowering_platforms.get() or (jax.default_backend(),)


def enabled(option: str, trick: str) -> bool:
    """Whether `trick` runs under the model option `option` ('auto', 'all' or 'none').

    Raises:
      ValueError: for an unknown option or trick.
    """
    check_option(option)
    if trick not in TRICK_INFO:
        raise ValueError(f"unknown fast path {trick!r}; choose one of {TRICKS}")
    if option != "auto":
        return option == "all"
    return all(_family(p) in TRICK_INFO[trick].wins_on for p in target_platforms())


def _family(platform: str) -> str:
    try:
        return _FAMILIES[platform.lower()]
    except KeyError:
        raise ValueError(
            f"unknown platform {platform!r}; expected one of {sorted(_FAMILIES)}"
        ) from None
