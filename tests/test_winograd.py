"""Tests for fcn_jax.winograd: Winograd F(2x2, 3x3) against XLA's own convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import layers, winograd
from tests.helpers import conv_stack_grad_temporaries


def _values_and_grads(module, variables, x, g):
    out, vjp = jax.vjp(module.apply, variables, x)
    return out, jax.jit(vjp)(g)


# Winograd computes every kernel gradient, the forward pass where the input has at least
# MIN_CHANNELS channels (MIN_CHANNELS_UNDER_GRAD where differentiated) and the input gradient
# where the output has at least MIN_CHANNELS_UNDER_GRAD; XLA's convolution the rest.
DEEP = winograd.MIN_CHANNELS
DEEP_GRAD = winograd.MIN_CHANNELS_UNDER_GRAD


@pytest.mark.parametrize(
    "shape, features, padding",
    [
        ((2, 9, 7, 3), 6, 1),  # odd sides: the last tile row and column are partly outside
        ((1, 8, 6, 5), 6, "VALID"),
        ((1, 5, 6, 2), 6, ((2, 0), (1, 2))),
        ((1, 4, 4, 2), 6, "SAME"),
        ((1, 1, 1, 4), 6, 1),  # a single pixel
        ((1, 6, 5, DEEP), 6, 1),  # a Winograd forward pass
        ((1, 7, 6, 4), DEEP_GRAD, ((2, 0), (1, 2))),  # a Winograd input gradient
        ((1, 5, 5, DEEP), DEEP_GRAD, "VALID"),  # both
    ],
)
def test_winograd_conv_equals_flax_conv(shape, features, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    options = dict(features=features, kernel_size=(3, 3), padding=padding)
    plain, fast = nn.Conv(**options), winograd.WinogradConv(**options)
    variables = plain.init(jax.random.key(1), x)
    # The same parameters from the same initialisers; then a random bias, not the zero init.
    np.testing.assert_array_equal(
        fast.init(jax.random.key(1), x)["params"]["kernel"], variables["params"]["kernel"]
    )
    variables = {"params": {**variables["params"], "bias": jnp.arange(features) - 2.5}}
    g = jax.random.normal(jax.random.key(2), plain.apply(variables, x).shape)
    want, want_grads = _values_and_grads(plain, variables, x, g)
    got, got_grads = _values_and_grads(fast, variables, x, g)
    assert got.shape == want.shape and got.dtype == want.dtype
    for values in (got, fast.apply(variables, x)):  # differentiated, and not
        np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


# 13 x 9 outputs: 7 tile rows, the last half outside the map, in 2 bands of 4 or 3 of 3 for
# the forward pass, 4 bands of 2 for the gradients (whose inputs have twice the bytes); the
# rows past the 7th are zeros. Bands this small make a small map run in several, as large
# maps do at BAND_BYTES. Every part is Winograd's here (DEEP in, DEEP_GRAD out).
@pytest.mark.parametrize("bands", [2, 3])
def test_winograd_conv_in_bands_equals_flax_conv(monkeypatch, bands):
    x = jax.random.normal(jax.random.key(0), (1, 13, 9, DEEP))
    monkeypatch.setattr(winograd, "BAND_BYTES", x.nbytes // bands)
    assert winograd._bands(7, x.nbytes) == (-(-7 // bands), bands)
    assert winograd._bands(7, 2 * x.nbytes) == (2, 4)
    plain, fast = (
        conv(features=DEEP_GRAD, kernel_size=(3, 3)) for conv in (nn.Conv, winograd.WinogradConv)
    )
    variables = plain.init(jax.random.key(1), x)
    variables = {"params": {**variables["params"], "bias": jnp.arange(DEEP_GRAD) / 100}}
    g = jax.random.normal(jax.random.key(2), (*x.shape[:3], DEEP_GRAD))
    want, want_grads = _values_and_grads(plain, variables, x, g)
    got, got_grads = _values_and_grads(fast, variables, x, g)
    for values in (got, fast.apply(variables, x)):  # differentiated, and not
        np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_correlate_turned_equals_correlate_with_the_turned_kernel():
    # The input gradient's transform, taken from the kernel's own (TURNED_ROWS), against the
    # transform of the kernel turned 180 degrees with its channels swapped.
    x = jax.random.normal(jax.random.key(0), (1, 7, 6, 5))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
    turned = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    padding = ((2, 1), (0, 2))
    got = winograd.correlate(x, kernel, padding, None, turned=True)
    want = winograd.correlate(x, turned, padding, None)
    assert got.shape == (1, 8, 6, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(jnp.abs(want).max()))


def test_winograd_conv_can_keep_xla_forward_values_exactly_where_differentiated():
    # What the reference geometry relies on: equal inputs give exactly equal outputs where the
    # layer is differentiated, so its max-pooling ties route the gradients as on the plain
    # path; only the gradients are Winograd's. Not differentiated, the forward pass is
    # Winograd's: exactly what the default layer computes, not XLA's values.
    x = jax.random.normal(jax.random.key(0), (1, 6, 8, DEEP))
    plain = nn.Conv(DEEP_GRAD, (3, 3), padding=1)  # deep enough for a Winograd input gradient
    fast = winograd.WinogradConv(DEEP_GRAD, (3, 3), padding=1, xla_forward_under_grad=True)
    variables = plain.init(jax.random.key(1), x)
    g = jax.random.normal(jax.random.key(2), plain.apply(variables, x).shape)
    want, want_grads = _values_and_grads(plain, variables, x, g)
    got, got_grads = _values_and_grads(fast, variables, x, g)
    np.testing.assert_array_equal(got, want)
    inference = fast.apply(variables, x)
    np.testing.assert_array_equal(
        inference, winograd.WinogradConv(DEEP_GRAD, (3, 3), padding=1).apply(variables, x)
    )
    assert not np.array_equal(inference, want)
    np.testing.assert_allclose(inference, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    x = jnp.zeros((1, 16, 16, DEEP))  # large enough for the transforms' additions not to count
    assert _grad_flops(fast, x) < 0.75 * _grad_flops(plain, x)


def test_winograd_forward_pass_from_fewer_channels_where_differentiated():
    # Between MIN_CHANNELS_UNDER_GRAD and MIN_CHANNELS input channels, a training forward pass
    # is Winograd's (close to XLA's values, not equal), an inference one exactly XLA's.
    channels = winograd.MIN_CHANNELS_UNDER_GRAD
    assert channels < winograd.MIN_CHANNELS
    x = jax.random.normal(jax.random.key(0), (1, 6, 8, channels))
    plain = nn.Conv(6, (3, 3), padding=1)
    fast = winograd.WinogradConv(6, (3, 3), padding=1)
    variables = plain.init(jax.random.key(1), x)
    want = plain.apply(variables, x)
    np.testing.assert_array_equal(fast.apply(variables, x), want)
    trained, _ = jax.vjp(fast.apply, variables, x)
    assert not np.array_equal(trained, want)
    np.testing.assert_allclose(trained, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_winograd_conv_in_bfloat16_stays_close_to_float32():
    x = jax.random.normal(jax.random.key(0), (1, 12, 10, 8))
    plain = nn.Conv(8, (3, 3), padding=1)
    fast = winograd.WinogradConv(8, (3, 3), padding=1, dtype=jnp.bfloat16)
    variables = plain.init(jax.random.key(1), x)
    want = plain.apply(variables, x)
    got = fast.apply(variables, x)
    assert got.dtype == jnp.bfloat16
    # bfloat16 keeps 8 bits of mantissa: about 1% of the output's scale.
    np.testing.assert_allclose(
        got.astype(jnp.float32), want, atol=0.02 * float(jnp.abs(want).max())
    )


def test_winograd_conv_refuses_what_it_does_not_compute():
    x = jnp.zeros((1, 6, 6, 2))
    for kernel_size, options in (
        ((5, 5), {}),
        ((1, 1), {}),
        ((3, 3), dict(padding=3)),
        ((3, 3), dict(strides=2)),
        ((3, 3), dict(use_bias=False)),
    ):
        with pytest.raises(ValueError, match="supports"):
            winograd.WinogradConv(2, kernel_size, **options).init(jax.random.key(0), x)


def _flops(module, x):
    variables = module.init(jax.random.key(0), x)
    compiled = jax.jit(module.apply).lower(variables, x).compile()
    return compiled.cost_analysis()["flops"]


def _grad_flops(module, x):
    """FLOPs of the gradients of a sum of `module`'s outputs, w.r.t. its parameters and x."""
    variables = module.init(jax.random.key(0), x)
    grad = jax.grad(lambda v, x: module.apply(v, x).sum(), argnums=(0, 1))
    return jax.jit(grad).lower(variables, x).compile().cost_analysis()["flops"]


