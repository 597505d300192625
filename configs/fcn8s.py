"""FCN-8s staged from a trained FCN-16s (§3.1, §4.1): lr 1e-14, 100k steps.

    python main.py --config=configs/fcn8s.py --workdir=WORKDIR \
        --config.init.path=WORKDIR_OF_FCN16S   # or a fcn16s_from_caffe.pth

Data: SBD train for training, VOC2012 seg11valid for evaluation (README: Data). Expected
seg11valid mean IoU of the reference: 65.5% (docs/reference.md §5.3), evaluated every 4000 steps.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "fcn8s"
    config.init.kind = "stage"
    config.init.source_model = "fcn16s"
    config.optimizer.learning_rate = 1e-14
    config.num_train_steps = 100_000
    return config
