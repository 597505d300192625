"""Per-example `sizes`: a canvas batch computes exactly what each image alone computes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import losses, models, winograd
from tests.helpers import random_variables

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("fewer_xla_optimizations"),  # one compile per size
]

NAMES = ["fcn32s", "fcn16s", "fcn8s", "fcn8s_atonce"]
CANVAS = (40, 48)
# 1x1, odd, tall, wide, exactly the canvas, one short of it.
SIZES = np.array([[1, 1], [17, 23], [39, 5], [3, 47], [40, 48], [39, 47]], np.int32)


def _canvas_images(seed=2):
    # Noise everywhere, also off the images: sizes alone must decide what is image.
    return jax.random.normal(jax.random.key(seed), (len(SIZES), *CANVAS, 3))


@pytest.mark.parametrize(
    "name, fast", [(name, "all") for name in NAMES] + [("fcn8s", "none"), ("fcn32s", "none")]
)
def test_canvas_logits_with_sizes_equal_own_size_logits(name, fast):
    model = models.get_model(name, num_classes=3, width=1 / 16, fast_paths=fast)
    variables = random_variables(model)
    images = _canvas_images()
    canvas_logits = jax.jit(model.apply)(variables, images, sizes=SIZES)
    for i, (h, w) in enumerate(SIZES):
        own = model.apply(variables, images[i : i + 1, :h, :w])[0]
        scale = float(own.max() - own.min())
        diff = float(jnp.abs(canvas_logits[i, :h, :w] - own).max())
        assert diff <= 1e-5 * scale, (name, (h, w), diff, scale)


def test_canvas_logits_with_sizes_hold_for_the_winograd_forward_passes():
    # At a quarter width blocks 4 and 5 have 128 channels, enough for the Winograd forward
    # passes that inference runs (fcn_jax.winograd.MIN_CHANNELS) beside the frame.
    model = models.get_model("fcn8s", num_classes=3, width=1 / 4, fast_paths="all")
    assert model.channels(512) >= winograd.MIN_CHANNELS
    variables = random_variables(model)
    images = _canvas_images()[:3]
    sizes = SIZES[1:4]
    canvas_logits = jax.jit(model.apply)(variables, images, sizes=sizes)
    for i, (h, w) in enumerate(sizes):
        own = model.apply(variables, images[i : i + 1, :h, :w])[0]
        scale = float(own.max() - own.min())
        diff = float(jnp.abs(canvas_logits[i, :h, :w] - own).max())
        assert diff <= 1e-5 * scale, ((h, w), diff, scale)


def test_without_sizes_the_canvas_changes_logits_inside_the_image():
    # The reason sizes exist: zero padding to a canvas is not the image alone.
    model = models.get_model("fcn8s", num_classes=3, width=1 / 16)
    variables = random_variables(model)
    image = _canvas_images()[:1, :17, :23]
    canvas = jnp.pad(image, ((0, 0), (0, CANVAS[0] - 17), (0, CANVAS[1] - 23), (0, 0)))
    own = model.apply(variables, image)[0]
    padded = model.apply(variables, canvas)[0, :17, :23]
    assert float(jnp.abs(padded - own).max()) > 1e-3 * float(own.max() - own.min())


def test_training_mode_applies_sizes_too():
    # Dropout aside (its masks differ with the map shapes), training mode is the same graph.
    model = models.get_model("fcn16s", num_classes=3, width=1 / 16)
    variables = random_variables(model)
    images = _canvas_images()
    rngs = {"dropout": jax.random.key(0)}
    train = model.apply(variables, images, sizes=SIZES, train=True, rngs=rngs)
    no_train = model.apply(variables, images, sizes=SIZES, train=False)
    assert train.shape == no_train.shape
    assert not np.allclose(train, no_train)  # dropout is on


@pytest.mark.parametrize("name", ["fcn32s", "fcn8s"])
def test_summed_loss_gradients_of_a_canvas_batch_are_per_image_gradients(name):
    model = models.get_model(name, num_classes=3, width=1 / 16)
    variables = random_variables(model)
    images = _canvas_images()
    labels = jax.random.randint(jax.random.key(3), (len(SIZES), *CANVAS), 0, 4)
    labels = jnp.where(labels == 3, losses.VOID, labels)  # some void pixels inside images
    rows = jnp.arange(CANVAS[0])[None, :, None] < SIZES[:, :1, None]
    cols = jnp.arange(CANVAS[1])[None, None, :] < SIZES[:, 1:, None]
    labels = jnp.where(rows & cols, labels, losses.VOID)  # the canvas is void off the image

    def loss(params, x, y, sizes=None):
        logits = model.apply({**variables, "params": params}, x, sizes=sizes)
        return losses.pixel_cross_entropy(logits, y, reduction="sum")[0]

    grad = jax.jit(jax.value_and_grad(loss))
    batch_loss, batch_grads = grad(variables["params"], images, labels, SIZES)
    per_image = [
        grad(variables["params"], images[i : i + 1, :h, :w], labels[i : i + 1, :h, :w])
        for i, (h, w) in enumerate(SIZES)
    ]
    # Caffe's summed loss is divided by the number of images in the batch (docs/reference.md
    # §4.2): the batch's loss and gradients are the mean of each image's own.
    n = len(SIZES)
    np.testing.assert_allclose(n * batch_loss, sum(loss for loss, _ in per_image), rtol=1e-5)
    want = functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), [g for _, g in per_image])
    for got, expected in zip(jax.tree.leaves(batch_grads), jax.tree.leaves(want), strict=True):
        scale = float(jnp.abs(expected).max())
        assert float(jnp.abs(n * got - expected).max()) <= 1e-4 * scale
