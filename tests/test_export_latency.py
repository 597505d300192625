"""benchmarks/export_latency.py: its arguments and a tiny run, as a user runs it."""

import subprocess

import pytest

from benchmarks import export_latency
from tests.helpers import run_python, usage_error


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_python("-m", "benchmarks.export_latency", *args)


@pytest.mark.parametrize(
    "argument, message",
    [
        ("--runs=0", "--runs: 0: must be at least 1"),
        ("--size=375", "'375': expected HxW"),
        ("--size=600x400", "does not fit --canvas"),
    ],
)
def test_bad_arguments_are_refused(argument, message, capsys):
    assert message in usage_error(export_latency.main, [argument], capsys)


@pytest.mark.slow
def test_tiny_run_prints_every_runtime_and_the_artifact_sizes():
    result = _run("--width=0.03125", "--canvas=16x16", "--size=16x12", "--runs=1", "--batch=2")
    assert result.returncode == 0, result.stderr
    for row in (
        "| model.apply (own size) |",
        "| jax.export (model.stablehlo) |",
        "| TF SavedModel (serving_default) |",
        "saved_model: ",
        "stablehlo: ",
    ):
        assert row in result.stdout
