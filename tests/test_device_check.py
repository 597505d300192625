"""benchmarks/device_check.py in its tiny mode, on one CPU device."""

import re

import pytest

from tests.helpers import run_python


@pytest.mark.slow
def test_tiny_device_check_fills_both_tables():
    result = run_python(
        *("-m", "benchmarks.device_check", "--tiny", "--budget-s=1e9"),
        timeout=1200,
        JAX_DISABLE_MOST_OPTIMIZATIONS="true",  # compiles dominate the tiny run
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for trick in ("fused_pool", "matmul_grads: conv1_1", "matmul_grads: fc6", "subpixel"):
        row = re.search(
            rf"^\| {trick}[^|]* \| float32 \|.*\| ([0-9.e+-]+) \| - \| - \|$", out, re.M
        )
        assert row, out
        assert float(row[1]) < 1e-4  # in float32 each trick computes the plain path's gradients
        assert re.search(rf"^\| {trick}[^|]* \| bfloat16 \| [0-9.]+ \| [0-9.]+ \|", out, re.M), out
    assert re.search(r"^\| all tricks: train step \| bfloat16 \| [0-9.]+ \| [0-9.]+ \|", out, re.M)
    for dtype in ("bfloat16", "float32"):
        for mode in ("train", "eval"):
            row = re.search(rf"^\| {mode} \| 2 \| {dtype} \| ([0-9.]+) \| ([0-9.]+) \|", out, re.M)
            assert row and float(row[2]) > 0, out
    assert "skipped" not in out
