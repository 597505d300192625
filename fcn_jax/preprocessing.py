"""From uint8 RGB pixels to the network's input, on the device (docs/reference.md §4.4).

Images travel from the input pipeline (and to an exported model) as uint8, a quarter of the
bytes of float32; they are normalised where the network runs, inside the jitted step.
"""

import jax
import jax.numpy as jnp

# Per-channel mean of the reference's Caffe VGG16, BGR order, 0-255 scale (§4.4).
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
# torchvision's ImageNet statistics, RGB order, 0-1 scale (§6.4).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
PREPROCESSING = ("caffe", "torchvision")


def check_preprocessing(preprocessing: str) -> None:
    """Raises ValueError unless `preprocessing` is one of PREPROCESSING."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; use one of {PREPROCESSING}")


def normalize(images: jax.Array, preprocessing: str) -> jax.Array:
    """Turns uint8 RGB images (..., H, W, 3) into the network's float32 input.

    Args:
      images: uint8 RGB (any integer or float array of 0-255 values works).
      preprocessing: 'caffe' (BGR, 0-255, minus the mean of §4.4: the reference and the Caffe
        VGG16 weights) or 'torchvision' (RGB, 0-1, ImageNet mean/std: torchvision's VGG16).
    """
    check_preprocessing(preprocessing)
    images = jnp.asarray(images).astype(jnp.float32)
    if preprocessing == "caffe":
        return images[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
    mean, std = jnp.asarray(TORCHVISION_MEAN), jnp.asarray(TORCHVISION_STD)
    return (images / 255.0 - mean) / std
