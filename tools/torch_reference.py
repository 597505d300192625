"""PyTorch implementation of the four reference FCN heads, for parity tests and benchmarks.

Written from the specification in docs/reference.md (§1-2), independently of any
existing implementation. Layout is NCHW as in Caffe / PyTorch; module and parameter names are
the reference ones, so `state_dict()` has exactly the keys of §6.3 (e.g. `conv1_1.weight`,
`score_fr.bias`, `upscore2.weight`) and loads published `*_from_caffe.pth` files directly.

Developer tool only: needs torch (the interpreter `FCN_TORCH_PYTHON` of docs/development.md).
The fcn_jax library never imports it.

Example:
    model = build_model("fcn8s", num_classes=21).eval()
    logits = model(torch.zeros(1, 3, 375, 500))  # (1, 21, 375, 500)
"""

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# (block, convs per block, output channels) of VGG16 configuration D (§1).
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
FC_CHANNELS = 4096
CONV1_1_PADDING = 100  # §2.4
# Crop offsets (§2.3, derived in §2.4).
CROP_32S = 19
CROP_POOL4 = 5
CROP_16S = 27
CROP_POOL3 = 9
CROP_8S = 31
# Fixed skip scalings of FCN-8s at-once (§2.3); literal multiplications, no parameters.
ATONCE_POOL4_SCALE = 0.01
ATONCE_POOL3_SCALE = 0.0001
VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce")


def scaled_channels(channels: int, width: float) -> int:
    """Channel count under a width multiplier; the rounding of FCNModel.channels."""
    return max(1, int(round(channels * width)))


