"""Writes the PyTorch parity fixtures of the course-notes geometry (tests/test_simple_models.py).

Run from the repository root with an interpreter that has torch (the test suite itself never
needs torch); docs/development.md says how to set `FCN_TORCH_PYTHON`:

    "$FCN_TORCH_PYTHON" tools/make_simple_parity_fixtures.py

Output, in tests/testdata/parity/ (all small: width 1/64, 5 classes), next to the reference
geometry's fixtures of tools/make_parity_fixtures.py, which it leaves alone:

* `simple_<variant>_random.pth` for fcn32s, fcn16s, fcn8s: a state_dict of
  tools/torch_simple_reference.py with random non-zero weights and biases everywhere, and
  random deconvolution kernels: asymmetric in space and across channels, so that a missing
  kernel flip or an in/out transpose fails parity. fcn16s is in torch's legacy format, the
  others in the zip format.
* `simple_<variant>_random_logits.npy`: their logits (N, C, H, W) for `simple_input.npy`
  (1, 3, 64, 96): sides that are multiples of 32, not square. Computed in float64.
* `simple_staged_fcn16s_logits.npy` / `simple_staged_fcn8s_logits.npy`: logits of a simple
  FCN-16s initialised from simple_fcn32s_random (copy by name) and of an FCN-8s initialised
  from simple_fcn16s_random.
"""

import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_simple_reference as ref  # noqa: E402
from make_parity_fixtures import NUM_CLASSES, OUT, WIDTH, logits, randomise, save  # noqa: E402
from torch_reference import copy_by_name  # noqa: E402

INPUT_SHAPE = (1, 3, 64, 96)
LEGACY = {"fcn16s"}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(20261201)
    images = torch.randn(INPUT_SHAPE, generator=generator)
    np.save(OUT / "simple_input.npy", images.numpy())
    models = {}
    for variant in ref.VARIANTS:
        model = ref.build_model(variant, NUM_CLASSES, WIDTH)
        randomise(model, True, generator)
        stem = f"simple_{variant}_random"
        save(model.state_dict(), OUT / f"{stem}.pth", legacy=variant in LEGACY)
        out = logits(model, images)
        assert out.shape == (INPUT_SHAPE[0], NUM_CLASSES, *INPUT_SHAPE[2:]), out.shape
        np.save(OUT / f"{stem}_logits.npy", out)
        models[variant] = model
        print(f"{stem:24s} logits std {out.std():.3g} max|.| {np.abs(out).max():.3g}")
    for target, source in (("fcn16s", "fcn32s"), ("fcn8s", "fcn16s")):
        model = ref.build_model(target, NUM_CLASSES, WIDTH)
        copy_by_name(model, models[source])
        np.save(OUT / f"simple_staged_{target}_logits.npy", logits(model, images))
    written = sorted(OUT.glob("simple_*"))
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files, {total / 1e3:.0f} kB, into {OUT}")


if __name__ == "__main__":
    main()
