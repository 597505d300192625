"""Trained models from where they are kept: one loader for evaluation, predict, export and init.

A trained model comes from one of two places:

* a workdir of ours: its best checkpoint by mean IoU, else its latest train state
  (`fcn_jax.checkpoint.restore_variables`);
* a pytorch-fcn file (`.pth`, `.pt`, `.tar`), converted by `fcn_jax.weights`.

`trained_model(config, source)` returns the config's model (built for the platform it will
run on) and those variables, checked against each other: a checkpoint trained with another
width, model or class count is refused with the first mismatching variable named.
"""

import functools
from collections.abc import Sequence

import jax
import ml_collections
from etils import epath

from fcn_jax import checkpoint, class_info, config_checks, input_pipeline, models, steps, weights

PYTORCH_SUFFIXES = (".pth", ".pt", ".tar")


def is_pytorch_file(path: str) -> bool:
    """Whether `path` names a pytorch-fcn weights file (by its suffix), not a workdir."""
    return str(path).endswith(PYTORCH_SUFFIXES)


def check_source(path: str) -> None:
    """Raises FileNotFoundError unless `path` is a weights file or a workdir with a checkpoint.

    Cheap (no checkpoint is read): callers check before they create anything.
    """
    source = epath.Path(path)
    if is_pytorch_file(path):
        if not source.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        return
    if not any((source / folder).is_dir() for folder in checkpoint.FOLDERS):
        raise FileNotFoundError(
            f"no checkpoint in {path} (looked for {' and '.join(checkpoint.FOLDERS)}); train "
            "there first, or pass a pytorch-fcn weights file (--weights=FILE.pth)"
        )


def load_variables(
    path: str, config: ml_collections.ConfigDict, model_name: str | None = None
) -> dict:
    """The variables kept at `path`: a workdir of ours or a pytorch-fcn file.

    Args:
      path: a workdir (its best checkpoint, else its latest) or a `.pth`/`.pt`/`.tar` file.
      config: reads `width`, `learnable_upsampling` and `model_geometry` to convert a file.
      model_name: the model a pytorch-fcn file holds (default `config.model`).

    Raises:
      FileNotFoundError: `path` holds no checkpoint or does not exist.
    """
    check_source(path)
    if is_pytorch_file(path):
        return weights.load_pytorch_fcn(
            path,
            model_name or config.model,
            width=config.width,
            learnable_upsampling=config.learnable_upsampling,
            geometry=config.model_geometry,
        )
    return checkpoint.restore_variables(path)


def trained_model(
    config: ml_collections.ConfigDict,
    source: str,
    num_classes: int,
    platform: str | Sequence[str] | None = None,
) -> tuple[models.FCNModel, dict]:
    """The config's model and its trained variables from `source` (a workdir or a file).

    Args:
      config: the config the model was trained with.
      source: see `load_variables`.
      num_classes: the number of classes the model predicts.
      platform: where the model will run (`fcn_jax.models.get_model`); None: this process.

    Raises:
      ValueError: a bad config field, or variables that do not fit the config's model.
      FileNotFoundError: `source` holds no checkpoint or does not exist.
    """
    config_checks.validate_config(config)
    check_source(source)
    model = steps.create_model(config, num_classes, platform)
    variables = load_variables(source, config)
    check_fits(variables, model, source)
    return model, variables


def trained_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    weights_path: str | None = None,
    platform: str | Sequence[str] | None = None,
) -> tuple[models.FCNModel, dict, class_info.ClassInfo]:
    """A trained model with its classes, for predict and export: no dataset is needed.

    The variables come from `weights_path` if given, else WORKDIR's checkpoint; the classes
    from WORKDIR's record, else the config's dataset (`fcn_jax.class_info.for_run`). The
    config and the source are checked first, so a mistake fails before any dataset is prepared.

    Raises:
      ValueError: see `trained_model`.
      FileNotFoundError: no checkpoint in WORKDIR, or no such weights file.
    """
    config_checks.validate_config(config)
    source = weights_path or workdir
    check_source(source)
    classes = class_info.for_run(workdir, functools.partial(input_pipeline.dataset_classes, config))
    model, variables = trained_model(config, source, classes.num_classes, platform)
    return model, variables, classes


def check_fits(variables: dict, model: models.FCNModel, source: str) -> None:
    """Raises ValueError naming the first variable that `model` lacks or shapes otherwise."""
    expected = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0)))
    want = {_key(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    got = {_key(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(variables)}
    for key in sorted(want.keys() | got.keys()):
        if want.get(key) != got.get(key):
            raise ValueError(
                f"{source}: variable {key} has shape {got.get(key)}, the config's model "
                f"expects {want.get(key)} (None: absent). Pass the config the model was "
                "trained with (model, model_geometry, width, learnable_upsampling, dataset)."
            )


def _key(path: tuple) -> str:
    return "/".join(str(getattr(entry, "key", entry)) for entry in path)
