"""Tests for fcn_jax.weights and fcn_jax.torch_pickle (no torch needed).

Parity fixtures in tests/testdata/parity/ come from tools/make_parity_fixtures.py (PyTorch
reference in tools/torch_reference.py, width 1/64, 5 classes, input 37x45). The parity
measure is max|jax - torch| / max|torch| over the whole logit tensor, required <= 1e-4.
"""

import functools
import io
import os
import pathlib
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import torch_pickle, weights
from fcn_jax.models import bilinear_kernel, get_model, init_variables

DATA = pathlib.Path(__file__).parent / "testdata" / "parity"
VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")
NUM_CLASSES = 5
WIDTH = 1 / 64
RTOL = 1e-4


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@functools.cache
def images() -> np.ndarray:
    return np.load(DATA / "input.npy").transpose(0, 2, 3, 1)  # NCHW -> NHWC


def logits_nchw(name: str, variables: dict, **options) -> np.ndarray:
    model = get_model(name, NUM_CLASSES, width=WIDTH, **options)
    return np.asarray(model.apply(variables, images())).transpose(0, 3, 1, 2)


def fixture_logits(stem: str) -> np.ndarray:
    return np.load(DATA / f"{stem}_logits.npy")


# ---------------------------------------------------------------------------------------------
# Parity with the PyTorch reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deconv", ["bilinear", "random"])
@pytest.mark.parametrize("name", VARIANTS)
def test_parity_with_pytorch_reference(name, deconv):
    variables = weights.load_pytorch_fcn(DATA / f"{name}_{deconv}.pth", name)
    expected = fixture_logits(f"{name}_{deconv}")
    assert np.abs(expected).max() > 0.1  # random, non-zero weights: a real signal
    assert relative_error(logits_nchw(name, variables), expected) <= RTOL


def test_fixtures_cover_both_file_formats_for_both_kernel_types():
    formats = {
        deconv: {zipfile.is_zipfile(DATA / f"{n}_{deconv}.pth") for n in VARIANTS}
        for deconv in ("bilinear", "random")
    }
    assert formats == {"bilinear": {True, False}, "random": {True, False}}


def test_random_deconv_fixture_needs_the_spatial_flip():
    """The random kernels are asymmetric, so an unflipped load would fail parity."""
    variables = weights.load_pytorch_fcn(DATA / "fcn16s_random.pth", "fcn16s")
    kernel = np.asarray(variables["upsampling"]["upscore2"]["kernel"])
    assert not np.allclose(kernel, kernel[::-1, ::-1])
    assert not np.allclose(kernel, kernel.transpose(0, 1, 3, 2))  # mixes channels, too
    unflipped = jax.tree.map(lambda x: x, variables)
    for layer in unflipped["upsampling"].values():
        layer["kernel"] = layer["kernel"][::-1, ::-1]
    expected = fixture_logits("fcn16s_random")
    assert relative_error(logits_nchw("fcn16s", unflipped), expected) > 100 * RTOL


def test_learnable_upsampling_puts_kernels_in_params():
    path = DATA / "fcn8s_random.pth"
    variables = weights.load_pytorch_fcn(path, "fcn8s", learnable_upsampling=True)
    assert set(variables) == {"params"}
    assert {"upscore2", "upscore_pool4", "upscore8"} <= set(variables["params"])
    out = logits_nchw("fcn8s", variables, learnable_upsampling=True)
    assert relative_error(out, fixture_logits("fcn8s_random")) <= RTOL


@pytest.mark.slow
def test_variables_match_model_init_structure_and_dtype():
    variables = weights.load_pytorch_fcn(DATA / "fcn8s_atonce_bilinear.pth", "fcn8s_atonce")
    model = get_model("fcn8s_atonce", NUM_CLASSES, width=WIDTH)
    reference = init_variables(model, jax.random.key(0))
    assert jax.tree.structure(variables) == jax.tree.structure(reference)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), variables)
    assert shapes == jax.tree.map(lambda x: (x.shape, x.dtype), reference)


