"""Tests for fcn_jax.fast_paths: which trick runs for which option and backend."""

import jax
import pytest

from fcn_jax import fast_paths


def test_tricks_and_options():
    assert fast_paths.TRICKS == ("frame", "fused_pool", "matmul_grads", "subpixel")
    assert fast_paths.OPTIONS == ("auto", "all", "none")
    for trick in fast_paths.TRICKS:
        assert fast_paths.TRICK_INFO[trick].doc


@pytest.mark.parametrize("trick", fast_paths.TRICKS)
def test_all_and_none_ignore_the_backend(trick):
    for platforms in (("cpu",), ("cuda",), ("tpu",)):
        with fast_paths.lowering_for(*platforms):
            assert fast_paths.enabled("all", trick)
            assert not fast_paths.enabled("none", trick)


@pytest.mark.parametrize("trick", fast_paths.TRICKS)
def test_auto_is_on_for_cpu_only(trick):
    assert jax.default_backend() == "cpu"  # the test suite runs on the CPU
    assert fast_paths.enabled("auto", trick)
    for platform in ("cuda", "rocm", "gpu", "tpu"):
        with fast_paths.lowering_for(platform):
            assert not fast_paths.enabled("auto", trick)
    with fast_paths.lowering_for("cpu", "cuda"):  # a trick must win on every platform
        assert not fast_paths.enabled("auto", trick)
    assert fast_paths.enabled("auto", trick)  # the context is gone again


def test_lowering_for_nests_and_restores():
    with fast_paths.lowering_for("tpu"):
        with fast_paths.lowering_for("cpu"):
            assert fast_paths.target_platforms() == ("cpu",)
        assert fast_paths.target_platforms() == ("tpu",)
    assert fast_paths.target_platforms() == ("cpu",)


@pytest.mark.parametrize(
    "call",
    [
        lambda: fast_paths.enabled("fast", "frame"),
        lambda: fast_paths.enabled("auto", "winograd"),
        lambda: fast_paths.lowering_for().__enter__(),
        lambda: fast_paths.lowering_for("metal").__enter__(),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
