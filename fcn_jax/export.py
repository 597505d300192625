"""Export a trained FCN for serving without this library: a TF SavedModel and a jax.export file.

EXPORT_DIR/model.stablehlo  `jax.export.Exported.serialize()` of `images -> {classes, logits}`,
                            the variables baked in; runs with nothing but jax installed:
                              exported = jax.export.deserialize(open(path, "rb").read())
                              outputs = exported.call(images)
EXPORT_DIR/saved_model/     the same function as a TensorFlow SavedModel (jax2tf), variables
                            stored once as tf.Variables, two signatures:
                              serving_default(images) -> {classes, logits}
                              with_sizes(images, sizes) -> {classes, logits}
EXPORT_DIR/classes.json     what `classes` i means: {"names": [...], "colors": [[r, g, b],
                            ...], "ignore_label": 255}, `names[i]` and `colors[i]` for class
                            i (`fcn_jax.class_info`; written when the classes are given)

`images` are uint8 RGB (N, H, W, 3) with N, H and W free, H and W at most the export canvas
(`config.dataset.canvas_size`). The function normalises them as the weights expect, places
them top-left on the canvas, runs the model with each example's size (so the logits equal
those of `model.apply` on the image at its own size, docs/reference.md §2.7) and crops back:
`logits` float32 (N, H, W, C), `classes` int32 (N, H, W). `with_sizes` takes a batch of
images of different sizes, each padded top-left to the batch's H, W, and their int32
(height, width) in `sizes` (N, 2); outside each image's own region its outputs mean nothing.

The files are written to a temporary folder next to EXPORT_DIR that is renamed into place
only once all are complete, so a failed export leaves no half-written EXPORT_DIR.
"""

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from fcn_jax import class_info, preprocessing, restore

SAVED_MODEL = "saved_model"
STABLEHLO = "model.stablehlo"
SIZES_SIGNATURE = "with_sizes"


def serving_function(
    model: nn.Module, canvas_size: Sequence[int], preprocessing_name: str
) -> Callable[[dict, jax.Array, jax.Array | None], dict[str, jax.Array]]:
    """The function both artifacts serve: `(variables, images, sizes) -> {classes, logits}`.

    Args:
      model: the FCN.
      canvas_size: (height, width) the images are padded to; the largest size served.
      preprocessing_name: 'caffe' or 'torchvision', as the weights expect.

    Returns:
      `serve(variables, images, sizes=None)`: `images` uint8 (N, H, W, 3) with H, W at most
      the canvas; `sizes` int32 (N, 2), or None for every example H x W.
    """
    canvas_height, canvas_width = canvas_size

    def serve(variables: dict, images: jax.Array, sizes: jax.Array | None = None) -> dict:
        batch, height, width, _ = images.shape
        if sizes is None:
            sizes = jnp.broadcast_to(jnp.array([height, width], jnp.int32), (batch, 2))
        canvas = jnp.zeros((batch, canvas_height, canvas_width, 3), jnp.uint8)
        canvas = jax.lax.dynamic_update_slice(canvas, images, (0, 0, 0, 0))
        net_input = preprocessing.normalize(canvas, preprocessing_name)
        logits = model.apply(variables, net_input, sizes=sizes)[:, :height, :width]
        return {"classes": jnp.argmax(logits, axis=-1).astype(jnp.int32), "logits": logits}

    return serve


def _symbolic_images(canvas_size: Sequence[int]) -> tuple[jax.ShapeDtypeStruct, list[str]]:
    """uint8 images (b, h, w, 3) with h, w at most the canvas, and those constraints."""
    constraints = [f"h <= {canvas_size[0]}", f"w <= {canvas_size[1]}"]
    shape = jax.export.symbolic_shape("b, h, w, 3", constraints=constraints)
    return jax.ShapeDtypeStruct(shape, jnp.uint8), constraints


def export_stablehlo(
    serve: Callable, variables: dict, canvas_size: Sequence[int], platforms: Sequence[str]
) -> jax.export.Exported:
    """`images -> serve(variables, images)` for any batch and size up to the canvas."""
    images, _ = _symbolic_images(canvas_size)
    return jax.export.export(jax.jit(lambda x: serve(variables, x)), platforms=tuple(platforms))(
        images
    )


class _Servable(tf.Module):
    """The SavedModel's root: the variables once, and the two serving functions."""

    def __init__(
        self,
        serve: Callable,
        variables: dict,
        canvas_size: Sequence[int],
        platforms: Sequence[str],
    ):
        super().__init__()
        self.model_variables = jax.tree.map(lambda x: tf.Variable(np.asarray(x)), variables)
        self._canvas_size = tuple(canvas_size)
        _, constraints = _symbolic_images(canvas_size)
        convert = dict(
            polymorphic_constraints=constraints,
            native_serialization_platforms=tuple(platforms),
            with_gradient=False,
        )
        self._serve = jax2tf.convert(
            lambda v, x: serve(v, x), polymorphic_shapes=[None, "(b, h, w, 3)"], **convert
        )
        self._serve_sizes = jax2tf.convert(
            serve, polymorphic_shapes=[None, "(b, h, w, 3)", "(b, 2)"], **convert
        )

    def _check_fits(self, images: tf.Tensor) -> None:
        height, width = self._canvas_size
        tf.debugging.assert_less_equal(
            tf.shape(images)[1:3],
            tf.constant(self._canvas_size, tf.int32),
            message=f"images are larger than the export canvas {height}x{width} "
            "(height x width); resize them or export with a larger "
            "--config.dataset.canvas_size",
        )

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
    )
    def serving_default(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        self._check_fits(images)
        return self._serve(self.model_variables, images)

    @tf.function(
        autograph=False,
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
            tf.TensorSpec([None, 2], tf.int32, name="sizes"),
        ],
    )
    def with_sizes(self, images: tf.Tensor, sizes: tf.Tensor) -> dict[str, tf.Tensor]:
        self._check_fits(images)
        return self._serve_sizes(self.model_variables, images, sizes)