def test_winograd_conv_does_fewer_multiplications():
    # What the layer is for: F(2x2, 3x3) multiplies 16 times per 2x2 outputs and channel
    # pair where the direct convolution multiplies 36 times
    # (0.44x), and XLA counts the transforms' additions too.
    x = jnp.zeros((1, 16, 16, DEEP))
    direct = _flops(nn.Conv(64, (3, 3), padding=1), x)
    assert _flops(winograd.WinogradConv(64, (3, 3), padding=1), x) < 0.6 * direct
    # An input of fewer channels runs XLA's own convolution forwards; its kernel gradient
    # is still Winograd's (forward 1, input gradient 1, kernel gradient 0.44 of direct's).
    x = jnp.zeros((1, 16, 16, DEEP // 2))
    plain, fast = nn.Conv(64, (3, 3), padding=1), winograd.WinogradConv(64, (3, 3), padding=1)
    assert _flops(fast, x) == _flops(plain, x)
    assert _grad_flops(fast, x) < 0.9 * _grad_flops(plain, x)


def test_backward_does_not_keep_the_forward_tiles_alive():
    # The kernel gradient transforms the tiles of each layer's input again, tied to the
    # output gradient: shared with the forward pass they would stay alive between the two
    # passes, four times every layer's input. With them tied, a stack of Winograd layers
    # keeps no more than a stack of ConvWithOrderedGrads, whose backward does the same.
    x = jnp.zeros((1, 64, 64, 16))
    tiles_of_all_layers = 4 * 4 * x.size * 4  # 4 layers, tiles 4x the input, float32
    excess = conv_stack_grad_temporaries(winograd.WinogradConv, x) - conv_stack_grad_temporaries(
        layers.ConvWithOrderedGrads, x
    )
    assert excess < tiles_of_all_layers / 2
