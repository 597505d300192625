"""The classes of a run (names, colours, the void label), recorded in its workdir.

Training writes WORKDIR/classes.json when it starts (`record`), so that `--mode=eval`,
`--mode=predict` and `--mode=export` of that workdir on another machine know the classes,
and the model's class count, without the dataset (`for_run`). Exports and predictions carry
the same file (EXPORT_DIR/classes.json, OUTPUT_DIR/classes.json). Its content:

    {"names": ["background", "cat", ...], "colors": [[0, 0, 0], [128, 0, 0], ...],
     "ignore_label": 255}

`names[i]` and `colors[i]` (RGB, 0-255) belong to label i; `ignore_label` marks void pixels.
The dataset's classes come from its TFDS metadata (`from_metadata`, read by
`fcn_jax.input_pipeline.dataset_classes`). This module needs no TensorFlow.
"""

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from fcn_jax.losses import VOID
from fcn_jax.palette import voc_palette

FILE_NAME = "classes.json"


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """Class names and colours in label order, and the void label.

    Colours are tuples (not an array) so that two ClassInfo compare and hash by value.
    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_label: int = VOID

    def __post_init__(self) -> None:
        names, colors = tuple(self.names), tuple(tuple(int(v) for v in c) for c in self.colors)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colors", colors)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"class names {list(names)!r}: need at least one non-empty string")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"class names {repeated} appear more than once; names must differ")
        if len(colors) != len(names) or any(
            len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors
        ):
            raise ValueError(
                f"class colours {[list(c) for c in colors]}: need one [r, g, b] (0-255) per "
                f"class, {len(names)} in all"
            )
        if not len(names) <= self.ignore_label <= 255:
            raise ValueError(
                f"ignore_label={self.ignore_label} must be in {len(names)}..255: labels are "
                "uint8 and the classes take 0..K-1"
            )

    @property
    def num_classes(self) -> int:
        """K, the number of classes (the model's outputs)."""
        return len(self.names)

    def palette(self) -> np.ndarray:
        """uint8 (256, 3): label i's colour at row i, the void colour at `ignore_label`.

        The rows no label uses keep the VOC palette's colours.
        """
        palette = voc_palette()
        palette[: self.num_classes] = self.colors
        palette[self.ignore_label] = voc_palette()[VOID]
        return palette

    def to_json(self) -> dict[str, Any]:
        """The JSON object of WORKDIR/classes.json (see the module docstring)."""
        return {
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "ignore_label": self.ignore_label,
        }


def from_metadata(metadata: Mapping[str, Any]) -> ClassInfo:
    """ClassInfo of a TFDS builder's `info.metadata`.

    Reads `class_names`, `class_colors` (a list of [r, g, b]; the VOC palette's first K
    colours when the dataset defines none) and `ignore_label` (default 255).

    Raises:
      ValueError: the metadata has no `class_names`, or malformed entries.
    """
    if "class_names" not in metadata:
        raise ValueError(f"dataset metadata {sorted(metadata)} has no 'class_names'")
    names = list(metadata["class_names"])
    colors = metadata.get("class_colors") or voc_palette()[: len(names)].tolist()
    return ClassInfo(tuple(names), tuple(colors), int(metadata.get("ignore_label", VOID)))


def save(classes: ClassInfo, directory: str | epath.Path) -> epath.Path:
    """Writes DIRECTORY/classes.json atomically (a whole file or none); returns its path."""
    path = epath.Path(directory) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{FILE_NAME}.partial"
    partial.write_text(json.dumps(classes.to_json(), indent=1) + "\n")
    partial.replace(path)
    return path


def load(directory: str | epath.Path) -> ClassInfo | None:
    """ClassInfo of DIRECTORY/classes.json, or None when there is no such file.

    Raises:
      ValueError: naming the file, when it is not a valid record.
    """
    path = epath.Path(directory) / FILE_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return ClassInfo(tuple(data["names"]), tuple(data["colors"]), int(data["ignore_label"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: not a class record ({e}); restore it or delete it to take the classes "
            "from the config's dataset"
        ) from e


def for_run(workdir: str, dataset_classes: Callable[[], ClassInfo]) -> ClassInfo:
    """The classes of WORKDIR's model: its record if any, else `dataset_classes()`.

    Evaluation, prediction and export call this: with a record they need no dataset
    (`dataset_classes`, e.g. the config's dataset's, is only called without one).
    """
    return load(workdir) or dataset_classes()


def record(workdir: str, classes: ClassInfo) -> ClassInfo:
    """Writes the dataset's `classes` to WORKDIR/classes.json unless already there.

    Training calls this before it starts or resumes; process 0 writes.

    Returns:
      `classes`.

    Raises:
      ValueError: WORKDIR records other classes.
    """
    recorded = load(workdir)
    if recorded is None:
        if jax.process_index() == 0:
            save(classes, workdir)
    elif recorded != classes:
        raise ValueError(
            f"{epath.Path(workdir) / FILE_NAME} records the classes of another dataset than "
            f"the config's: {_difference(recorded, classes)}. Train in a new workdir, or point "
            "the config at the dataset this workdir was trained on."
        )
    return classes


def _difference(recorded: ClassInfo, current: ClassInfo) -> str:
    """The first field in which two ClassInfo differ, in words."""
    return next(
        f"{field} {_short(getattr(recorded, field))} recorded, "
        f"{_short(getattr(current, field))} in the dataset"
        for field in ("names", "colors", "ignore_label")
        if getattr(recorded, field) != getattr(current, field)
    )


def _short(value: Any, limit: int = 8) -> str:
    if isinstance(value, tuple) and len(value) > limit:
        return f"{[*value[:limit]]!r}... ({len(value)} in all)"
    return repr(list(value) if isinstance(value, tuple) else value)
