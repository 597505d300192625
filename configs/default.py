"""Base config: the reference recipe of docs/reference.md §4 (FCN-8s staged numbers).

The variant files (fcn32s.py, fcn16s.py, fcn8s.py, fcn8s_atonce.py, quickstart.py) import this
and override a few fields. Every field can be overridden on the command line, e.g.
`--config.optimizer.learning_rate=1e-12`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = "fcn8s"  # fcn32s | fcn16s | fcn8s | fcn8s_atonce
    # "reference": the paper's Caffe geometry; "simple": the course-notes geometry
    # (fcn_jax/models/simple.py: 1x1 fc6/fc7, no pad 100 and no crops; not for at-once).
    config.model_geometry = "reference"
    config.width = 1.0  # channel multiplier; 1.0 is the reference network
    config.compute_dtype = "float32"  # or "bfloat16" on GPU/TPU (parameters stay float32)
    config.learnable_upsampling = False  # the reference freezes the bilinear kernels (§2.2)
    # Speed tricks (fcn_jax/fast_paths.py): "auto" (where measured to win, for the backend
    # this runs on) | "all" | "none" (the plain path). The results are the same.
    config.fast_paths = "auto"

    # How the variables start (§3): "random" | "vgg16" | "pytorch_fcn" | "stage".
    #  vgg16: an ImageNet VGG16 (torchvision layout) transplanted into the FCN;
    #  pytorch_fcn: a pytorch-fcn checkpoint of this model (fine-tuning / evaluation);
    #  stage: a trained coarser FCN (`init.source_model`) from a workdir of ours or a .pth.
    config.init = ml_collections.ConfigDict()
    config.init.kind = "stage"
    config.init.weights = "vgg16_from_caffe"  # fetch_weights key when `path` is None
    config.init.path = ml_collections.config_dict.placeholder(str)
    config.init.source_model = "fcn16s"

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "voc_segmentation/sbd"  # train on SBD train (§4.4)
    config.dataset.eval_name = "voc_segmentation/voc2012"  # ...evaluate on seg11valid
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
    # For voc_segmentation: where the VOC/SBD archives are. For segmentation_folder: the
    # user's folder of images and masks (configs/custom.py, docs/own_data.md).
    config.dataset.manual_dir = ml_collections.config_dict.placeholder(str)
    # segmentation_folder without a val list: the fraction held out for validation.
    config.dataset.val_fraction = 0.1
    config.dataset.train_split = "train"
    config.dataset.eval_split = "seg11valid"
    config.dataset.preprocessing = "caffe"  # BGR, 0-255, minus the mean (§4.4)
    # Static shape for jit: every VOC/SBD image (at most 500x500) fits, top-left, padded with
    # void. Each example carries its image's size and the model zeroes everything past that
    # image's own extents (docs/reference.md §2.7), so a canvas batch computes exactly the
    # reference's per-image logits, loss and metrics.
    config.dataset.canvas_size = (512, 512)
    config.dataset.augment = False  # the reference uses no augmentation (§4.4)
    config.dataset.min_scale = 0.5
    config.dataset.max_scale = 2.0
    config.dataset.random_flip = True
    config.dataset.random_crop = False
    config.dataset.shuffle_buffer = 10_000

    config.seed = 1337  # the reference's seed (§4.3)
    config.batch_size = 1  # global; one image per step (§4.1)
    # None: the train batch rounded up to a multiple of the device count
    # (fcn_jax.input_pipeline.eval_batch_size).
    config.eval_batch_size = ml_collections.config_dict.placeholder(int)
    config.grad_accum_steps = 1  # micro-batches per step (Caffe's iter_size)
    config.loss_reduction = "sum"  # summed over valid pixels (§4.2); "mean" normalises

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 1e-14  # FCN-8s staged (§4.1)
    config.optimizer.momentum = 0.99
    config.optimizer.weight_decay = 5e-4  # on weights only
    config.optimizer.bias_lr_multiplier = 2.0  # biases: lr x 2, no decay (§4.1)
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0

    config.num_train_steps = 100_000
    config.log_every_steps = 20
    config.eval_every_steps = 4000
    config.checkpoint_every_steps = 4000
    config.max_checkpoints_to_keep = 2  # the latest N, plus the best by mean IoU
    config.num_predictions_to_save = 4  # validation images written as PNG at each eval
    config.distributed = False  # call jax.distributed.initialize() (multi-host TPU pods)
    return config
