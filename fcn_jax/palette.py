"""The PASCAL VOC colour map, which masks and pictures use (no TensorFlow needed)."""

import numpy as np


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: uint8 (256, 3), class i's bits spread over R, G and B.

    Index 0 is black, 1 (aeroplane) dark red, ..., and 255 (void) is (224, 224, 192).
    """
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        label, color = index, np.zeros(3, np.int64)
        for shift in range(7, -1, -1):
            for channel in range(3):
                color[channel] |= ((label >> channel) & 1) << shift
            label >>= 3
        palette[index] = color
    return palette
