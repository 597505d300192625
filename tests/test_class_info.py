import json

import numpy as np
import pytest

from fcn_jax import class_info, input_pipeline
from fcn_jax.datasets import synthetic_shapes
from fcn_jax.palette import voc_palette
from tests.helpers import tiny_config

SHAPES = class_info.ClassInfo(
    ("background", "circle", "square"), ((0, 0, 0), (230, 25, 75), (60, 180, 75))
)


def test_round_trip_through_the_json_file(tmp_path):
    path = class_info.save(SHAPES, tmp_path / "run")  # the folder is created
    assert path == tmp_path / "run" / "classes.json"
    assert json.loads(path.read_text()) == {
        "names": ["background", "circle", "square"],
        "colors": [[0, 0, 0], [230, 25, 75], [60, 180, 75]],
        "ignore_label": 255,
    }
    assert class_info.load(tmp_path / "run") == SHAPES
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["classes.json"]  # no partial file
    assert class_info.load(tmp_path) is None


def test_a_broken_record_is_named(tmp_path):
    (tmp_path / "classes.json").write_text('{"names": ["a"]}')
    with pytest.raises(ValueError, match=r"classes.json: not a class record"):
        class_info.load(tmp_path)


def test_metadata_colours_default_to_the_voc_palette():
    classes = class_info.from_metadata({"class_names": ["background", "cat"]})
    np.testing.assert_array_equal(classes.palette()[:2], voc_palette()[:2])
    assert classes.ignore_label == 255
    own = class_info.from_metadata(
        {"class_names": ["a", "b"], "class_colors": [[1, 2, 3], [4, 5, 6]], "ignore_label": 255}
    )
    palette = own.palette()
    np.testing.assert_array_equal(palette[:2], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(palette[255], voc_palette()[255])
    with pytest.raises(ValueError, match="no 'class_names'"):
        class_info.from_metadata({"num_classes": 2})


def test_bad_class_lists_are_refused():
    with pytest.raises(ValueError, match=r"\['a'\] appear more than once"):
        class_info.ClassInfo(("a", "b", "a"), ((0, 0, 0),) * 3)
    with pytest.raises(ValueError, match="one \\[r, g, b\\] \\(0-255\\) per class, 2 in all"):
        class_info.ClassInfo(("a", "b"), ((0, 0, 0),))
    with pytest.raises(ValueError, match="one \\[r, g, b\\]"):
        class_info.ClassInfo(("a",), ((0, 0, 256),))
    with pytest.raises(ValueError, match="ignore_label=1 must be in 2..255"):
        class_info.ClassInfo(("a", "b"), ((0, 0, 0), (1, 1, 1)), ignore_label=1)


def test_training_records_the_dataset_classes_and_refuses_others(tmp_path, synthetic_data_dir):
    classes = input_pipeline.dataset_classes(tiny_config(synthetic_data_dir))
    assert classes.names == tuple(synthetic_shapes.CLASS_NAMES)
    workdir = str(tmp_path / "run")
    assert class_info.record(workdir, classes) == classes
    assert class_info.load(workdir) == classes
    assert class_info.record(workdir, classes) == classes  # resuming: the same classes
    with pytest.raises(ValueError, match=r"records the classes of another dataset .*names"):
        class_info.record(workdir, SHAPES)


def test_a_run_with_a_record_needs_no_dataset(tmp_path):
    def no_dataset():
        raise AssertionError("the dataset was read")

    class_info.save(SHAPES, tmp_path)
    assert class_info.for_run(str(tmp_path), no_dataset) == SHAPES
    assert class_info.for_run(str(tmp_path / "empty"), lambda: SHAPES) == SHAPES
