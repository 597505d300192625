"""Writes the PyTorch parity fixtures used by tests/test_weights.py.

Run from the repository root with an interpreter that has torch (the test suite itself never
needs torch); docs/development.md says how to set `FCN_TORCH_PYTHON`:

    "$FCN_TORCH_PYTHON" tools/make_parity_fixtures.py

Output, in tests/testdata/parity/ (all small: width 1/64, 5 classes):

* `<variant>_<deconv>.pth` for the 4 variants x deconv in {bilinear, random}: a state_dict of
  `tools/torch_reference.py` with random non-zero conv weights and biases, random score
  layers and either bilinear or random (asymmetric, cross-channel) deconvolution kernels.
  Formats alternate between torch's zip and legacy serialisation so both readers are tested
  with both kernel types.
* `<variant>_<deconv>_logits.npy`: the reference logits (N, C, H, W) for `input.npy`
  (1, 3, 37, 45): odd sizes exercise ceil pooling and the crops (§2.5). Computed in float64.
* `trainer_checkpoint.pth`: a pytorch-fcn trainer checkpoint (§6.2) whose
  `model_state_dict` is the fcn8s_random state_dict.
* `staged_fcn16s_logits.npy` / `staged_fcn8s_logits.npy`: logits of a reference FCN-16s
  initialised from fcn32s_bilinear (copy by name, §3.2) and of an FCN-8s initialised from
  fcn16s_bilinear.
* `vgg16_tv.pth` (zip) + `vgg16_input.npy` + `vgg16_fc7.npy`: a reduced torchvision-layout
  VGG16 state_dict (§6.4) and the fc7 pre-activation computed the torchvision way (convs,
  flatten pool5, Linear) for a 20x24 input, for which pool5 is exactly 7x7.
* `dtypes_zip.pth` / `dtypes_legacy.pth` + `dtypes.npz`: tensors of several dtypes, views and
  non-contiguous strides, with their expected values, for the .pth reader.
"""

import pathlib
import sys

import numpy as np
import torch
from torch.nn import functional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_reference as ref  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "testdata" / "parity"
WIDTH = 1 / 64
NUM_CLASSES = 5
INPUT_SHAPE = (1, 3, 37, 45)
# Which variant/deconv pairs use the legacy (non-zip) format; the others use zip.
LEGACY = {("fcn32s", "random"), ("fcn16s", "bilinear"), ("fcn8s", "random")}
LEGACY |= {("fcn8s_atonce", "bilinear")}


