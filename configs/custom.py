"""Your own data: FCN-8s (course-notes geometry) fine-tuned from ImageNet VGG16 on a folder.

    python main.py --config=configs/custom.py --workdir=WORKDIR \
        --config.dataset.manual_dir=PATH/TO/YOUR/FOLDER

The folder is read as annotation tools export it (plain images/ + masks/, CVAT, VOC, labelme,
COCO from CVAT or Roboflow: docs/own_data.md) and prepared once into config.dataset.data_dir
(TFDS's default if unset); the class names and their number come from it. Without a val list,
config.dataset.val_fraction (0.1) of the images is held out for validation by name.

Why this recipe. A folder of your own holds tens to a few thousand images, far too few to
learn features from scratch, so the 13 VGG16 convolutions start from ImageNet (`init.kind =
"vgg16"`, fetched once); fc6/fc7 (1x1 here) and the score layers start fresh. That is the
course-notes geometry (fcn_jax/simple_models.py, docs/reference.md), whose recipe fits a net
that starts partly from scratch: the mean loss over valid pixels (the learning rate does not
depend on image size), SGD with momentum 0.9, lr 1e-3 on a cosine schedule with warm-up,
batch 8, random scaling 0.5-1.5, flips and crops to the canvas. 4000 steps are about 30 epochs
of 1000 images; evaluate every 500.

Images must fit the 512x512 canvas for evaluation: resize larger photos first, or set
--config.dataset.canvas_size (a multiple of 32). Offline (no VGG16 download), start from
random weights with the quickstart's recipe: --config.init.kind=random
--config.optimizer.name=adam (see docs/own_data.md, which trains this way in a minute).

Expected: not measured on a real dataset yet; docs/own_data.md gives the command and result
of a short offline run on the synthetic shapes.
"""

from configs import simple_fcn8s


def get_config():
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
    return config
