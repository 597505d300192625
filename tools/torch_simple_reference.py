"""PyTorch implementation of the course-notes ("simple") FCN-32s/16s/8s, for parity tests.

Written from the description in issue #14 (docs/reference.md describes the reference geometry
it simplifies), independently of fcn_jax/models/simple.py:

* VGG16 convolutions with padding 1, plain 2x2 max pooling;
* fc6 / fc7 as 1x1 convolutions (512 -> 4096 -> 4096), each with ReLU and dropout;
* score_fr, score_pool4, score_pool3 as 1x1 convolutions to the classes;
* FCN-32s: upscore = ConvTranspose2d(C, C, 64, stride=32, padding=16);
* FCN-16s: upscore2 = ConvTranspose2d(C, C, 4, 2, 1) of the scores + score_pool4, then
  upscore16 = ConvTranspose2d(C, C, 32, 16, 8);
* FCN-8s: also upscore_pool4 = ConvTranspose2d(C, C, 4, 2, 1) + score_pool3, then
  upscore8 = ConvTranspose2d(C, C, 16, 8, 4).

No pad 100, no crops: the logits are H x W for H, W multiples of 32. Names are those of
tools/torch_reference.py, so `state_dict()` loads with
`fcn_jax.weights.load_pytorch_fcn(path, name, geometry="simple")`.

Developer tool only: needs torch (an interpreter of its own, `FCN_TORCH_PYTHON` in
docs/development.md). The fcn_jax library never imports it.

Example:
    model = build_model("fcn8s", num_classes=21).eval()
    logits = model(torch.zeros(1, 3, 64, 96))  # (1, 21, 64, 96)
"""

import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_reference import add_head, add_vgg16, bilinear_weight, vgg16_features  # noqa: E402

VARIANTS = ("fcn32s", "fcn16s", "fcn8s")
# factor -> (kernel, stride, padding) of each upsampling, from the issue.
DECONV = {32: (64, 32, 16), 16: (32, 16, 8), 8: (16, 8, 4), 2: (4, 2, 1)}


class SimpleFCN(nn.Module):
    """The simple FCN with a 32s, 16s or 8s head; zero score layers, bilinear deconvolutions.

    Args:
      stride: 32, 16 or 8.
      num_classes: output classes.
      width: channel multiplier of the backbone and fc6/fc7 (same rounding as fcn_jax).
    """

    def __init__(self, stride: int, num_classes: int = 21, width: float = 1.0):
        super().__init__()
        self.stride = stride
        add_vgg16(self, width, conv1_1_padding=1)
        add_head(self, stride, num_classes, width, fc6_kernel=1, deconv=self._deconv)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.dropout = nn.Dropout(0.5)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.ConvTranspose2d):
                    module.weight.copy_(bilinear_weight(module.in_channels, module.kernel_size[0]))
            for name in ("score_fr", "score_pool4", "score_pool3"):
                if hasattr(self, name):
                    nn.init.zeros_(getattr(self, name).weight)
                    nn.init.zeros_(getattr(self, name).bias)

    @staticmethod
    def _deconv(channels: int, factor: int) -> nn.ConvTranspose2d:
        kernel, stride, padding = DECONV[factor]
        return nn.ConvTranspose2d(channels, channels, kernel, stride, padding, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel scores (N, num_classes, H, W) for images (N, 3, H, W)."""
        feats = vgg16_features(self, images)
        score = self.score_fr(feats["fc7"])
        if self.stride == 32:
            return self.upscore(score)
        fuse = self.upscore2(score) + self.score_pool4(feats["pool4"])
        if self.stride == 16:
            return self.upscore16(fuse)
        fuse = self.upscore_pool4(fuse) + self.score_pool3(feats["pool3"])
        return self.upscore8(fuse)


def build_model(name: str, num_classes: int = 21, width: float = 1.0) -> SimpleFCN:
    """Returns the simple variant `name` (fcn32s, fcn16s, fcn8s)."""
    strides = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}
    if name not in strides:
        raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
    return SimpleFCN(strides[name], num_classes, width)