def save(obj: object, path: pathlib.Path, legacy: bool) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def randomise(model: torch.nn.Module, random_deconv: bool, generator: torch.Generator) -> None:
    """Random weights of roughly unit-variance activations; biases non-zero everywhere.

    Serves both geometries' fixture scripts; only the at-once reference has `skip_scales`.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ConvTranspose2d):
                if random_deconv:
                    # Full (in, out, k, k) noise: asymmetric in space and across channels, so
                    # a missing flip or an in/out transpose shows up.
                    w = module.weight
                    fan = w.shape[0] * (w.shape[2] // module.stride[0]) ** 2
                    w.copy_(torch.randn(w.shape, generator=generator) / fan**0.5)
            elif isinstance(module, torch.nn.Conv2d):
                w = module.weight
                fan_in = w.shape[1] * w.shape[2] * w.shape[3]
                gain = 2.0 if name.startswith(("conv", "fc")) else 1.0
                w.copy_(torch.randn(w.shape, generator=generator) * (gain / fan_in) ** 0.5)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
        skip_scales = getattr(model, "skip_scales", None)
        if isinstance(skip_scales, tuple) and skip_scales != (1.0, 1.0):
            # At-once: undo the 0.01 / 0.0001 input scalings in the weights so the skip
            # branches contribute O(1) and a mistake in them cannot hide under the tolerance.
            model.score_pool4.weight.div_(model.skip_scales[0])
            model.score_pool3.weight.div_(model.skip_scales[1])


def logits(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """Forward in float64 (the fixture's float32 weights, exactly widened)."""
    model64 = model.double().eval()
    with torch.no_grad():
        out = model64(images.double()).float().numpy()
    model.float()
    return out


def make_variants(images: torch.Tensor, generator: torch.Generator) -> dict:
    models = {}
    for variant in ref.VARIANTS:
        for deconv in ("bilinear", "random"):
            model = ref.build_model(variant, NUM_CLASSES, WIDTH)
            randomise(model, deconv == "random", generator)
            stem = f"{variant}_{deconv}"
            save(model.state_dict(), OUT / f"{stem}.pth", (variant, deconv) in LEGACY)
            np.save(OUT / f"{stem}_logits.npy", logits(model, images))
            models[stem] = model
    return models


def make_staged(models: dict, images: torch.Tensor) -> None:
    for target, source in (("fcn16s", "fcn32s_bilinear"), ("fcn8s", "fcn16s_bilinear")):
        model = ref.build_model(target, NUM_CLASSES, WIDTH)
        ref.copy_by_name(model, models[source])
        np.save(OUT / f"staged_{target}_logits.npy", logits(model, images))


def make_trainer_checkpoint(models: dict) -> None:
    checkpoint = {
        "epoch": 3,
        "iteration": 12000,
        "arch": "FCN8s",
        "optim_state_dict": {"state": {}, "param_groups": [{"lr": 1e-14, "momentum": 0.99}]},
        "model_state_dict": models["fcn8s_random"].state_dict(),
        "best_mean_iu": np.float64(0.625),
    }
    save(checkpoint, OUT / "trainer_checkpoint.pth", legacy=False)


def torchvision_conv_indices() -> dict[int, list[int]]:
    """Block -> the `features.<index>` of its convolutions in torchvision's VGG16 (§6.4).

    Each convolution is followed by a ReLU and each block by a max-pool; both take an index.
    """
    indices, index = {}, 0
    for block, num_convs, _ in ref.VGG16_BLOCKS:
        indices[block] = list(range(index, index + 2 * num_convs, 2))
        index += 2 * num_convs + 1
    return indices


def vgg_fc7_torchvision_way(state: dict, images: torch.Tensor) -> torch.Tensor:
    """fc7 pre-activation as torchvision's VGG computes it, with FCN's pad-100 first conv.

    For a 20x24 input pool5 is 7x7, so fc6 as a Linear on the (c, h, w)-flattened pool5 is
    what the 7x7 fc6 convolution of the FCN must reproduce (§3.1, §6.4).
    """
    x = images.double()
    for block, indices in torchvision_conv_indices().items():
        for i, index in enumerate(indices):
            pad = ref.CONV1_1_PADDING if (block, i) == (1, 0) else 1
            w = state[f"features.{index}.weight"].double()
            b = state[f"features.{index}.bias"].double()
            x = torch.relu(functional.conv2d(x, w, b, padding=pad))
        x = functional.max_pool2d(x, 2, 2, ceil_mode=True)
    assert x.shape[2:] == (7, 7), x.shape
    x = torch.flatten(x, 1)
    x = torch.relu(
        functional.linear(
            x, state["classifier.0.weight"].double(), state["classifier.0.bias"].double()
        )
    )
    return functional.linear(
        x, state["classifier.3.weight"].double(), state["classifier.3.bias"].double()
    )


def make_vgg(generator: torch.Generator) -> None:
    state, in_ch, conv_indices = {}, 3, torchvision_conv_indices()
    for block, _, channels in ref.VGG16_BLOCKS:
        out_ch = ref.scaled_channels(channels, WIDTH)
        for index in conv_indices[block]:
            fan_in = in_ch * 9
            state[f"features.{index}.weight"] = (
                torch.randn(out_ch, in_ch, 3, 3, generator=generator) * (2 / fan_in) ** 0.5
            )
            state[f"features.{index}.bias"] = 0.1 * torch.randn(out_ch, generator=generator)
            in_ch = out_ch
    fc = ref.scaled_channels(ref.FC_CHANNELS, WIDTH)
    for key, (rows, cols) in {"0": (fc, in_ch * 49), "3": (fc, fc), "6": (10, fc)}.items():
        state[f"classifier.{key}.weight"] = (
            torch.randn(rows, cols, generator=generator) * (2 / cols) ** 0.5
        )
        state[f"classifier.{key}.bias"] = 0.1 * torch.randn(rows, generator=generator)
    images = torch.randn(1, 3, 20, 24, generator=generator)
    save(state, OUT / "vgg16_tv.pth", legacy=False)
    np.save(OUT / "vgg16_input.npy", images.numpy())
    np.save(OUT / "vgg16_fc7.npy", vgg_fc7_torchvision_way(state, images).float().numpy())


def make_dtypes() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8 - 1
    tensors = {
        "f32_transposed": base.t(),  # non-contiguous strides
        "f32_row_view": base[2],  # storage offset into a shared storage
        "f32_step_view": base[:, ::3],
        "f64": base.double() * 1e-3,
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i64": torch.arange(-3, 5),
        "i32": torch.arange(4, dtype=torch.int32) * 1000,
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    expected = {
        k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()
    }
    save(tensors, OUT / "dtypes_zip.pth", legacy=False)
    save(tensors, OUT / "dtypes_legacy.pth", legacy=True)
    np.savez(OUT / "dtypes.npz", **expected)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(20240611)
    images = torch.randn(INPUT_SHAPE, generator=generator)
    np.save(OUT / "input.npy", images.numpy())
    models = make_variants(images, generator)
    make_staged(models, images)
    make_trainer_checkpoint(models)
    make_vgg(generator)
    make_dtypes()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    for stem in models:
        out = np.load(OUT / f"{stem}_logits.npy")
        print(f"{stem:24s} logits std {out.std():.3g} max|.| {np.abs(out).max():.3g}")
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1e6:.2f} MB, into {OUT}")


if __name__ == "__main__":
    main()
