"""notebooks/colab_tpu.ipynb, executed on the CPU with the offline synthetic dataset.

Its parameters cell is followed by one that makes the run tiny and offline, as papermill
would inject it: no install, a local folder instead of a bucket, 2 train steps at width 1/64.
"""

import json
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = {
    "dataset.name": "synthetic_shapes",
    "dataset.eval_name": "synthetic_shapes",
    "dataset.eval_split": "validation",
    "dataset.canvas_size": (96, 96),
    "init.kind": "random",
    "width": 1 / 64,
    "num_train_steps": 2,
    "optimizer.warmup_steps": 0,
    "log_every_steps": 1,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
    "num_predictions_to_save": 1,
}


@pytest.mark.slow
def test_colab_notebook_trains_evaluates_and_predicts(tmp_path, synthetic_data_dir, monkeypatch):
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")  # the kernel's compiles: faster
    notebook = nbformat.read(ROOT / "notebooks" / "colab_tpu.ipynb", as_version=4)
    index = next(
        i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])
    )
    os.symlink(synthetic_data_dir, tmp_path / "tensorflow_datasets")
    parameters = {
        "INSTALL": False,
        "REPO_DIR": str(ROOT),
        "STORAGE": "local",
        "LOCAL_DIR": str(tmp_path),
        # The notebook's own overrides (bfloat16, batch 8), then the tiny ones.
        "OVERRIDES": {"compute_dtype": "bfloat16", "batch_size": 8, **TINY},
        "TENSORBOARD": False,
    }
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    notebook.cells.insert(
        index + 1,
        nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}),
    )
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    workdir = tmp_path / "fcn8s_atonce"
    scores = [
        json.loads(line) for line in (workdir / "eval_results.jsonl").read_text().splitlines()
    ]
    assert [s["step"] for s in scores] == [2, -1]  # trained and evaluated
    assert sorted(p.name for p in (workdir / "predict").iterdir()) == [
        "classes.json",
        "example_0_mask.png",
        "example_0_overlay.png",
        "example_1_mask.png",
        "example_1_overlay.png",
    ]
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert any(o.get("data", {}).get("image/png") for o in outputs)  # the overlay is shown
