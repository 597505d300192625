import os
import subprocess
import sys

import pytest

from fcn_jax import xla_setup


def test_default_flags_added_and_user_flags_kept():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    flags = xla_setup.add_default_xla_flags(env)
    assert env["XLA_FLAGS"] == flags
    assert "--xla_force_host_platform_device_count=2" in flags
    assert "--xla_cpu_experimental_ynn_fusion_type=" in flags
    # Calling again adds nothing; a user's own value of the flag wins.
    assert xla_setup.add_default_xla_flags(env) == flags
    user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot", "JAX_PLATFORMS": "cpu"}
    flags = xla_setup.add_default_xla_flags(user).split()
    assert [f for f in flags if "ynn_fusion_type" in f] == [
        "--xla_cpu_experimental_ynn_fusion_type=dot"
    ]
    assert "--xla_cpu_copy_insertion_use_region_analysis=true" in flags


def test_the_default_flags_are_accepted_by_xla():
    # A fresh interpreter, as main.py starts: XLA must start with the flags (an unknown flag
    # would abort it).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = (
        "import os; from fcn_jax import xla_setup; xla_setup.add_default_xla_flags(); "
        "import jax; jax.numpy.ones(2).block_until_ready(); print(os.environ['XLA_FLAGS'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    for flag in xla_setup.CPU_FLAGS:
        assert flag in out.stdout


@pytest.mark.parametrize("platforms", ["tpu", "cuda", "cpu,cuda", "rocm"])
def test_no_cpu_flags_for_a_process_that_targets_an_accelerator(platforms):
    env = {"JAX_PLATFORMS": platforms, "XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
    assert not xla_setup.targets_cpu_only(env)
    assert xla_setup.add_default_xla_flags(env) == "--xla_dump_to=/tmp/dump"
    assert xla_setup.add_default_xla_flags({"JAX_PLATFORMS": platforms}) == ""


def test_an_installed_accelerator_plugin_or_libtpu_means_not_cpu_only(tmp_path, monkeypatch):
    assert xla_setup.accelerator_plugins({}) == []  # this test environment has none
    assert xla_setup.targets_cpu_only({})
    # libtpu found through TPU_LIBRARY_PATH, as JAX finds it.
    assert xla_setup.accelerator_plugins({"TPU_LIBRARY_PATH": "/opt/libtpu.so"}) == ["libtpu"]
    assert not xla_setup.targets_cpu_only({"TPU_LIBRARY_PATH": "/opt/libtpu.so"})
    # A GPU plugin laid out like jax-cuda12-plugin: a module of the jax_plugins namespace.
    plugin = tmp_path / "jax_plugins" / "xla_cuda12"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert xla_setup.accelerator_plugins({}) == ["xla_cuda12"]
    assert not xla_setup.targets_cpu_only({})
    assert xla_setup.add_default_xla_flags({}) == ""
    assert xla_setup.targets_cpu_only({"JAX_PLATFORMS": "cpu"})  # an explicit choice wins
