import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fcn_jax import models
from fcn_jax.models import common, reference
from tests.helpers import random_variables

NAMES = ["fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce"]
TINY = 1 / 32  # channel multiplier for fast real forwards


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _abstract_variables(model, shape=(1, 32, 32, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(1, 1), (26, 27), (97, 131), (375, 500)])
def test_output_shape_equals_input_shape_full_width(name, hw):
    model = models.get_model(name)
    variables = _abstract_variables(model)
    images = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    out = jax.eval_shape(model.apply, variables, images)
    assert out.shape == (2, *hw, 21)
    assert out.dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(1, 1), (26, 27), (97, 131)])
def test_real_forward_of_tiny_model_keeps_input_size(name, hw):
    model = models.get_model(name, num_classes=3, width=TINY)
    variables = random_variables(model, scale=0.1)
    out = model.apply(variables, jax.random.normal(jax.random.key(1), (1, *hw, 3)))
    assert out.shape == (1, *hw, 3)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out).max()) > 0


def _layer_output_shapes(model, height, width):
    variables = _abstract_variables(model)
    images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables,
        images,
    )
    layers = {k: v for k, v in state["intermediates"].items() if k != "__call__"}
    return {k: v["__call__"][0].shape[1:3] for k, v in layers.items()}


@pytest.mark.parametrize("framed_blocks", [0, reference.FRAMED_BLOCKS])
def test_intermediate_geometry_matches_reference_table_for_375x500(framed_blocks):
    # docs/reference.md §2.5 worked example, 375 x 500 column. With the constant frame skipped
    # (fcn_jax.frame) blocks 1-3 run on smaller maps, and from pool3 on every map is the
    # reference's again.
    model = models.get_model("fcn8s", fast_paths="all").clone(framed_blocks=framed_blocks)
    shapes = _layer_output_shapes(model, 375, 500)
    if framed_blocks:
        assert shapes["conv1_2"][0] < 573 and shapes["conv1_2"][1] < 698
        assert shapes["conv3_3"][0] < 144 and shapes["conv3_3"][1] < 175
    else:
        assert shapes["conv1_2"] == (573, 698)
        assert shapes["conv3_3"] == (144, 175)  # before pool3, so pool2's size
    assert shapes["score_fr"] == (12, 16)
    assert shapes["upscore2"] == (26, 34)
    assert shapes["score_pool4"] == (36, 44)
    assert shapes["upscore_pool4"] == (54, 70)
    assert shapes["score_pool3"] == (72, 88)
    assert shapes["upscore8"] == (440, 568)


@pytest.mark.parametrize(
    "name, learnable, frozen",
    [
        # docs/reference.md §1, parameter counts [derived].
        ("fcn32s", 134_346_581, 1_806_336),
        ("fcn16s", 134_357_354, 458_640),
        ("fcn8s", 134_362_751, 127_008),
        ("fcn8s_atonce", 134_362_751, 127_008),
    ],
)
def test_parameter_counts_match_reference(name, learnable, frozen):
    variables = _abstract_variables(models.get_model(name))
    assert set(variables) == {"params", models.UPSAMPLING_COLLECTION}
    assert _count(variables["params"]) == learnable
    assert _count(variables[models.UPSAMPLING_COLLECTION]) == frozen


def test_learnable_upsampling_moves_kernels_into_params():
    variables = _abstract_variables(models.get_model("fcn8s", learnable_upsampling=True))
    assert set(variables) == {"params"}
    assert _count(variables["params"]) == 134_362_751 + 127_008


def test_layer_names_follow_reference():
    variables = _abstract_variables(models.get_model("fcn8s"))
    expected = {
        f"conv{b}_{i}" for b, n in [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)] for i in range(1, n + 1)
    }
    expected |= {"fc6", "fc7", "score_fr", "score_pool4", "score_pool3"}
    assert set(variables["params"]) == expected
    assert set(variables["upsampling"]) == {"upscore2", "upscore_pool4", "upscore8"}
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    assert flat["fc6/kernel"].shape == (7, 7, 512, 4096)
    assert flat["fc7/kernel"].shape == (1, 1, 4096, 4096)
    assert flat["score_fr/kernel"].shape == (1, 1, 4096, 21)


@pytest.mark.parametrize(
    "size, taps",
    [
        # The table of docs/reference.md §2.2.
        (4, [0.25, 0.75, 0.75, 0.25]),
        (16, [1, 3, 5, 7, 9, 11, 13, 15, 15, 13, 11, 9, 7, 5, 3, 1]),
        (32, list(range(1, 32, 2)) + list(range(31, 0, -2))),
        (64, list(range(1, 64, 2)) + list(range(63, 0, -2))),
    ],
)
def test_bilinear_taps_match_reference_table(size, taps):
    expected = np.asarray(taps, np.float64)
    if size > 4:
        expected = expected / size
    np.testing.assert_allclose(models.bilinear_kernel_1d(size), expected, rtol=1e-12)
    kernel = models.bilinear_kernel(size, 3)
    np.testing.assert_allclose(kernel[:, :, 1, 1], np.outer(expected, expected), rtol=1e-6)
    assert np.all(kernel[:, :, 0, 1] == 0) and np.all(kernel[:, :, 2, 0] == 0)


