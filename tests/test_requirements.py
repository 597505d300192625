"""requirements-colab.txt, checked offline against the installed distributions' metadata.

tools/check_colab_requirements.py is the online check (a pip dry run on top of the runtime).
"""

import importlib.metadata
import pathlib
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNTIME_NAMES = {"jax", "jaxlib", "tensorflow", "tensorflow-cpu", "tf-nightly"}


def _requirements(name: str) -> list[Requirement]:
    lines = (ROOT / name).read_text().splitlines()
    return [
        Requirement(line) for line in lines if line.strip() and not line.startswith(("#", "-r"))
    ]


def _stated_runtime() -> dict[str, str]:
    text = (ROOT / "requirements-colab.txt").read_text()
    pins = re.search(r"^# runtime: (.+)$", text, re.M)[1].split()
    return dict(pin.split("==") for pin in pins)


def _runtime_requirements(requirement: Requirement) -> list[Requirement]:
    """What the installed distribution of `requirement` asks of jax, jaxlib or TensorFlow."""
    requires = importlib.metadata.distribution(requirement.name).requires or []
    parsed = [Requirement(r) for r in requires]
    return [
        r
        for r in parsed
        if canonicalize_name(r.name) in RUNTIME_NAMES
        and (r.marker is None or r.marker.evaluate({"extra": ""}))
    ]


def test_no_line_names_the_runtime():
    names = {canonicalize_name(r.name) for r in _requirements("requirements-colab.txt")}
    assert not names & RUNTIME_NAMES


def test_the_stated_runtime_is_the_tested_one():
    runtime = _stated_runtime()
    assert set(runtime) == {"jax", "jaxlib", "tensorflow"}
    locked = {canonicalize_name(r.name): r for r in _requirements("requirements.txt")}
    assert str(locked["jax"].specifier) == f"=={runtime['jax']}"
    assert str(locked["jaxlib"].specifier) == f"=={runtime['jaxlib']}"
    # The lock installs TensorFlow's CPU build, the same release.
    assert str(locked["tensorflow-cpu"].specifier) == f"=={runtime['tensorflow']}"


def test_every_line_allows_the_tested_version_and_jax_users_are_pinned():
    locked = {canonicalize_name(r.name): r for r in _requirements("requirements.txt")}
    for requirement in _requirements("requirements-colab.txt"):
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed), (requirement, installed)
        assert locked[canonicalize_name(requirement.name)].specifier.contains(installed)
        if _runtime_requirements(requirement):
            # A newer release could ask for a newer jax: only an exact pin keeps pip off it.
            assert str(requirement.specifier) == f"=={installed}", requirement


def test_the_pinned_releases_accept_the_stated_runtime():
    runtime = _stated_runtime()
    checked = 0
    for requirement in _requirements("requirements-colab.txt"):
        for needs in _runtime_requirements(requirement):
            version = runtime[canonicalize_name(needs.name).replace("-cpu", "")]
            assert needs.specifier.contains(version), (requirement, needs, version)
            checked += 1
    assert checked >= 5  # flax, optax (jax, jaxlib), orbax-checkpoint, clu (jax, jaxlib)
