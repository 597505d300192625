"""What a reader of a user's folder makes of it: examples and a layout, before the checks.

Shared by `folder_layouts` (image-folder layouts, the checks, the splits) and `coco_folder`.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from etils import epath

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SHOWN = 20  # problems listed in one error before "... and N more"


@dataclasses.dataclass(frozen=True)
class Example:
    """One image and how to read its mask.

    Attributes:
      key: The example's name within the folder (the image's path without its suffix); the
        validation holdout hashes it.
      image: The image file.
      mask_name: What an error about the mask names (a file, or a JSON file and image).
      read_mask: Returns the mask, uint8 (H, W) of class indices and 255; raises ValueError
        naming the file when it cannot.
      mask_file: The mask's PNG file; None when the mask is painted from annotations.
    """

    key: str
    image: epath.Path
    mask_name: str
    read_mask: Callable[[], np.ndarray]
    mask_file: epath.Path | None = None


@dataclasses.dataclass
class Layout:
    """A layout's reading before the checks: `class_names` None means from the masks."""

    name: str
    class_names: list[str] | None
    class_colors: list[list[int]] | None
    # Group (list or JSON file) name -> examples; a single None key when there are no lists.
    groups: dict[str | None, list[Example]]
    num_values: int = 0  # 1 + the largest class value of the masks, set by the checks


def shown(lines: Sequence[str]) -> str:
    """The first SHOWN lines of a list of problems, one per line, and how many more."""
    more = f"\n  ... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    return "\n  ".join(lines[:SHOWN]) + more
