import functools

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import layers
from tests.helpers import conv_stack_grad_temporaries


def test_crop_is_top_left_anchored_and_refuses_to_overrun():
    x = jnp.arange(2 * 6 * 7 * 1).reshape(2, 6, 7, 1)
    np.testing.assert_array_equal(layers.crop(x, 2, 3, 4), x[:, 2:5, 2:6])
    with pytest.raises(ValueError, match="runs past a 6x7 map"):
        layers.crop(x, 3, 4, 2)


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 8, 6, 2), (1, 1, 1, 1)])
def test_fused_relu_pool_matches_xla_relu_then_max_pool(shape):
    # Negative inputs give windows whose ReLU'd values tie at zero; add a positive tie too:
    # the gradient must go to the first maximum only, and nowhere for a window of zeros.
    x = jax.random.normal(jax.random.key(0), shape)
    x = x.at[0, 0, 0, 0].set(x[0, 0, 1, 0] if shape[2] > 1 else 1.0)
    x = x.at[0, 0, 1 % shape[2], 0].set(jnp.abs(x[0, 0, 0, 0]))

    def reference(v):
        return nn.max_pool(jax.nn.relu(v), (2, 2), strides=(2, 2), padding=layers._ceil_pad(v))

    out = layers.relu_max_pool_ceil(x)
    assert out.shape == (shape[0], -(-shape[1] // 2), -(-shape[2] // 2), shape[3])
    np.testing.assert_array_equal(out, reference(x))
    g = jax.random.normal(jax.random.key(1), out.shape)
    fused = jax.jit(lambda v, g: jax.vjp(layers.relu_max_pool_ceil, v)[1](g)[0])
    np.testing.assert_array_equal(fused(x, g), jax.vjp(reference, x)[1](g)[0])


@pytest.mark.parametrize(
    "x_shape, kernel_shape, padding",
    [
        ((2, 9, 11, 3), (3, 3, 3, 5), ((4, 4), (4, 4))),  # conv1_1-like: padded, 3 channels
        ((1, 10, 12, 6), (7, 7, 6, 4), "VALID"),  # fc6-like: 7x7 VALID
        ((2, 3, 4, 6), (1, 1, 6, 5), "VALID"),  # fc7-like: 1x1
        ((1, 8, 8, 2), (3, 3, 2, 3), ((1, 2), (0, 1))),  # uneven padding
    ],
)
def test_matmul_grad_conv_matches_xla_convolution(x_shape, kernel_shape, padding):
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape)

    def reference(v, k):
        return jax.lax.conv_general_dilated(
            v, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def custom(v, k):
        return layers.conv_with_matmul_grads(v, k, (1, 1), padding)

    out = custom(x, kernel)
    np.testing.assert_allclose(out, reference(x, kernel), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), out.shape)
    for got, want in zip(
        jax.vjp(custom, x, kernel)[1](g), jax.vjp(reference, x, kernel)[1](g), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_matmul_grad_conv_rejects_strides():
    x, kernel = jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 3, 2))
    with pytest.raises(ValueError, match="stride 1"):
        layers.conv_with_matmul_grads(x, kernel, (2, 2), "VALID")


def _conv_transpose_options(stride: int) -> dict:
    return dict(
        features=5,
        kernel_size=(2 * stride, 2 * stride),
        strides=(stride, stride),
        padding="VALID",
        use_bias=False,
    )


@pytest.mark.parametrize(
    "stride, shape", [(2, (2, 5, 7, 3)), (8, (1, 6, 4, 4)), (32, (1, 1, 2, 2))]
)
def test_subpixel_conv_transpose_equals_flax_conv_transpose(stride, shape):
    # Flax's default kernel init is random and asymmetric, so a wrong phase or a missing flip
    # cannot hide behind the symmetry of a bilinear kernel.
    x = jax.random.normal(jax.random.key(0), shape)
    options = _conv_transpose_options(stride)
    variables = nn.ConvTranspose(**options).init(jax.random.key(1), x)
    subpixel = layers.SubpixelConvTranspose(**options)
    assert jax.tree.map(jnp.shape, subpixel.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, variables
    )

    def reference(v, inputs):
        return nn.ConvTranspose(**options).apply(v, inputs)

    def custom(v, inputs):
        return subpixel.apply(v, inputs)

    out = custom(variables, x)
    np.testing.assert_allclose(out, reference(variables, x), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), out.shape)
    got, want = jax.vjp(custom, variables, x)[1](g), jax.vjp(reference, variables, x)[1](g)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-4, atol=1e-4)


