"""FCN-8s in the course-notes geometry (fcn_jax/models/simple.py) on PASCAL VOC.

    python main.py --config=configs/simple_fcn8s.py --workdir=WORKDIR

Data as the reference configs: SBD train for training, VOC2012 seg11valid for evaluation
(README: Data). The 13 VGG16 convolutions come from the Caffe VGG16 (`load_vgg16`, geometry
"simple"); fc6 and fc7 are 1x1 layers VGG16 cannot fill and start from He normal, the score
layers from zero, the deconvolutions bilinear (frozen). The net starts partly from scratch,
so the recipe is the one such course notes use, not the reference's (§4.1, made to fine-tune
ImageNet weights with a summed loss): the mean loss over valid pixels, SGD with momentum 0.9
and lr 1e-3 on a cosine schedule with warm-up, batch 8 (use grad_accum_steps to fit it in
memory), random scaling 0.5-1.5, flips and crops to the 512x512 canvas (a multiple of 32:
nothing is padded), 30k steps (about 28 epochs of SBD train).

Expected: not measured yet (no VOC run was possible where this recipe was written); for scale,
the reference-geometry FCN-8s reaches 65.5% seg11valid mean IoU (§5.3). Evaluated every 2000
steps; the results are in WORKDIR/eval_results.jsonl.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "fcn8s"
    config.model_geometry = "simple"
    config.init.kind = "vgg16"

    config.dataset.augment = True
    config.dataset.min_scale = 0.5
    config.dataset.max_scale = 1.5
    config.dataset.random_flip = True
    config.dataset.random_crop = True

    config.batch_size = 8
    config.eval_batch_size = 8
    config.loss_reduction = "mean"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.bias_lr_multiplier = 2.0
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 500

    config.num_train_steps = 30_000
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 2000
    return config
