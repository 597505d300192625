"""Which of fcn-jax's speed tricks a model runs, decided once when the model is built.

Each trick computes what a plain path computes (the one that reads like docs/reference.md
and serves as the oracle in the tests), faster or in less memory on the backends where it
was measured. `fcn_jax.models.get_model(..., fast_paths=OPTION, platform=...)` turns the
option into a `FastPaths` value stored on the model:

* ``'auto'`` (the default): each trick on the backends where it was measured to win, XLA's
  native path elsewhere. Every measurement so far is from a CPU, so on GPU and TPU 'auto' is
  the plain path until a measurement on such a chip says otherwise
  (benchmarks/device_check.py measures exactly that; figures in docs/benchmarks.md).
* ``'all'``: every trick, on any backend.
* ``'none'``: the plain path.

Because the choice is a plain attribute of the model, tracing reads no global or context
state: a model built for 'tpu' on a CPU host lowers the TPU choice, and a cached jit can never
keep a choice made for another backend.
"""

import dataclasses
from collections.abc import Sequence

import jax

OPTIONS = ("auto", "all", "none")


@dataclasses.dataclass(frozen=True)
class Trick:
    """A speed trick and the backend families on which 'auto' turns it on.

    Attributes:
      name: the `FastPaths` field that switches it.
      wins_on: backend families ('cpu', 'gpu', 'tpu') where it was measured to win.
      doc: what it replaces and why it can win (figures: docs/benchmarks.md).
    """

    name: str
    wins_on: frozenset[str]
    doc: str


_CPU = frozenset({"cpu"})
_TRICKS = (
    Trick(
        "frame",
        _CPU,
        "Reference geometry: blocks 1-3 skip the constant frame that conv1_1's 100-pixel "
        "padding creates (fcn_jax/frame.py) instead of convolving it. Fewer FLOPs on any "
        "backend; on an accelerator the extra slices and pads may cost more than they save.",
    ),
    Trick(
        "fused_pool",
        _CPU,
        "ReLU + 2x2 max pooling with a hand-written backward that keeps a one-byte winning tap "
        "per pooled value (fcn_jax.layers) instead of a ReLU and XLA's max pool, whose CPU "
        "backward (select-and-scatter) is slow and keeps more temporaries. GPU and TPU have "
        "fast native pooling gradients.",
    ),
    Trick(
        "matmul_grads",
        _CPU,
        "The gradients of conv1_1, fc6 and fc7 as matrix products "
        "(fcn_jax.layers.MatmulGradsConv) instead of XLA's gradient convolutions, which "
        "are slow on CPU for 3 input channels and transpose fc6's and fc7's large kernels "
        "every step, and instead of XLA's bias-gradient sums, which it fuses into the "
        "optimiser's update at the step's end. "
        "On GPU/TPU conv1_1's im2col needs a temporary that native gradients do not.",
    ),
    Trick(
        "ordered_grads",
        _CPU,
        "The 3x3 convolutions other than conv1_1 as fcn_jax.layers.ConvWithOrderedGrads, whose "
        "backward computes the kernel and bias gradients before the input gradient and makes "
        "the latter depend on them. XLA's CPU scheduler otherwise leaves every layer's kernel "
        "and bias gradients for the end of the step and keeps all layers' output gradients "
        "alive until then. Not measured on an accelerator, whose schedulers differ.",
    ),
    Trick(
        "recompute_conv1_1",
        _CPU,
        "Course-notes geometry: conv1_1's output (64 channels at the input's full size, "
        "conv1_2's input) recomputed in the backward pass (fcn_jax.layers."
        "recomputed_in_backward) instead of kept from the forward pass to the end of the "
        "backward pass, where it sat at the train step's memory peak; recomputed once more "
        "for its own backward pass, after conv1_2's input gradient.",
    ),
    Trick(
        "subpixel",
        _CPU,
        "Upsampling as a stride-1 convolution and a depth-to-space reshuffle "
        "(fcn_jax.layers.SubpixelConvTranspose) instead of nn.ConvTranspose, whose convolution "
        "over the stride-dilated input multiplies by the zeros it inserts (63 of 64 products "
        "for a stride-8 layer). Not measured on an accelerator.",
    ),
    Trick(
        "winograd",
        _CPU,
        "The 3x3 convolutions other than conv1_1 as fcn_jax.winograd.WinogradConv: "
        "Winograd's F(2x2, 3x3), 2.25x fewer multiplications in the kernel gradients, and in "
        "every input gradient of 64 channels or more, and in the forward passes with 128 or "
        "more (64 or more where differentiated, as in training; reference geometry: only "
        "where not differentiated, as in inference), "
        "as matrix products that XLA's CPU backend runs faster than its convolutions, whose "
        "kernel gradients run well below their forward speed. Its backward orders the "
        "gradients as ordered_grads does, which it replaces where both are on. "
        "cuDNN and TPUs choose their own convolution algorithms.",
    ),
)
TRICK_INFO: dict[str, Trick] = {trick.name: trick for trick in _TRICKS}
TRICKS = tuple(TRICK_INFO)

# Platform names as `jax.export` and `jax.default_backend()` spell them -> backend family.
_FAMILIES = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


@dataclasses.dataclass(frozen=True)
class FastPaths:
    """Which tricks a model runs: one boolean per entry of `TRICKS` (all off: the plain path).

    Frozen and hashable, so it can be an attribute of a Flax module.
    """

    frame: bool = False
    fused_pool: bool = False
    matmul_grads: bool = False
    ordered_grads: bool = False
    recompute_conv1_1: bool = False
    subpixel: bool = False
    winograd: bool = False

    def names(self) -> tuple[str, ...]:
        """The tricks that are on, in `TRICKS` order."""
        return tuple(name for name in TRICKS if getattr(self, name))


def check_option(option: str) -> str:
    """Returns `option` if it is one of OPTIONS.

    Raises:
      ValueError: otherwise.
    """
    if option not in OPTIONS:
        raise ValueError(f"fast_paths must be one of {OPTIONS}, got {option!r}")
    return option


def resolve(option: str, platform: str | Sequence[str] | None = None) -> FastPaths:
    """The tricks `option` turns on for a model that will run on `platform`.

    Args:
      option: 'auto', 'all' or 'none'.
      platform: where the model will run: a platform name ('cpu', 'cuda', 'rocm', 'gpu',
        'tpu') or several (a multi-platform export: a trick is on only if it wins on all of
        them). None: the backend this process computes on, `jax.default_backend()`.

    Raises:
      ValueError: for an unknown option, no platform or an unknown one.
    """
    check_option(option)
    platforms = _platforms(platform)
    if option != "auto":
        on = option == "all"
        return FastPaths(**dict.fromkeys(TRICKS, on))
    families = {_family(p) for p in platforms}
    return FastPaths(**{name: families <= TRICK_INFO[name].wins_on for name in TRICKS})


def _platforms(platform: str | Sequence[str] | None) -> tuple[str, ...]:
    if platform is None:
        return (jax.default_backend(),)
    platforms = (platform,) if isinstance(platform, str) else tuple(platform)
    if not platforms:
        raise ValueError("fast_paths.resolve needs at least one platform")
    for name in platforms:
        _family(name)
    return platforms


def _family(platform: str) -> str:
    try:
        return _FAMILIES[platform.lower()]
    except KeyError:
        raise ValueError(
            f"unknown platform {platform!r}; expected one of {sorted(_FAMILIES)}"
        ) from None
