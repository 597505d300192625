"""Tests for the course-notes geometry (fcn_jax/models/simple.py) and its weights.

Parity fixtures `simple_*` in tests/testdata/parity/ come from
tools/make_simple_parity_fixtures.py (PyTorch model in tools/torch_simple_reference.py, width
1/64, 5 classes, input 64x96, random asymmetric deconvolution kernels). Parity measure as in
tests/test_weights.py: max|jax - torch| / max|torch| <= 1e-4.
"""

import dataclasses
import functools
import logging
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import models, weights, winograd
from fcn_jax.models import simple

DATA = pathlib.Path(__file__).parent / "testdata" / "parity"
VARIANTS = ("fcn32s", "fcn16s", "fcn8s")
NUM_CLASSES = 5
WIDTH = 1 / 64
RTOL = 1e-4
UPSAMPLING = {
    "fcn32s": {"upscore": 64},
    "fcn16s": {"upscore2": 4, "upscore16": 32},
    "fcn8s": {"upscore2": 4, "upscore_pool4": 4, "upscore8": 16},
}


def relative_error(actual, expected) -> float:
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


@functools.cache
def images() -> np.ndarray:
    return np.load(DATA / "simple_input.npy").transpose(0, 2, 3, 1)  # NCHW -> NHWC


def simple_model(name: str, **options):
    return models.get_model(name, NUM_CLASSES, "simple", width=WIDTH, **options)


def logits_nchw(name: str, variables: dict, **options) -> np.ndarray:
    return np.asarray(simple_model(name, **options).apply(variables, images())).transpose(
        0, 3, 1, 2
    )


def load(name: str, **options) -> dict:
    path = DATA / f"simple_{name}_random.pth"
    return weights.load_pytorch_fcn(path, name, geometry="simple", **options)


def random_variables(model, seed=0) -> dict:
    """Random values for every variable (numpy: no compilation per shape)."""
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: 0.3 * rng.standard_normal(x.shape, np.float32), shapes)


# ---------------------------------------------------------------------------------------------
# Parity with the PyTorch model written from the issue
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast_paths", ["all", "none"])
@pytest.mark.parametrize("name", VARIANTS)
def test_parity_with_pytorch_simple_model(name, fast_paths):
    expected = np.load(DATA / f"simple_{name}_random_logits.npy")
    assert np.abs(expected).max() > 0.1  # random, non-zero weights: a real signal
    out = logits_nchw(name, load(name), fast_paths=fast_paths)
    assert out.shape == expected.shape == (1, NUM_CLASSES, 64, 96)
    assert relative_error(out, expected) <= RTOL


def test_fixtures_cover_both_file_formats():
    assert {zipfile.is_zipfile(DATA / f"simple_{n}_random.pth") for n in VARIANTS} == {
        True,
        False,
    }


@pytest.mark.parametrize("name", VARIANTS)
def test_random_deconv_fixture_needs_the_spatial_flip(name):
    variables = load(name)
    for layer in UPSAMPLING[name]:
        kernel = np.asarray(variables["upsampling"][layer]["kernel"])
        assert not np.allclose(kernel, kernel[::-1, ::-1])
        assert not np.allclose(kernel, kernel.transpose(0, 1, 3, 2))
        layer_vars = variables["upsampling"][layer]
        layer_vars["kernel"] = layer_vars["kernel"][::-1, ::-1]
    expected = np.load(DATA / f"simple_{name}_random_logits.npy")
    assert relative_error(logits_nchw(name, variables), expected) > 100 * RTOL


def test_learnable_upsampling_puts_kernels_in_params():
    variables = load("fcn8s", learnable_upsampling=True)
    assert set(variables) == {"params"}
    assert set(UPSAMPLING["fcn8s"]) <= set(variables["params"])
    out = logits_nchw("fcn8s", variables, learnable_upsampling=True)
    assert relative_error(out, np.load(DATA / "simple_fcn8s_random_logits.npy")) <= RTOL


@pytest.mark.slow
@pytest.mark.parametrize("target, source", [("fcn16s", "fcn32s"), ("fcn8s", "fcn16s")])
def test_staging_matches_pytorch_copy_by_name(target, source):
    fresh = models.init_variables(simple_model(target), jax.random.key(0))
    staged = weights.stage_variables(load(source), fresh)
    expected = np.load(DATA / f"simple_staged_{target}_logits.npy")
    assert relative_error(logits_nchw(target, staged), expected) <= RTOL