def bilinear_weight(channels: int, size: int) -> torch.Tensor:
    """Channel-diagonal bilinear deconvolution weight (C, C, k, k), §2.2."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    profile = 1.0 - np.abs(np.arange(size) - center) / factor
    weight = np.zeros((channels, channels, size, size), np.float64)
    weight[range(channels), range(channels)] = np.outer(profile, profile)
    return torch.from_numpy(weight).float()


def crop(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    """Caffe Crop on NCHW: top-left anchored at `offset` on both spatial axes (§2.1)."""
    if x.shape[2] < offset + height or x.shape[3] < offset + width:
        raise ValueError(f"crop at {offset} of {height}x{width} runs past {tuple(x.shape)}")
    return x[:, :, offset : offset + height, offset : offset + width]


def add_vgg16(model: nn.Module, width: float, conv1_1_padding: int) -> None:
    """Registers VGG16's convolutions on `model` as conv1_1 ... conv5_3 (§1).

    Each is 3x3 with padding 1, but conv1_1, which pads by `conv1_1_padding`.
    """
    in_channels = 3
    for block, num_convs, channels in VGG16_BLOCKS:
        out_channels = scaled_channels(channels, width)
        for i in range(1, num_convs + 1):
            pad = conv1_1_padding if (block, i) == (1, 1) else 1
            model.add_module(
                f"conv{block}_{i}", nn.Conv2d(in_channels, out_channels, 3, padding=pad)
            )
            in_channels = out_channels


def add_head(
    model: nn.Module,
    stride: int,
    num_classes: int,
    width: float,
    fc6_kernel: int,
    deconv: Callable[[int, int], nn.ConvTranspose2d],
) -> None:
    """Registers fc6, fc7, score_fr and the skip and upsampling layers of `stride` (§1, §2.3).

    Args:
      model: the module to add them to, after `add_vgg16`: registration order gives the
        state_dict key order of §6.3.
      stride: 32, 16 or 8.
      num_classes: output classes.
      width: channel multiplier (same rounding as fcn_jax).
      fc6_kernel: 7 in the reference geometry, 1 in the course-notes one.
      deconv: (channels, factor) -> the geometry's upsampling layer by `factor`.

    Raises:
      ValueError: for another stride.
    """
    if stride not in (8, 16, 32):
        raise ValueError(f"stride must be 8, 16 or 32, got {stride}")
    fc = scaled_channels(FC_CHANNELS, width)
    model.fc6 = nn.Conv2d(scaled_channels(512, width), fc, fc6_kernel)
    model.fc7 = nn.Conv2d(fc, fc, 1)
    model.score_fr = nn.Conv2d(fc, num_classes, 1)
    if stride == 32:
        model.upscore = deconv(num_classes, 32)
        return
    if stride == 8:
        model.score_pool3 = nn.Conv2d(scaled_channels(256, width), num_classes, 1)
    model.score_pool4 = nn.Conv2d(scaled_channels(512, width), num_classes, 1)
    model.upscore2 = deconv(num_classes, 2)
    if stride == 16:
        model.upscore16 = deconv(num_classes, 16)
    else:
        model.upscore8 = deconv(num_classes, 8)
        model.upscore_pool4 = deconv(num_classes, 2)


def vgg16_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """conv1_1 ... conv5_3 with ReLU, `model.pool` after each block, then fc6 and fc7 with ReLU
    and `model.dropout`: returns pool1 ... pool5 and fc7."""
    out = {}
    for block, num_convs, _ in VGG16_BLOCKS:
        for i in range(1, num_convs + 1):
            x = torch.relu(getattr(model, f"conv{block}_{i}")(x))
        x = model.pool(x)
        out[f"pool{block}"] = x
    x = model.dropout(torch.relu(model.fc6(x)))
    out["fc7"] = model.dropout(torch.relu(model.fc7(x)))
    return out


class FCNReference(nn.Module):
    """VGG16 FCN with a 32s, 16s or 8s head (§1, §2.3), initialised as the reference (§3.1).

    Args:
      stride: 32, 16 or 8.
      num_classes: output classes (21 for PASCAL VOC).
      width: channel multiplier for the backbone and fc6/fc7 (1.0 = reference).
      skip_scales: multipliers of (pool4, pool3) before their score layers.
    """

    def __init__(
        self,
        stride: int,
        num_classes: int = 21,
        width: float = 1.0,
        skip_scales: tuple[float, float] = (1.0, 1.0),
    ):
        super().__init__()
        self.stride = stride
        self.skip_scales = skip_scales
        add_vgg16(self, width, CONV1_1_PADDING)
        add_head(self, stride, num_classes, width, fc6_kernel=7, deconv=self._deconv)  # §1 row 19
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)  # ceil rounding, §1 / §2.6
        self.dropout = nn.Dropout(0.5)  # element-wise as in Caffe (§1)
        self.reset_reference_init()

    @staticmethod
    def _deconv(channels: int, factor: int) -> nn.ConvTranspose2d:
        return nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)

    def reset_reference_init(self) -> None:
        """Zero convolutions, bilinear deconvolutions: Caffe's defaults plus surgery (§3.1)."""
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                with torch.no_grad():
                    module.weight.copy_(bilinear_weight(module.in_channels, module.kernel_size[0]))
            elif isinstance(module, nn.Conv2d):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel scores (N, num_classes, H, W) for images (N, 3, H, W)."""
        height, width = images.shape[2:]
        feats = vgg16_features(self, images)
        score = self.score_fr(feats["fc7"])
        if self.stride == 32:
            return crop(self.upscore(score), CROP_32S, height, width)
        upscore2 = self.upscore2(score)
        score_pool4 = self.score_pool4(feats["pool4"] * self.skip_scales[0])
        fuse = upscore2 + crop(score_pool4, CROP_POOL4, *upscore2.shape[2:])
        if self.stride == 16:
            return crop(self.upscore16(fuse), CROP_16S, height, width)
        upscore_pool4 = self.upscore_pool4(fuse)
        score_pool3 = self.score_pool3(feats["pool3"] * self.skip_scales[1])
        fuse = upscore_pool4 + crop(score_pool3, CROP_POOL3, *upscore_pool4.shape[2:])
        return crop(self.upscore8(fuse), CROP_8S, height, width)


def copy_by_name(target: nn.Module, source: nn.Module) -> None:
    """Staged initialisation (§3.1-3.2): copies every same-named parameter of `source`."""
    own = dict(target.named_parameters())
    with torch.no_grad():
        for name, value in source.named_parameters():
            if name in own:
                own[name].copy_(value)


def build_model(name: str, num_classes: int = 21, width: float = 1.0) -> FCNReference:
    """Returns the reference variant `name` (fcn32s, fcn16s, fcn8s, fcn8s_atonce)."""
    if name == "fcn8s_atonce":
        return FCNReference(8, num_classes, width, (ATONCE_POOL4_SCALE, ATONCE_POOL3_SCALE))
    strides = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}
    if name not in strides:
        raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
    return FCNReference(strides[name], num_classes, width)
