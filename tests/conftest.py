"""Test-session setup: simulated CPU devices, quiet TensorFlow, a throwaway temp dir.

All of it must happen before JAX or TensorFlow is imported, hence at module import time.
"""

import os
import tempfile

# Four simulated CPU devices so data-parallel code is exercised (set before the first JAX
# computation, or XLA silently ignores it).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# TFDS leaves empty tmp*tfds folders in the temp dir on every prepare.
_TMP = tempfile.mkdtemp(prefix="fcn_jax_tests_")
os.environ["TMPDIR"] = _TMP
tempfile.tempdir = _TMP

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir with `synthetic_shapes` built once for the whole session."""
    import tensorflow_datasets as tfds

    import fcn_jax.datasets  # noqa: F401

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("synthetic_shapes", data_dir=data_dir).download_and_prepare()
    return data_dir
