import os
import subprocess
import sys

from fcn_jax import xla_setup


def test_default_flags_added_and_user_flags_kept():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    flags = xla_setup.add_default_xla_flags(env)
    assert env["XLA_FLAGS"] == flags
    assert "--xla_force_host_platform_device_count=2" in flags
    assert "--xla_cpu_experimental_ynn_fusion_type=" in flags
    # Calling again adds nothing; a user's own value of the flag wins.
    assert xla_setup.add_default_xla_flags(env) == flags
    user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    flags = xla_setup.add_default_xla_flags(user).split()
    assert [f for f in flags if "ynn_fusion_type" in f] == [
        "--xla_cpu_experimental_ynn_fusion_type=dot"
    ]
    assert "--xla_cpu_copy_insertion_use_region_analysis=true" in flags


def test_importing_fcn_jax_sets_flags_that_xla_accepts():
    # A fresh interpreter: XLA must start with the flags (an unknown flag would abort it).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = (
        "import os, fcn_jax, jax; jax.numpy.ones(2).block_until_ready(); "
        "print(os.environ['XLA_FLAGS'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    for flag in xla_setup.CPU_FLAGS:
        assert flag in out.stdout
