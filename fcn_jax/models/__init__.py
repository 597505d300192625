"""The FCN models: `get_model` builds one, `init_variables` initialises it.

Two geometries share the VGG16 backbone and the layer names (`common`):

* ``"reference"`` (`reference.FCN`): the paper's Caffe models, FCN-32s, 16s, 8s and 8s
  at-once, with conv1_1's 100-pixel padding, ceil pooling and the crops of docs/reference.md.
* ``"simple"`` (`simple.SimpleFCN`): the course-notes geometry, FCN-32s, 16s and 8s with
  1x1 fc6/fc7 and no crops.

Example:
    model = get_model("fcn8s", num_classes=21)
    variables = init_variables(model, jax.random.key(0))
    logits = model.apply(variables, images, train=False)  # (N, H, W, 21)
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from fcn_jax import fast_paths as fast_paths_lib
from fcn_jax.models import reference, simple
from fcn_jax.models.common import (
    FC_CHANNELS,
    UPSAMPLING_COLLECTION,
    VGG16_BLOCKS,
    FCNModel,
    bilinear_kernel,
    bilinear_kernel_1d,
)
from fcn_jax.models.reference import FCN
from fcn_jax.models.simple import SimpleFCN

__all__ = [
    "FC_CHANNELS",
    "FCN",
    "GEOMETRIES",
    "NAMES",
    "OPTIONS",
    "UPSAMPLING_COLLECTION",
    "VGG16_BLOCKS",
    "FCNModel",
    "SimpleFCN",
    "bilinear_kernel",
    "bilinear_kernel_1d",
    "get_model",
    "init_variables",
]

# geometry -> model name -> constructor.
GEOMETRIES = {"reference": reference.VARIANTS, "simple": simple.VARIANTS}
NAMES = tuple(reference.VARIANTS)  # every model name, in either geometry
OPTIONS = ("width", "dtype", "learnable_upsampling")


def get_model(
    name: str,
    num_classes: int = 21,
    geometry: str = "reference",
    *,
    fast_paths: str = "auto",
    platform: str | Sequence[str] | None = None,
    **options: Any,
) -> FCNModel:
    """Returns the FCN variant `name` ready for `init` / `apply`.

    Args:
      name: `fcn32s`, `fcn16s`, `fcn8s` or (reference geometry only) `fcn8s_atonce`.
      num_classes: number of output classes.
      geometry: "reference" (the paper's Caffe model) or "simple" (the course-notes one).
      fast_paths: 'auto' | 'all' | 'none': which speed tricks of `fcn_jax.fast_paths` the
        model runs ('none' is the plain path that reads like docs/reference.md). Resolved
        here, once, for `platform`.
      platform: where the model will run ('cpu', 'cuda', 'tpu', ..., or several for a
        multi-platform export); None is the backend of this process.
      **options: `width` (channel multiplier), `dtype` (compute dtype, e.g. jnp.bfloat16),
        `learnable_upsampling` (bool).

    Raises:
      ValueError: for an unknown name, geometry, option or platform, or a bad value.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; choose one of {tuple(GEOMETRIES)}")
    variants = GEOMETRIES[geometry]
    if name not in variants:
        raise ValueError(
            f"unknown model {name!r} for the {geometry} geometry; choose one of "
            f"{sorted(variants)} (FCN-8s at-once exists in the reference geometry only)"
        )
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown model option(s) {sorted(unknown)}; allowed: {OPTIONS}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if options.get("width", 1.0) <= 0:
        raise ValueError(f"width must be > 0, got {options['width']}")
    fast = fast_paths_lib.resolve(fast_paths, platform)
    return variants[name](num_classes=num_classes, fast=fast, **options)


def init_variables(
    model: FCNModel, rng: jax.Array, image_shape: tuple[int, int] = (32, 32)
) -> dict:
    """Initialises a model's variables (zero score layers, bilinear upsampling).

    The backbone gets Flax's default initialisation; load real weights with `fcn_jax.weights`.
    """
    return model.init(rng, jnp.zeros((1, *image_shape, 3), jnp.float32), train=False)
