"""FCN-16s staged from a trained FCN-32s (§3.1, §4.1): lr 1e-12, 100k steps.

    python main.py --config=configs/fcn16s.py --workdir=WORKDIR \
        --config.init.path=WORKDIR_OF_FCN32S   # or a fcn32s_from_caffe.pth

Data: SBD train for training, VOC2012 seg11valid for evaluation (README: Data). Expected
seg11valid mean IoU of the reference: 65.0% (docs/reference.md §5.3), evaluated every 4000 steps.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "fcn16s"
    config.init.kind = "stage"
    config.init.source_model = "fcn32s"
    config.optimizer.learning_rate = 1e-12
    config.num_train_steps = 100_000
    return config