# ---------------------------------------------------------------------------------------------
# Geometry: layers, sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_layers_and_collections(name):
    model = models.get_model(name, 21, geometry="simple")
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    params, upsampling = variables["params"], variables["upsampling"]
    assert params["fc6"]["kernel"].shape == (1, 1, 512, 4096)
    assert params["fc7"]["kernel"].shape == (1, 1, 4096, 4096)
    assert params["score_fr"]["kernel"].shape == (1, 1, 4096, 21)
    assert {k: v["kernel"].shape[0] for k, v in upsampling.items()} == UPSAMPLING[name]
    convs = [k for k in params if k.startswith("conv")]
    assert len(convs) == 13 and params["conv1_1"]["kernel"].shape == (3, 3, 3, 64)


def test_initial_heads_are_zero_scores_and_bilinear_kernels():
    model = simple_model("fcn8s")
    variables = models.init_variables(model, jax.random.key(0))
    for layer in ("score_fr", "score_pool4", "score_pool3"):
        assert not np.any(np.asarray(variables["params"][layer]["kernel"]))
    kernel = variables["upsampling"]["upscore8"]["kernel"]
    np.testing.assert_array_equal(kernel, models.bilinear_kernel(16, NUM_CLASSES))


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("hw", [(32, 32), (64, 96), (512, 512)])
def test_output_size_equals_input_size_for_multiples_of_32(name, hw):
    model = models.get_model(name, 21, geometry="simple")
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    images = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    out = jax.eval_shape(model.apply, variables, images)
    assert out.shape == (2, *hw, 21) and out.dtype == jnp.float32


@pytest.mark.parametrize("hw", [(1, 1), (37, 45), (64, 70)])
def test_other_sizes_are_padded_to_a_multiple_of_32_and_cropped_back(hw):
    model = models.get_model("fcn8s", 3, geometry="simple", width=1 / 32)
    variables = random_variables(model)
    x = jax.random.normal(jax.random.key(2), (1, *hw, 3))
    out = model.apply(variables, x)
    assert out.shape == (1, *hw, 3)
    padded = [simple.padded_side(s) for s in hw]
    x_padded = jnp.pad(x, ((0, 0), (0, padded[0] - hw[0]), (0, padded[1] - hw[1]), (0, 0)))
    expected = model.apply(variables, x_padded)[:, : hw[0], : hw[1]]
    np.testing.assert_allclose(out, expected, atol=1e-6 * float(jnp.abs(expected).max()))


@pytest.mark.parametrize("name", VARIANTS)
def test_sizes_on_a_canvas_equal_the_own_size_run(name):
    model = models.get_model(name, 3, geometry="simple", width=1 / 32)
    variables = random_variables(model)
    canvas = jax.random.normal(jax.random.key(3), (3, 96, 128, 3))
    sizes = np.array([[37, 45], [96, 128], [64, 33]], np.int32)
    out = jax.jit(model.apply)(variables, canvas, sizes)
    assert out.shape == (3, 96, 128, 3)
    for i, (h, w) in enumerate(sizes):
        own = model.apply(variables, canvas[i : i + 1, :h, :w])
        assert float(jnp.abs(own).max()) > 0.1
        np.testing.assert_allclose(out[i, :h, :w], own[0], atol=1e-5 * float(jnp.abs(own).max()))
    # Without sizes the canvas contents beyond an image leak into it.
    plain = model.apply(variables, canvas[:1])
    assert relative_error(plain[0, :37, :45], np.asarray(out[0, :37, :45])) > 1e-3


def test_sizes_on_a_canvas_hold_for_the_winograd_convolutions():
    # At a quarter width blocks 4 and 5 have 128 channels, enough for a Winograd forward pass
    # (fcn_jax.winograd.MIN_CHANNELS): its logits keep the sizes' promise too.
    model = models.get_model("fcn8s", 3, geometry="simple", width=1 / 4, fast_paths="all")
    assert model.fast.winograd and model.channels(512) >= winograd.MIN_CHANNELS
    variables = random_variables(model)
    canvas = jax.random.normal(jax.random.key(3), (2, 96, 128, 3))
    sizes = np.array([[37, 45], [64, 33]], np.int32)
    out = jax.jit(model.apply)(variables, canvas, sizes)
    for i, (h, w) in enumerate(sizes):
        own = model.apply(variables, canvas[i : i + 1, :h, :w])
        np.testing.assert_allclose(out[i, :h, :w], own[0], atol=1e-5 * float(jnp.abs(own).max()))


@pytest.mark.parametrize("recompute", [False, True])
def test_recomputing_conv1_1_keeps_nothing_of_its_output_for_the_backward_pass(recompute):
    # What fast_paths.recompute_conv1_1 is for: the residuals a vjp keeps between the passes
    # (the leaves of its backward function) include conv1_1's output only without it.
    model = models.get_model("fcn8s", 3, geometry="simple", width=1 / 8, fast_paths="all")
    model = model.clone(fast=dataclasses.replace(model.fast, recompute_conv1_1=recompute))
    variables = random_variables(model)
    images = jax.random.normal(jax.random.key(1), (1, 64, 96, 3))
    _, backward = jax.vjp(lambda v: model.apply(v, images), variables)
    conv1_1_output = (1, 64, 96, model.channels(64))
    kept = {leaf.shape for leaf in jax.tree.leaves(backward)}
    assert (conv1_1_output in kept) is not recompute
    assert (1, 64, 96, 3) in kept  # the image, which the recomputation starts from