@pytest.mark.slow
def test_score_layers_start_at_zero_and_upsampling_is_bilinear():
    model = models.get_model("fcn8s", width=TINY)
    variables = models.init_variables(model, jax.random.key(0))
    for name in ["score_fr", "score_pool4", "score_pool3"]:
        assert not np.any(variables["params"][name]["kernel"])
        assert not np.any(variables["params"][name]["bias"])
    np.testing.assert_array_equal(
        variables["upsampling"]["upscore8"]["kernel"], models.bilinear_kernel(16, 21)
    )
    out = model.apply(variables, jnp.ones((1, 20, 20, 3)))
    assert not np.any(out)  # zero scores everywhere: the ln 21 signature of §7.2


@pytest.mark.parametrize("stride", [2, 8, 16, 32])
def test_frozen_bilinear_conv_transpose_interpolates_bilinearly(stride):
    channels, n = 2, 9
    layer = common.FrozenConvTranspose(
        channels,
        (2 * stride, 2 * stride),
        strides=(stride, stride),
        padding="VALID",
        use_bias=False,
        kernel_init=common.bilinear_init,
    )
    x = jax.random.normal(jax.random.key(0), (1, n, n, channels))
    variables = layer.init(jax.random.key(1), x)
    assert set(variables) == {"upsampling"}
    y = np.asarray(layer.apply(variables, x))
    assert y.shape == (1, (n - 1) * stride + 2 * stride, (n - 1) * stride + 2 * stride, channels)
    # Output pixel o sits at input coordinate (o - (k - 1) / 2) / s (§2.4); in the interior the
    # layer must equal separable linear interpolation of the input there.
    coords = (np.arange(y.shape[1]) - (2 * stride - 1) / 2) / stride
    inside = (coords >= 0) & (coords <= n - 1)
    xn = np.asarray(x[0])
    for c in range(channels):
        rows = np.stack([np.interp(coords[inside], np.arange(n), xn[:, j, c]) for j in range(n)], 1)
        want = np.stack([np.interp(coords[inside], np.arange(n), r) for r in rows])
        np.testing.assert_allclose(y[0][np.ix_(inside, inside)][..., c], want, atol=1e-5)


def test_atonce_scales_skip_inputs_by_reference_constants():
    tiny = dict(num_classes=3, width=TINY)
    staged, atonce = models.get_model("fcn8s", **tiny), models.get_model("fcn8s_atonce", **tiny)
    variables = random_variables(staged, scale=0.1)
    scaled = jax.tree.map(lambda x: x, variables)
    scaled["params"]["score_pool4"]["kernel"] = variables["params"]["score_pool4"]["kernel"] * 0.01
    scaled["params"]["score_pool3"]["kernel"] = variables["params"]["score_pool3"]["kernel"] * 1e-4
    images = jax.random.normal(jax.random.key(2), (1, 40, 33, 3))
    np.testing.assert_allclose(
        atonce.apply(variables, images), staged.apply(scaled, images), rtol=1e-5, atol=1e-5
    )


def test_dropout_only_in_training():
    model = models.get_model("fcn32s", num_classes=3, width=TINY)
    variables = random_variables(model, scale=0.1)
    images = jax.random.normal(jax.random.key(1), (1, 30, 30, 3))
    eval_a = model.apply(variables, images)
    eval_b = model.apply(variables, images, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(3)})
    train_b = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(4)})
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_a)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_logits():
    f32 = models.get_model("fcn16s", num_classes=3, width=TINY)
    bf16 = models.get_model("fcn16s", num_classes=3, width=TINY, dtype=jnp.bfloat16)
    variables = random_variables(bf16, scale=0.1)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    images = jax.random.normal(jax.random.key(1), (1, 33, 35, 3))
    out16, out32 = bf16.apply(variables, images), f32.apply(variables, images)
    assert out16.dtype == jnp.float32
    scale = float(jnp.abs(out32).max())
    assert float(jnp.abs(out16 - out32).max()) < 0.05 * scale


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="fcn4s"), "unknown model 'fcn4s'"),
        (dict(name="fcn8s", depth=3), "unknown model option"),
        (dict(name="fcn8s", num_classes=0), "num_classes"),
        (dict(name="fcn8s", width=0), "width"),
    ],
)
def test_get_model_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.get_model(**kwargs)
