"""benchmarks/device_check.py in its tiny mode, on one CPU device."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_device_check_fills_both_tables():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--tiny", "--budget-s=1e9"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for trick in ("fused_pool", "matmul_grads: conv1_1", "matmul_grads: fc6", "subpixel"):
        row = re.search(rf"^\| {trick}\S* \| float32 \|.*\| ([0-9.e+-]+) \| - \| - \|$", out, re.M)
        assert row, out
        assert float(row[1]) < 1e-4  # in float32 each trick computes the plain path's gradients
        assert re.search(rf"^\| {trick}\S* \| bfloat16 \| [0-9.]+ \| [0-9.]+ \|", out, re.M), out
    assert re.search(r"^\| all tricks: train step \| bfloat16 \| [0-9.]+ \| [0-9.]+ \|", out, re.M)
    for dtype in ("bfloat16", "float32"):
        for mode in ("train", "eval"):
            row = re.search(rf"^\| {mode} \| 2 \| {dtype} \| ([0-9.]+) \| ([0-9.]+) \|", out, re.M)
            assert row and float(row[2]) > 0, out
    assert "skipped" not in out
