"""Your own data: FCN-8s (course-notes geometry) trained on a folder of images and masks.

    python main.py --config=configs/custom.py --workdir=WORKDIR \
        --config.dataset.manual_dir=PATH/TO/YOUR/FOLDER

The folder is read as annotation tools export it (plain images/ + masks/, CVAT, VOC, labelme,
COCO from CVAT or Roboflow: docs/own_data.md) and prepared once into config.dataset.data_dir
(TFDS's default if unset); the class names and their number come from it. Without a val list,
config.dataset.val_fraction (0.1) of the images is held out for validation, by file name.

Why this recipe. A folder of your own holds tens to a few thousand images, too few to learn
features from, so by default the 13 VGG16 convolutions start from ImageNet (`init.kind =
"vgg16"`, fetched once) while fc6/fc7 (1x1 in this geometry) and the score layers start
fresh. That is the course-notes geometry (fcn_jax/models/simple.py) with its recipe for a net
that starts partly from scratch (configs/simple_fcn8s.py): the mean loss over valid pixels,
SGD with momentum 0.9, lr 1e-3 on a cosine schedule with warm-up, batch 8, random scaling
0.5-1.5, flips and crops to the canvas; 4000 steps are 32 epochs of 1000 images.

`--config=configs/custom.py:scratch` starts from random weights instead (no download: offline
machines, quick trials), with the quickstart's recipe for that (configs/quickstart.py): Adam,
lr 1e-3, cosine, no weight decay. On a CPU add --config.width=0.125.

Images must fit the 512x512 canvas for evaluation: resize larger photos first, or set
--config.dataset.canvas_size (a multiple of 32 suits this geometry).

Expected: not measured on a real dataset yet. docs/own_data.md gives the command and result of
a short `scratch` run on the synthetic shapes exported as CVAT does.
"""

from configs import simple_fcn8s

STARTS = ("vgg16", "scratch")


def get_config(start: str = "vgg16"):
    if start not in STARTS:
        raise ValueError(f"configs/custom.py:{start}: use one of {STARTS}")
    config = simple_fcn8s.get_config()
    config.dataset.name = "segmentation_folder"
    config.dataset.eval_name = None  # the folder's own validation split
    config.dataset.eval_split = "validation"
    config.dataset.val_fraction = 0.1

    config.eval_batch_size = None  # the train batch, rounded to the devices
    config.optimizer.warmup_steps = 200
    config.num_train_steps = 4000
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    if start == "scratch":
        config.init.kind = "random"
        config.optimizer.name = "adam"
        config.optimizer.weight_decay = 0.0
        config.optimizer.bias_lr_multiplier = 1.0
    return config