def test_dropout_only_in_training():
    model = simple_model("fcn32s")
    variables = load("fcn32s")
    x = images()
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
    train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    assert relative_error(train, np.asarray(model.apply(variables, x))) > 1e-3


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = simple_model("fcn16s", dtype=jnp.bfloat16)
    out = model.apply(load("fcn16s"), images())
    assert out.dtype == jnp.float32
    assert relative_error(out, logits_nchw("fcn16s", load("fcn16s")).transpose(0, 2, 3, 1)) < 0.1


# ---------------------------------------------------------------------------------------------
# get_model
# ---------------------------------------------------------------------------------------------


def test_get_model_geometry_dispatch_and_errors():
    assert isinstance(models.get_model("fcn8s"), models.FCN)
    assert isinstance(models.get_model("fcn8s", geometry="simple"), models.SimpleFCN)
    with pytest.raises(ValueError, match="reference geometry only"):
        models.get_model("fcn8s_atonce", geometry="simple")
    with pytest.raises(ValueError, match="unknown geometry 'course'"):
        models.get_model("fcn8s", geometry="course")
    with pytest.raises(ValueError, match="fast_paths"):
        models.get_model("fcn8s", geometry="simple", fast_paths="some")
    with pytest.raises(ValueError, match="unknown model option"):
        models.get_model("fcn8s", geometry="simple", frame=True)
    with pytest.raises(ValueError, match="width"):
        models.get_model("fcn8s", geometry="simple", width=0)


# ---------------------------------------------------------------------------------------------
# VGG16 into the simple geometry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_vgg16_loads_every_conv_and_initialises_fc6_fc7(name, caplog):
    path = DATA / "vgg16_tv.pth"  # width 1/64, torchvision layout (make_parity_fixtures.py)
    state = weights.read_state_dict(path)
    # The absl logger's own level: TF's SavedModel code (tests/test_export.py) leaves it set.
    with caplog.at_level(logging.INFO, logger="absl"):
        variables = weights.load_vgg16(path, name, NUM_CLASSES, geometry="simple")
    assert "fc6, fc7 initialised" in caplog.text
    params = variables["params"]
    index = 0
    for block, num_convs, _ in models.VGG16_BLOCKS:
        for i in range(1, num_convs + 1):
            kernel = state[f"features.{index}.weight"].transpose(2, 3, 1, 0)
            np.testing.assert_array_equal(params[f"conv{block}_{i}"]["kernel"], kernel)
            np.testing.assert_array_equal(
                params[f"conv{block}_{i}"]["bias"], state[f"features.{index}.bias"]
            )
            index += 2
        index += 1
    # fc6 / fc7: He normal (std sqrt(2 / fan_in)), zero biases; not VGG's fc weights.
    fc6, fc7 = params["fc6"]["kernel"], params["fc7"]["kernel"]
    assert fc6.shape == (1, 1, 8, 64) and fc7.shape == (1, 1, 64, 64)
    assert abs(float(jnp.std(fc7)) - (2 / 64) ** 0.5) < 0.03
    assert not np.any(np.asarray(params["fc6"]["bias"]))
    model = simple_model(name)
    reference = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    assert jax.tree.structure(variables) == jax.tree.structure(reference)
    assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(lambda x: x.shape, reference)
    out = model.apply(variables, images())
    assert out.shape == (1, 64, 96, NUM_CLASSES)


def test_vgg16_simple_fc_init_follows_rng():
    path = DATA / "vgg16_tv.pth"
    a = weights.load_vgg16(path, "fcn32s", NUM_CLASSES, geometry="simple")
    b = weights.load_vgg16(path, "fcn32s", NUM_CLASSES, geometry="simple", rng=jax.random.key(7))
    assert not np.allclose(a["params"]["fc6"]["kernel"], b["params"]["fc6"]["kernel"])
    np.testing.assert_array_equal(
        a["params"]["conv5_3"]["kernel"], b["params"]["conv5_3"]["kernel"]
    )


def test_reference_checkpoint_does_not_fit_the_simple_geometry():
    with pytest.raises(ValueError, match="wrong shape for fc6.weight"):
        weights.load_pytorch_fcn(DATA / "fcn32s_random.pth", "fcn32s", geometry="simple")