def test_subpixel_conv_transpose_refuses_other_shapes():
    x = jnp.zeros((1, 4, 4, 2))
    for change in ({"use_bias": True}, {"kernel_size": (3, 3)}, {"padding": "SAME"}):
        layer = layers.SubpixelConvTranspose(**{**_conv_transpose_options(2), **change})
        with pytest.raises(ValueError, match="kernel_size = 2 x strides"):
            layer.init(jax.random.key(0), x)


@pytest.mark.parametrize("tap", layers._TAPS)
@pytest.mark.parametrize("others", [-1.0, 0.0, 2.0])
def test_nan_in_any_pooling_tap_gives_nan(tap, others):
    # A NaN must not vanish inside the pooling, whatever its neighbours and the order in
    # which the reduction meets the window's candidates: otherwise it escapes the NaN guard.
    x = jnp.full((1, 2, 2, 1), others).at[0, tap[0], tap[1], 0].set(jnp.nan)
    out = layers.relu_max_pool_ceil(x)
    assert out.shape == (1, 1, 1, 1) and np.isnan(out).all()
    assert np.isnan(jax.jit(layers.relu_max_pool_ceil)(x)).all()


def _dot_precisions(jaxpr) -> list:
    """The `precision` of every convolution and dot in `jaxpr`, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            found.append(eqn.params["precision"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _dot_precisions(sub)
    return found


def test_matmul_grad_conv_honours_precision():
    x, kernel = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 4))
    highest = jax.lax.Precision.HIGHEST

    def loss(v, k):
        return jnp.sum(layers.conv_with_matmul_grads(v, k, (1, 1), "SAME", precision=highest))

    # The forward convolution and both backward matmuls must run at the requested precision.
    precisions = _dot_precisions(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, kernel).jaxpr)
    assert len(precisions) >= 3
    assert all(p in ((highest, highest), highest) for p in precisions), precisions


def _relative_error(got: jax.Array, want: jax.Array) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _bf16_gradient_errors(custom, plain, *inputs) -> list[tuple[float, float]]:
    """(hand-written, XLA's) relative errors of bfloat16 gradients against float32 ones.

    Inputs and the output gradient are rounded to bfloat16 first, so the errors measure the
    gradient's arithmetic alone; the oracle is XLA's float32 gradient of `plain` at the
    highest matmul precision from the same rounded values.
    """
    inputs = [v.astype(jnp.bfloat16) for v in inputs]
    out = jax.eval_shape(plain, *inputs)
    g = jax.random.normal(jax.random.key(9), out.shape).astype(jnp.bfloat16)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def grads(fn, dtype, g, *args):
        args = [v.astype(dtype) for v in args]
        return jax.tree.leaves(jax.vjp(fn, *args)[1](g.astype(dtype)))

    with jax.default_matmul_precision("highest"):
        want = grads(plain, jnp.float32, g, *inputs)
    got, xla = grads(custom, jnp.bfloat16, g, *inputs), grads(plain, jnp.bfloat16, g, *inputs)
    return [
        (_relative_error(c, w), _relative_error(x, w))
        for c, x, w in zip(got, xla, want, strict=True)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "x_shape, kernel_shape, padding",
    [
        ((2, 60, 70, 3), (3, 3, 3, 16), ((5, 5), (5, 5))),  # conv1_1: the kernel gradient
        ((2, 9, 10, 128), (7, 7, 128, 256), "VALID"),  # fc6: 49 slabs per input gradient
        ((2, 3, 4, 256), (1, 1, 256, 256), "VALID"),  # fc7
    ],
)
def test_matmul_grads_in_bfloat16_are_as_accurate_as_xla(x_shape, kernel_shape, padding):
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape) / np.sqrt(np.prod(kernel_shape[:3]))

    def plain(v, k):
        return jax.lax.conv_general_dilated(
            v, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def custom(v, k):
        return layers.conv_with_matmul_grads(v, k, (1, 1), padding)

    for ours, xla in _bf16_gradient_errors(custom, plain, x, kernel):
        assert ours <= 1.05 * xla, (ours, xla)


@pytest.mark.slow
def test_fused_pool_gradient_in_bfloat16_is_as_accurate_as_xla():
    x = jax.random.normal(jax.random.key(0), (2, 17, 15, 8))

    def plain(v):
        return nn.max_pool(jax.nn.relu(v), (2, 2), strides=(2, 2), padding=layers._ceil_pad(v))

    ((ours, xla),) = _bf16_gradient_errors(layers.relu_max_pool_ceil, plain, x)
    assert ours <= 1.05 * xla, (ours, xla)


@pytest.mark.slow
def test_subpixel_gradients_in_bfloat16_are_as_accurate_as_xla():
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 16))
    options = _conv_transpose_options(8)
    kernel = nn.ConvTranspose(**options).init(jax.random.key(1), x)["params"]["kernel"]

    def plain(v, k):
        return nn.ConvTranspose(**options).apply({"params": {"kernel": k}}, v)

    def custom(v, k):
        return layers.SubpixelConvTranspose(**options).apply({"params": {"kernel": k}}, v)

    for ours, xla in _bf16_gradient_errors(custom, plain, x, kernel):
        assert ours <= 1.05 * xla, (ours, xla)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_floor_fused_pool_matches_xla_relu_then_floor_max_pool(shape):
    # An odd side drops its last row or column, as PyTorch's default pooling does.
    x = jax.random.normal(jax.random.key(0), shape).at[0, 0, 0, 0].set(0.0)
    plain = layers.plain_relu_max_pool_floor
    out = layers.relu_max_pool_floor(x)
    assert out.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    np.testing.assert_array_equal(out, plain(x))
    g = jax.random.normal(jax.random.key(1), out.shape)
    fused = jax.vjp(layers.relu_max_pool_floor, x)[1](g)[0]
    np.testing.assert_array_equal(fused, jax.vjp(plain, x)[1](g)[0])


def _same_conv_values(plain: nn.Conv, custom: nn.Conv, x: jax.Array):
    """Checks that `custom` makes `plain`'s parameters and values.

    Returns:
      A function of a module: its (bias, kernel, input) gradients at those parameters (with a
      nonzero bias) for a fixed random output gradient.
    """
    variables = plain.init(jax.random.key(1), x)
    # The same parameters from the same initialisers; a nonzero bias, not the zero init.
    np.testing.assert_array_equal(
        custom.init(jax.random.key(1), x)["params"]["kernel"], variables["params"]["kernel"]
    )
    bias = jnp.arange(plain.features, dtype=jnp.float32) - plain.features / 2
    variables = {"params": {**variables["params"], "bias": bias}}
    out = custom.apply(variables, x)
    np.testing.assert_array_equal(out, plain.apply(variables, x))
    g = jax.random.normal(jax.random.key(2), out.shape)

    def grads(module: nn.Conv) -> list[jax.Array]:
        y, vjp = jax.vjp(module.apply, variables, x)
        return jax.tree.leaves(jax.jit(vjp)(g.astype(y.dtype)))

    return grads


@pytest.mark.parametrize(
    "padding, dtype",
    [
        (1, jnp.float32),
        ("SAME", jnp.bfloat16),
        ("VALID", jnp.float32),
        (((2, 0), (1, 3)), jnp.float32),
    ],
)
def test_ordered_grads_conv_equals_flax_conv(padding, dtype):
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    options = dict(features=4, kernel_size=(3, 3), padding=padding, dtype=dtype)
    plain, ordered = nn.Conv(**options), layers.ConvWithOrderedGrads(**options)
    grads = _same_conv_values(plain, ordered, x)
    for got, want in zip(grads(ordered), grads(plain), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "kernel_size, padding, dtype",
    [
        ((3, 3), 1, jnp.float32),  # conv1_1-like
        ((1, 1), 0, jnp.float32),  # fc7-like
        ((2, 2), ((1, 0), (0, 1)), jnp.float32),
        ((1, 1), 0, jnp.bfloat16),
    ],
)
def test_matmul_grads_conv_equals_flax_conv(kernel_size, padding, dtype):
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
    options = dict(features=5, kernel_size=kernel_size, padding=padding)
    plain = nn.Conv(**options, dtype=dtype)
    matmul = layers.MatmulGradsConv(**options, dtype=dtype)
    grads = _same_conv_values(plain, matmul, x)
    # Products sum in another order than XLA's convolutions and reductions: in float32 the
    # gradients (bias, kernel, input) agree to rounding; in bfloat16 the bias gradient, the
    # product with ones, is as close to float32's as XLA's sum is (the other two:
    # test_matmul_grads_in_bfloat16_are_as_accurate_as_xla).
    ours, xla, exact = grads(matmul), grads(plain), grads(nn.Conv(**options))
    if dtype == jnp.float32:
        for got, want in zip(ours, exact, strict=True):
            assert _relative_error(got, want) < 1e-5
    else:
        assert _relative_error(ours[0], exact[0]) <= 1.05 * _relative_error(xla[0], exact[0])


def test_ordered_grads_conv_refuses_other_convolutions():
    x = jnp.zeros((1, 6, 6, 2))
    for options in (
        dict(strides=2),
        dict(use_bias=False),
        dict(kernel_dilation=2),
        dict(feature_group_count=2),
        dict(padding="CIRCULAR"),
    ):
        for conv in (layers.ConvWithOrderedGrads, layers.MatmulGradsConv):
            with pytest.raises(ValueError, match=f"{conv.__name__} supports"):
                conv(2, (3, 3), **options).init(jax.random.key(0), x)


def test_ordered_grads_keep_less_alive_than_xlas_schedule():
    # What the layer is for: in a stack of convolutions, XLA's CPU schedule (with the CPU
    # flags of fcn_jax.xla_setup, which conftest sets) leaves the plain layers' kernel and
    # bias gradients for the end and keeps their inputs alive until then.
    x = jnp.zeros((1, 32, 32, 4))
    ordered = conv_stack_grad_temporaries(layers.ConvWithOrderedGrads, x)
    assert ordered < 0.9 * conv_stack_grad_temporaries(nn.Conv, x)


@pytest.mark.parametrize("shape", [(2, 5, 7, 33), (1, 12, 16, 4096)])
def test_half_dropout_keeps_each_unit_with_probability_one_half(shape):
    x = jax.random.normal(jax.random.key(0), shape) + 10.0  # no zeros of its own
    dropout = layers.HalfDropout()
    y = dropout.apply({}, x, rngs={"dropout": jax.random.key(1)})
    kept = np.asarray(y != 0)
    np.testing.assert_array_equal(np.asarray(y)[kept], 2 * np.asarray(x)[kept])
    # Binomial(n, 1/2): within 5 standard deviations of n / 2, and neighbours (which share a
    # random word) uncorrelated.
    n = kept.size
    assert abs(kept.sum() - n / 2) < 5 * np.sqrt(n / 4)
    flat = kept.reshape(-1).astype(float)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5 / np.sqrt(n)
    other = dropout.apply({}, x, rngs={"dropout": jax.random.key(2)})
    assert np.mean(np.asarray(other != 0) == kept) < 0.6  # another key, another mask
    np.testing.assert_array_equal(layers.HalfDropout(deterministic=True).apply({}, x), x)
