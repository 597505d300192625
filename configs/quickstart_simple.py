"""Quickstart in the course-notes geometry: configs/quickstart.py with `model_geometry="simple"`.

    python main.py --config=configs/quickstart_simple.py --workdir=/tmp/fcn_quickstart_simple

(the same as `--config=configs/quickstart.py --config.model_geometry=simple`). A reduced-width
FCN-8s of fcn_jax/models/simple.py trained offline on `synthetic_shapes` from random weights,
with the quickstart's recipe (Adam on the mean loss, cosine schedule, batch 8, augmentation).
The 96x96 canvas is a multiple of 32, so the model pads nothing; the smaller images on it get
their own-size logits through `sizes` (fcn_jax/models/simple.py).

Expected (measured on 2026-12-01 on the shared 2-core CPU, other jobs running): 3 min 46 s with
the dataset already built, compilation included; validation mean IoU 0.876 at step 500 and
0.902 at step 1000 (>= 0.80), printed at the end and recorded in WORKDIR/eval_results.jsonl.
An earlier run that also built the dataset, under heavier load, took 7 min 46 s (0.882 / 0.899).
"""

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.model_geometry = "simple"
    return config
