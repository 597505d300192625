"""Test-session setup: simulated CPU devices, quiet TensorFlow, a throwaway temp dir.

All of it must happen before JAX or TensorFlow is imported, hence at module import time. The
pytest-xdist worker processes and every subprocess a test starts inherit the environment.
"""

import os
import shutil
import tempfile

# Four simulated CPU devices so data-parallel code is exercised (set before the first JAX
# computation, or XLA silently ignores it).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CPU settings main.py applies, so the tests run what users run.
from fcn_jax import xla_setup  # noqa: E402

xla_setup.add_default_xla_flags()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# TFDS leaves empty tmp*tfds folders in the temp dir on every prepare.
_TMP = tempfile.mkdtemp(prefix="fcn_jax_tests_")
os.environ["TMPDIR"] = _TMP
tempfile.tempdir = _TMP
# One compilation cache for the whole session, shared by both xdist processes and the main.py
# subprocesses: many tests compile the same train and eval steps again. JAX keeps compiles
# over a second; caching the many small eager ones too would cost more than it saves.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_TMP, "jax_cache"))

import pytest  # noqa: E402


def pytest_unconfigure(config: pytest.Config) -> None:
    """Removes this process's temp dir (the main process's holds the workers' and the cache)."""
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture
def fewer_xla_optimizations():
    """Most XLA optimizations off while the test runs: compiles take a half to a third the time.

    For tests whose cost is compiles rather than runs (tiny models, one compile per image
    size or per variant), which compare computations compiled alike: the results are the
    same up to rounding. Not for tests of what XLA's optimizations do (memory, fusions).
    """
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir with `synthetic_shapes` built once for the whole session."""
    import tensorflow_datasets as tfds

    import fcn_jax.datasets  # noqa: F401

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("synthetic_shapes", data_dir=data_dir).download_and_prepare()
    return data_dir


# The files that take longest (`pytest --durations=0`, slowest first): they start first, so
# that with `-n 2 --dist loadfile --no-loadscope-reorder` both processes finish together
# rather than one running a long file alone at the end. The other files keep their order.
LONGEST_FIRST = (
    "test_readme.py",
    "test_fast_paths.py",
    "test_own_data_main.py",
    "test_frame.py",
    "test_steps.py",
    "test_train.py",
    "test_multihost.py",
    "test_multihost_coordination.py",
    "test_notebook.py",
    "test_benchmarks.py",
    "test_sizes.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Puts the tests of LONGEST_FIRST's files first, in that order."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the others, the order stays
