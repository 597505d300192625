"""Quickstart in the course-notes geometry: configs/quickstart.py with `model_geometry="simple"`.

    python main.py --config=configs/quickstart_simple.py --workdir=/tmp/fcn_quickstart_simple

(the same as `--config=configs/quickstart.py --config.model_geometry=simple`). A reduced-width
FCN-8s of fcn_jax/simple_models.py trained offline on `synthetic_shapes` from random weights,
with the quickstart's recipe (Adam on the mean loss, cosine schedule, batch 8, augmentation).
The 96x96 canvas is a multiple of 32, so nothing is padded.

Expected: 7 min 46 s on the shared 2-core CPU (dataset build and compilation included, other
jobs running; measured on 2026-12-01), validation mean IoU 0.882 at step 500 and 0.899 at step
1000 (>= 0.80), printed at the end and recorded in WORKDIR/eval_results.jsonl.
"""

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.model_geometry = "simple"
    return config
