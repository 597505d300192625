"""FCN-8s at-once from the Caffe VGG16 (§2.3, §4.1): lr 1e-10, 300k steps.

    python main.py --config=configs/fcn8s_atonce.py --workdir=WORKDIR

Data: SBD train for training, VOC2012 seg11valid for evaluation (README: Data). Expected
seg11valid mean IoU of the reference: 65.4% (docs/reference.md §5.3), evaluated every 4000 steps.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "fcn8s_atonce"
    config.init.kind = "vgg16"
    config.optimizer.learning_rate = 1e-10
    config.num_train_steps = 300_000
    return config