def test_trainer_checkpoint_loads_its_model_state_dict():
    from_trainer = weights.load_pytorch_fcn(DATA / "trainer_checkpoint.pth", "fcn8s")
    bare = weights.load_pytorch_fcn(DATA / "fcn8s_random.pth", "fcn8s")
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), from_trainer, bare))
    checkpoint = torch_pickle.load(DATA / "trainer_checkpoint.pth")
    assert checkpoint["best_mean_iu"] == 0.625 and checkpoint["arch"] == "FCN8s"


def test_num_classes_and_width_are_read_from_the_file():
    state = weights.read_state_dict(DATA / "fcn32s_bilinear.pth")
    implicit = weights.fcn_variables_from_state_dict(state, "fcn32s")
    assert implicit["params"]["score_fr"]["bias"].shape == (NUM_CLASSES,)
    assert implicit["params"]["fc6"]["kernel"].shape == (7, 7, 8, 64)
    with pytest.raises(ValueError, match="wrong shape for score_fr.weight"):
        weights.fcn_variables_from_state_dict(state, "fcn32s", num_classes=21)


# ---------------------------------------------------------------------------------------------
# The .pth reader
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reader_dtypes_strides_and_offsets(fmt):
    path = DATA / f"dtypes_{fmt}.pth"
    assert zipfile.is_zipfile(path) == (fmt == "zip")
    loaded = torch_pickle.load(path)
    expected = np.load(DATA / "dtypes.npz")
    assert set(loaded) == set(expected.files)
    for key in expected.files:
        assert loaded[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(loaded[key], expected[key], err_msg=key)


class _Exploit:
    """Pickles as a call to os.system: what a hostile checkpoint would contain."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_legacy(path: pathlib.Path, obj) -> None:
    with open(path, "wb") as f:
        for header in (torch_pickle.LEGACY_MAGIC_NUMBER, torch_pickle.LEGACY_PROTOCOL_VERSION):
            pickle.dump(header, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True}, f, protocol=2)
        pickle.dump(obj, f, protocol=2)
        pickle.dump([], f, protocol=2)


def _write_zip(path: pathlib.Path, obj) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip])
def test_reader_refuses_arbitrary_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    writer(path, {"conv1_1.weight": _Exploit(marker)})
    with pytest.raises(torch_pickle.UnsupportedPickleError, match="posix.system|nt.system"):
        torch_pickle.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip])
def test_reader_round_trips_plain_values(tmp_path, writer):
    path = tmp_path / "plain.pth"
    obj = {"epoch": 3, "lr": [1e-10, 2e-10], "arch": "FCN32s", "ok": (True, None)}
    writer(path, obj)
    assert torch_pickle.load(path) == obj


def test_reader_rejects_a_non_torch_file(tmp_path):
    path = tmp_path / "text.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="PyTorch"):
        torch_pickle.load(path)


def test_reader_rejects_a_truncated_file(tmp_path):
    data = (DATA / "fcn8s_random.pth").read_bytes()
    assert not zipfile.is_zipfile(io.BytesIO(data))  # legacy: storages at the end
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        torch_pickle.load(path)


# ---------------------------------------------------------------------------------------------
# Missing / extra / wrongly shaped tensors
# ---------------------------------------------------------------------------------------------


def test_every_bad_tensor_is_named_in_one_error():
    state = weights.read_state_dict(DATA / "fcn16s_random.pth")
    del state["score_pool4.bias"]
    state["scale_pool4.weight"] = np.ones(8, np.float32)  # extra (at-once scale, §7.11)
    state["upscore2.weight"] = state["upscore2.weight"][:, :, :3, :]  # wrong shape
    state["fc7.weight"] = state["fc7.weight"].transpose(1, 0, 2, 3)[:, :, :, :1].repeat(2, 3)
    with pytest.raises(ValueError) as info:
        weights.fcn_variables_from_state_dict(state, "fcn16s")
    message = str(info.value)
    for name in ("score_pool4.bias", "scale_pool4.weight", "upscore2.weight", "fc7.weight"):
        assert name in message
    assert "missing score_pool4.bias" in message
    assert "unexpected scale_pool4.weight" in message
    assert "wrong shape for upscore2.weight: (5, 5, 3, 4), expected (5, 5, 4, 4)" in message


def test_a_checkpoint_of_another_variant_is_rejected_by_name():
    with pytest.raises(ValueError) as info:
        weights.load_pytorch_fcn(DATA / "fcn8s_bilinear.pth", "fcn16s")
    message = str(info.value)
    assert "missing upscore16.weight" in message
    for name in ("score_pool3.weight", "score_pool3.bias", "upscore8.weight"):
        assert f"unexpected {name}" in message


def test_a_state_dict_of_integers_is_rejected():
    state = weights.read_state_dict(DATA / "fcn32s_bilinear.pth")
    state["score_fr.bias"] = np.arange(NUM_CLASSES)
    with pytest.raises(ValueError, match="non-float dtype int64 for score_fr.bias"):
        weights.fcn_variables_from_state_dict(state, "fcn32s")


# ---------------------------------------------------------------------------------------------
# VGG16 (torchvision layout) -> FCN
# ---------------------------------------------------------------------------------------------


def _as_learnable(variables: dict) -> dict:
    """Same tensors, upsampling kernels moved into `params` (the learnable layout)."""
    return {"params": {**variables["params"], **variables.get("upsampling", {})}}


def _intermediate(name: str, variables: dict, layer: str, x: np.ndarray) -> np.ndarray:
    """Output of sub-module `layer` (e.g. fc7 before its ReLU).

    Uses the learnable-upsampling layout: fcn_jax.models' frozen (map_variables) upsampling
    fails under `apply(..., mutable=[...])`, which capture_intermediates needs.
    """
    model = get_model(name, NUM_CLASSES, width=WIDTH, learnable_upsampling=True)
    _, state = model.apply(
        _as_learnable(variables), x, capture_intermediates=True, mutable=["intermediates"]
    )
    return np.asarray(state["intermediates"][layer]["__call__"][0])


@pytest.mark.parametrize("name", ["fcn32s", "fcn8s_atonce"])
def test_load_vgg16_matches_torchvision_forward(name):
    variables = weights.load_vgg16(DATA / "vgg16_tv.pth", name, NUM_CLASSES)
    x = np.load(DATA / "vgg16_input.npy").transpose(0, 2, 3, 1)
    expected = np.load(DATA / "vgg16_fc7.npy")  # (1, 64): convs, flatten, Linear, ReLU, Linear
    fc7 = _intermediate(name, variables, "fc7", x)
    assert fc7.shape == (1, 1, 1, expected.shape[1])
    assert relative_error(fc7.reshape(expected.shape), expected) <= RTOL


def test_load_vgg16_reference_head_init():
    variables = weights.load_vgg16(DATA / "vgg16_tv.pth", "fcn8s", num_classes=21)
    params, upsampling = variables["params"], variables["upsampling"]
    for layer in ("score_fr", "score_pool4", "score_pool3"):
        assert not np.any(np.asarray(params[layer]["kernel"])), layer
        assert not np.any(np.asarray(params[layer]["bias"])), layer
        assert params[layer]["kernel"].shape[-1] == 21
    for layer, size in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
        np.testing.assert_array_equal(upsampling[layer]["kernel"], bilinear_kernel(size, 21))
    out = get_model("fcn8s", 21, width=WIDTH).apply(variables, images()[:, :20, :20])
    assert out.shape == (1, 20, 20, 21) and not np.any(np.asarray(out))  # zero scores (§4.2)


def test_fc6_is_the_linear_layer_on_the_chw_flattened_pool5():
    """Direct check of the §3.1 reshape: conv over a 7x7 map == Linear on flatten(c, h, w)."""
    state = weights.read_state_dict(DATA / "vgg16_tv.pth")
    variables = weights.vgg16_variables_from_state_dict(state, "fcn32s", NUM_CLASSES)
    kernel = np.asarray(variables["params"]["fc6"]["kernel"])  # (7, 7, C, 64)
    pool5_nchw = np.random.default_rng(0).normal(size=(1, kernel.shape[2], 7, 7))
    linear = state["classifier.0.weight"] @ pool5_nchw.reshape(-1) + state["classifier.0.bias"]
    conv = np.einsum("hwco,nchw->no", kernel, pool5_nchw) + variables["params"]["fc6"]["bias"]
    np.testing.assert_allclose(conv[0], linear, rtol=1e-5, atol=1e-5)


def test_jcjohnson_vgg16_layout_is_accepted():
    state = weights.read_state_dict(DATA / "vgg16_tv.pth")
    renamed = {
        k.replace("classifier.0.", "classifier.1.").replace("classifier.3.", "classifier.4."): v
        for k, v in state.items()
    }
    ours = weights.vgg16_variables_from_state_dict(state, "fcn16s", NUM_CLASSES)
    theirs = weights.vgg16_variables_from_state_dict(renamed, "fcn16s", NUM_CLASSES)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), ours, theirs))


def test_vgg16_errors_name_the_file_tensors():
    state = weights.read_state_dict(DATA / "vgg16_tv.pth")
    del state["features.0.bias"]
    state["classifier.0.weight"] = state["classifier.0.weight"][:, :-49]
    state["features.31.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        weights.vgg16_variables_from_state_dict(state, "fcn32s", NUM_CLASSES)
    message = str(info.value)
    assert "missing features.0.bias" in message
    assert "wrong shape for classifier.0.weight" in message
    assert "unexpected features.31.weight" in message


def test_an_fcn_checkpoint_is_not_a_vgg16():
    with pytest.raises(ValueError, match="missing features.0.weight"):
        weights.load_vgg16(DATA / "fcn32s_bilinear.pth", "fcn32s", NUM_CLASSES)


# ---------------------------------------------------------------------------------------------
# Staged initialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source_name", "source_file", "target_name", "new_skip"),
    [
        ("fcn32s", "fcn32s_bilinear", "fcn16s", "score_pool4"),
        ("fcn16s", "fcn16s_bilinear", "fcn8s", "score_pool3"),
    ],
)
def test_staged_init(source_name, source_file, target_name, new_skip):
    source = weights.load_pytorch_fcn(DATA / f"{source_file}.pth", source_name)
    target_model = get_model(target_name, NUM_CLASSES, width=WIDTH)
    target = init_variables(target_model, jax.random.key(1))
    staged = weights.stage_variables(source, target)

    assert jax.tree.structure(staged) == jax.tree.structure(target)
    # Same logits as PyTorch's copy-by-name staging of the same source.
    expected = fixture_logits(f"staged_{target_name}")
    assert relative_error(logits_nchw(target_name, staged), expected) <= RTOL
    # The coarse scores are the source's exactly, and the new skip adds nothing yet. (The
    # logits are *not* the source's: 2x-then-16x bilinear is not 32x bilinear.)
    np.testing.assert_array_equal(
        _intermediate(target_name, staged, "score_fr", images()),
        _intermediate(source_name, source, "score_fr", images()),
    )
    assert not np.any(_intermediate(target_name, staged, new_skip, images()))
    if target_name == "fcn8s":  # upscore2 comes from the 16s; upscore_pool4 stays bilinear
        np.testing.assert_array_equal(
            staged["upsampling"]["upscore2"]["kernel"], source["upsampling"]["upscore2"]["kernel"]
        )
        np.testing.assert_array_equal(
            staged["upsampling"]["upscore_pool4"]["kernel"], bilinear_kernel(4, NUM_CLASSES)
        )


def test_staging_across_frozen_and_learnable_upsampling():
    source = weights.load_pytorch_fcn(DATA / "fcn16s_random.pth", "fcn16s")
    model = get_model("fcn8s", NUM_CLASSES, width=WIDTH, learnable_upsampling=True)
    staged = weights.stage_variables(source, init_variables(model, jax.random.key(0)))
    np.testing.assert_array_equal(
        staged["params"]["upscore2"]["kernel"], source["upsampling"]["upscore2"]["kernel"]
    )


def test_staging_shape_mismatch_names_the_tensors():
    source = weights.load_pytorch_fcn(DATA / "fcn32s_bilinear.pth", "fcn32s")
    target = init_variables(get_model("fcn16s", 21, width=WIDTH), jax.random.key(0))
    with pytest.raises(ValueError) as info:
        weights.stage_variables(source, target)
    assert "score_fr.kernel" in str(info.value) and "score_fr.bias" in str(info.value)
    assert "conv1_1" not in str(info.value)