def export(
    model: nn.Module,
    variables: dict,
    export_dir: str,
    canvas_size: Sequence[int],
    preprocessing_name: str,
    overwrite: bool = False,
    platforms: Sequence[str] | None = None,
    classes: class_info.ClassInfo | None = None,
) -> dict[str, str]:
    """Writes model.stablehlo, saved_model/ and classes.json in EXPORT_DIR (module doc).

    Args:
      model: the FCN, built for `platforms` (`fcn_jax.models.get_model(..., platform=...)`).
      variables: its trained variables.
      export_dir: the folder to create; it must not exist or be empty, unless `overwrite`.
      canvas_size: (height, width), the largest image size the artifacts serve.
      preprocessing_name: 'caffe' or 'torchvision', as the weights expect.
      overwrite: replace a non-empty `export_dir` (only once the new export is complete).
      platforms: `jax.export` platforms to lower for (e.g. ('cpu', 'cuda')); default the
        backend this runs on.
      classes: the names and colours of the model's classes, or None.

    Returns:
      The paths written: {'saved_model': ..., 'stablehlo': ...} and 'classes' if given.

    Raises:
      FileExistsError: `export_dir` is a file, or a non-empty folder and not `overwrite`.
      ValueError: `export_dir` is not a local path (e.g. gs://...).
    """
    _check_destination(export_dir, overwrite)
    final = os.path.abspath(export_dir)
    platforms = tuple(platforms or (jax.default_backend(),))
    serve = serving_function(model, canvas_size, preprocessing_name)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.partial-", dir=parent)
    try:
        _write_artifacts(staging, serve, variables, canvas_size, platforms)
        if classes is not None:
            class_info.save(classes, staging)
        _replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    written = {
        "saved_model": os.path.join(final, SAVED_MODEL),
        "stablehlo": os.path.join(final, STABLEHLO),
    }
    if classes is not None:
        written["classes"] = os.path.join(final, class_info.FILE_NAME)
    return written


def _write_artifacts(
    folder: str,
    serve: Callable,
    variables: dict,
    canvas_size: Sequence[int],
    platforms: Sequence[str],
) -> None:
    exported = export_stablehlo(serve, variables, canvas_size, platforms)
    with open(os.path.join(folder, STABLEHLO), "wb") as f:
        f.write(exported.serialize())
    servable = _Servable(serve, variables, canvas_size, platforms)
    tf.saved_model.save(
        servable,
        os.path.join(folder, SAVED_MODEL),
        signatures={
            "serving_default": servable.serving_default,
            SIZES_SIGNATURE: servable.with_sizes,
        },
    )


def _check_destination(path: str, overwrite: bool) -> None:
    if "://" in path:
        raise ValueError(f"export_dir {path} must be a local folder (the export renames into it)")
    if os.path.isfile(path):
        raise FileExistsError(f"export_dir {path} is a file; name a folder")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(
            f"export_dir {path} exists and is not empty; choose another or pass --overwrite"
        )


def _replace(staging: str, final: str) -> None:
    """Renames the complete `staging` folder to `final`, replacing what `final` held."""
    if not os.path.exists(final):
        os.rename(staging, final)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=os.path.dirname(final))
    os.rename(final, os.path.join(old, "export"))
    os.rename(staging, final)
    shutil.rmtree(old)


def export_trained(
    config: ml_collections.ConfigDict,
    workdir: str,
    weights_path: str | None,
    export_dir: str,
    overwrite: bool = False,
    platforms: Sequence[str] | None = None,
) -> dict[str, str]:
    """Exports the variables of WORKDIR's checkpoint, or of a pytorch-fcn file; see `export`.

    The model is built for `platforms` (default: this process's backend), so its speed tricks
    (`fcn_jax.fast_paths`) are those that suit where the artifacts will run. The classes are
    WORKDIR's record, else the config's dataset's (`fcn_jax.class_info.for_run`).

    Raises:
      ValueError: a bad config field (e.g. an unknown model).
      FileNotFoundError: no checkpoint in WORKDIR, or no such weights file.
      FileExistsError: see `export`.
    """
    _check_destination(export_dir, overwrite)
    platforms = tuple(platforms or (jax.default_backend(),))
    model, variables, classes = restore.trained_run(config, workdir, weights_path, platforms)
    return export(
        model,
        variables,
        export_dir,
        tuple(config.dataset.canvas_size),
        config.dataset.preprocessing,
        overwrite=overwrite,
        platforms=platforms,
        classes=classes,
    )
