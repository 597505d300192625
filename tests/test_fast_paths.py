"""Tests for fcn_jax.fast_paths: which trick runs for which option and backend."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from configs import default
from fcn_jax import fast_paths, losses, models, optim, steps


def test_tricks_and_options():
    assert fast_paths.TRICKS == (
        "frame",
        "fused_pool",
        "matmul_grads",
        "ordered_grads",
        "recompute_conv1_1",
        "subpixel",
        "winograd",
    )
    assert fast_paths.OPTIONS == ("auto", "all", "none")
    for trick in fast_paths.TRICKS:
        assert fast_paths.TRICK_INFO[trick].doc


pytestmark = pytest.mark.usefixtures("fewer_xla_optimizations")
ALL_ON = fast_paths.FastPaths(**dict.fromkeys(fast_paths.TRICKS, True))


def test_all_and_none_ignore_the_platform():
    for platform in ("cpu", "cuda", "tpu", ("cpu", "cuda")):
        assert fast_paths.resolve("all", platform) == ALL_ON
        assert fast_paths.resolve("none", platform) == fast_paths.FastPaths()


def test_auto_is_on_for_cpu_only():
    assert jax.default_backend() == "cpu"  # the test suite runs on the CPU
    assert fast_paths.resolve("auto") == fast_paths.resolve("auto", "cpu") == ALL_ON
    for platform in ("cuda", "rocm", "gpu", "tpu"):
        assert fast_paths.resolve("auto", platform) == fast_paths.FastPaths()
    # A multi-platform export: a trick must win on every platform.
    assert fast_paths.resolve("auto", ("cpu", "cuda")) == fast_paths.FastPaths()


def test_get_model_stores_the_choice_for_its_platform():
    assert models.get_model("fcn8s").fast == ALL_ON
    assert models.get_model("fcn8s", platform="tpu").fast == fast_paths.FastPaths()
    simple = models.get_model("fcn8s", geometry="simple", fast_paths="none", platform="cpu")
    assert simple.fast.names() == ()
    assert ALL_ON.names() == fast_paths.TRICKS


def test_config_field_chooses_the_fast_paths():
    config = default.get_config()
    assert config.fast_paths == "auto"
    for option, want in (("none", fast_paths.FastPaths()), ("all", ALL_ON)):
        config.fast_paths = option
        assert steps.create_model(config, 21, platform="tpu").fast == want


@pytest.mark.parametrize(
    "call",
    [
        lambda: fast_paths.resolve("fast"),
        lambda: fast_paths.resolve("auto", ()),
        lambda: fast_paths.resolve("auto", "metal"),
        lambda: models.get_model("fcn8s", platform="metal"),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def _logits_and_grads(model, variables, images, labels, sizes=None):
    def loss(variables):
        logits = model.apply(variables, images, sizes=sizes, train=False)
        return losses.pixel_cross_entropy(logits, labels, reduction="sum")[0], logits

    grads, logits = jax.jit(jax.grad(loss, has_aux=True))(variables)
    return logits, grads


def _check_against_plain_path(geometry, name, fast, sizes=None, width=1 / 16):
    # 'none' is the plain path of docs/reference.md, the oracle; an odd size exercises the
    # ceil-mode pooling and the frame's uneven runs (the simple geometry pads it to 64x64).
    images = jax.random.normal(jax.random.key(0), (2, 37, 45, 3))
    labels = jax.random.randint(jax.random.key(1), (2, 37, 45), 0, 5)
    plain = models.get_model(name, 5, geometry, width=width, fast_paths="none")
    variables = plain.init(jax.random.key(2), images)
    # Random score and upsampling kernels: zero or symmetric ones would hide mistakes.
    variables = jax.tree.map(
        lambda v: jax.random.normal(jax.random.key(v.size), v.shape) * 0.1, variables
    )
    plain_logits, plain_grads = _logits_and_grads(plain, variables, images, labels, sizes)
    fast_logits, fast_grads = _logits_and_grads(
        plain.clone(fast=fast), variables, images, labels, sizes
    )
    # Inference (not differentiated) may compute its forward pass differently: the
    # reference geometry's Winograd forward passes run only there.
    fast_inference = jax.jit(plain.clone(fast=fast).apply)(variables, images, sizes=sizes)
    # Relative to the logits' scale: at half width (the Winograd check) they reach ~2e3.
    scale = max(1.0, float(jnp.abs(plain_logits).max()))
    for logits in (fast_logits, fast_inference):
        np.testing.assert_allclose(logits, plain_logits, rtol=1e-4, atol=1e-4 * scale)
    for got, want in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(plain_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * float(jnp.abs(want).max()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "geometry, name",
    [("reference", n) for n in ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")]
    + [("simple", n) for n in ("fcn32s", "fcn8s")],
)
def test_all_tricks_compute_what_the_plain_path_computes(geometry, name):
    _check_against_plain_path(geometry, name, ALL_ON)


@pytest.mark.slow
def test_all_tricks_with_winograd_forward_passes_compute_what_the_plain_path_computes():
    # At half width blocks 3-5 have the channels of Winograd forward passes, which the
    # reference geometry runs in inference only, together with the frame of blocks 1-3.
    _check_against_plain_path("reference", "fcn8s", ALL_ON, width=1 / 2)


# The tricks each geometry has (the simple geometry has no frame, the reference geometry
# recomputes nothing; its Winograd convolutions are Winograd backwards only where
# differentiated), each alone, with sizes.
@pytest.mark.parametrize(
    "geometry, trick",
    [("reference", t) for t in fast_paths.TRICKS if t != "recompute_conv1_1"]
    + [("simple", t) for t in fast_paths.TRICKS if t != "frame"],
)
def test_each_trick_alone_computes_what_the_plain_path_computes(geometry, trick):
    sizes = np.array([[37, 45], [20, 31]], np.int32)
    # Winograd's forward passes need 128 channels and its input gradients 256 (blocks 4-5
    # at half width); narrower, only its kernel gradients would run.
    width = 1 / 2 if trick == "winograd" else 1 / 16
    fast = fast_paths.FastPaths(**{trick: True})
    _check_against_plain_path(geometry, "fcn8s", fast, sizes, width)


# ------------------------------------------------------------- lowering for GPU and TPU
# The train and eval steps of the full-width FCN-8s in bfloat16, jitted over an abstract
# 8-device mesh and exported for 'cuda' and 'tpu' from this CPU host: tracing and lowering
# only, nothing compiles (a few seconds each).

BATCH, SIZE = 8, 512


def _exported_steps(platform: str, option: str = "auto") -> dict[str, str]:
    """StableHLO text of the train and eval steps lowered for `platform`."""
    config = default.get_config()
    config.compute_dtype = "bfloat16"
    config.fast_paths = option
    model = steps.create_model(config, 21, platform=platform)
    image = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), image)
    tx = optim.create_optimizer(config, variables["params"])
    state = jax.eval_shape(
        lambda v: steps.create_train_state(config, v, jax.random.key(0))[0], variables
    )
    mesh = AbstractMesh((8,), (steps.DATA_AXIS,), axis_types=(AxisType.Auto,))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(steps.DATA_AXIS))

    def spec(tree, sharding):
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree
        )

    batch = {
        "image": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE), jnp.int32),
        "size": jax.ShapeDtypeStruct((BATCH, 2), jnp.int32),
        "mask": jax.ShapeDtypeStruct((BATCH,), jnp.bool_),
    }
    preprocessing = config.dataset.preprocessing
    train = jax.jit(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            reduction="sum",
            grad_accum_steps=1,
            preprocessing_name=preprocessing,
        ),
        in_shardings=(replicated, sharded),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    evaluate = jax.jit(
        functools.partial(steps.eval_step, model=model, preprocessing_name=preprocessing),
        in_shardings=(replicated, sharded),
        out_shardings=(replicated, sharded),
    )
    train_batch = {k: v for k, v in batch.items() if k != "mask"}
    exported = {
        "train": jax.export.export(train, platforms=(platform,))(
            spec(state, replicated), spec(train_batch, sharded)
        ),
        "eval": jax.export.export(evaluate, platforms=(platform,))(
            spec(state.variables(), replicated), spec(batch, sharded)
        ),
    }
    for step in exported.values():
        assert step.platforms == (platform,) and step.nr_devices == 8
    return {name: step.mlir_module() for name, step in exported.items()}


def _operand_types(text: str, op: str) -> list[list[str]]:
    """The element types of each `op`'s operands, from its trailing type signature."""
    signatures = re.findall(rf"stablehlo\.{op}\b.*?: \(([^)]*)\) ->", text)
    return [re.findall(r"x([a-z]\w*)>", signature) for signature in signatures]


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_steps_lower_for_accelerators_without_custom_calls_in_bfloat16(platform):
    for name, text in _exported_steps(platform).items():
        assert "stablehlo.custom_call" not in text, name
        convolutions = _operand_types(text, "convolution")
        assert len(convolutions) >= 16, name  # at least the forward's 16 + 5 upsampling
        assert all(types == ["bf16", "bf16"] for types in convolutions), (name, convolutions)
        for types in _operand_types(text, "dot_general"):
            assert types == ["bf16", "bf16"], (name, types)


@pytest.mark.parametrize("platform", ["cuda", "tpu", "cpu"])
def test_auto_lowers_xlas_native_path_for_accelerators_and_the_tricks_for_cpu(platform):
    text = _exported_steps(platform)["train"]
    # The plain path: nn.max_pool's gradient, and transposed convolutions over the
    # stride-dilated input. The tricks have neither.
    native = "select_and_scatter" in text, "lhs_dilate" in text
    assert native == ((True, True) if platform != "cpu" else (False, False))
