"""Published FCN / VGG16 weights as Flax variables, without torch.

* `load_pytorch_fcn`: a pytorch-fcn checkpoint (`fcn32s_from_caffe.pth` ... or a trainer
  checkpoint) -> variables of `fcn_jax.models.get_model(name, ...)`.
* `load_vgg16`: an ImageNet VGG16 in torchvision key layout -> variables of an FCN whose
  backbone and fc6/fc7 come from VGG16 and whose heads have the reference init (§3.1).
* `stage_variables`: staged training (FCN-32s -> 16s -> 8s), copy by name (§3.1).

The published files themselves are fetched and checksummed by `fcn_jax.weight_files`.

Layouts (docs/reference.md §6.3, §8): a PyTorch conv weight (out, in, kh, kw) becomes a Flax
kernel (kh, kw, in, out). A PyTorch/Caffe transposed-conv weight (in, out, kh, kw) becomes
(kh, kw, in, out) *spatially flipped*, because Flax's `nn.ConvTranspose` (transpose_kernel=False)
correlates the dilated input with its kernel as stored instead of scattering it; the bilinear
kernels are symmetric and hide a missing flip, learned ones do not.

`.pth` files are read by `fcn_jax.torch_pickle`, a restricted unpickler: no torch, no code
execution.
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from fcn_jax import torch_pickle
from fcn_jax.models import (
    FC_CHANNELS,
    VGG16_BLOCKS,
    bilinear_kernel,
    get_model,
    init_variables,
    simple,
)

Variables = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state_dict from a `.pth` file (zip or legacy format) without torch.

    Args:
      path: a bare state_dict, or a trainer checkpoint dict holding it under
        `model_state_dict` (pytorch-fcn's trainer, §6.2).

    Returns:
      Tensor name -> numpy array, in file order.

    Raises:
      ValueError: the file holds no state_dict of tensors.
      fcn_jax.torch_pickle.UnsupportedPickleError: the file refers to code outside the
        reader's allow-list.
    """
    obj = torch_pickle.load(path)
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state_dict, found {type(obj).__name__}")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, np.ndarray))
    if not_tensors:
        raise ValueError(f"{path}: not a state_dict; non-tensor entries {not_tensors}")
    return {str(k): v for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------
# PyTorch names and layouts <-> Flax variables
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one PyTorch tensor goes in the Flax variables."""

    collection: str
    layer: str
    leaf: str  # 'kernel' or 'bias'
    flax_shape: tuple[int, ...]

    @property
    def is_deconv(self) -> bool:
        return self.layer.startswith("upscore")

    @property
    def torch_shape(self) -> tuple[int, ...]:
        """The PyTorch shape of this tensor (§6.3): conv (out, in, k, k), deconv (in, out, k, k)."""
        if self.leaf == "bias":
            return self.flax_shape
        kh, kw, c_in, c_out = self.flax_shape
        return (c_in, c_out, kh, kw) if self.is_deconv else (c_out, c_in, kh, kw)


def _to_flax(slot: _Slot, value: np.ndarray) -> np.ndarray:
    """Converts a PyTorch tensor to the Flax layout of `slot` (float32)."""
    value = np.asarray(value, np.float32)
    if slot.leaf == "bias":
        return value
    if slot.is_deconv:
        # (in, out, kh, kw) -> (kh, kw, in, out), flipped in space (module docstring).
        return np.ascontiguousarray(value.transpose(2, 3, 0, 1)[::-1, ::-1])
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))


def _slots(
    name: str, num_classes: int, width: float, learnable_upsampling: bool, geometry: str
) -> dict:
    """PyTorch key -> `_Slot` for every variable of the model, from its abstract init."""
    model = get_model(
        name, num_classes, geometry, width=width, learnable_upsampling=learnable_upsampling
    )
    # eval_shape: shapes only, no 134M-parameter allocation.
    abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    slots = {}
    for collection, layers in abstract.items():
        for layer, leaves in layers.items():
            for leaf, spec in leaves.items():
                torch_leaf = {"kernel": "weight", "bias": "bias"}[leaf]
                slots[f"{layer}.{torch_leaf}"] = _Slot(collection, layer, leaf, tuple(spec.shape))
    return slots


def _check_tensors(
    state: Mapping[str, np.ndarray], slots: Mapping[str, _Slot], names: Mapping[str, str]
) -> None:
    """Raises one ValueError naming every missing, extra or wrongly shaped tensor.

    Args:
      state: tensors in PyTorch layout, keyed like `slots`.
      slots: the tensors the model needs.
      names: how to call a key in messages (the key as written in the file).
    """
    problems = []
    for key, slot in slots.items():
        if key not in state:
            problems.append(f"missing {names.get(key, key)} (expected shape {slot.torch_shape})")
        elif tuple(state[key].shape) != slot.torch_shape:
            problems.append(
                f"wrong shape for {names.get(key, key)}: {tuple(state[key].shape)}, "
                f"expected {slot.torch_shape}"
            )
        elif not np.issubdtype(state[key].dtype, np.floating):
            problems.append(f"non-float dtype {state[key].dtype} for {names.get(key, key)}")
    problems += [f"unexpected {names.get(k, k)}" for k in state if k not in slots]
    if problems:
        raise ValueError("checkpoint does not fit the model:\n  " + "\n  ".join(problems))


def _assemble(state: Mapping[str, np.ndarray], slots: Mapping[str, _Slot]) -> Variables:
    """Builds the nested Flax variables from checked PyTorch tensors."""
    variables: Variables = {}
    for key, slot in slots.items():
        layer = variables.setdefault(slot.collection, {}).setdefault(slot.layer, {})
        layer[slot.leaf] = jnp.asarray(_to_flax(slot, state[key]))
    return variables


def _width_from(state: Mapping[str, np.ndarray], key: str) -> float:
    """Width multiplier from the fc6 output channels (the widest layer: best resolution)."""
    if key not in state or state[key].ndim < 1:
        return 1.0  # Let the shape check report the missing tensor.
    return state[key].shape[0] / FC_CHANNELS


def fcn_variables_from_state_dict(
    state: Mapping[str, np.ndarray],
    name: str,
    *,
    num_classes: int | None = None,
    width: float | None = None,
    learnable_upsampling: bool = False,
    geometry: str = "reference",
) -> Variables:
    """Converts a pytorch-fcn state_dict (keys of §6.3) into Flax variables of `name`.

    Args:
      state: tensor name -> array, e.g. from `read_state_dict`.
      name: `fcn32s`, `fcn16s`, `fcn8s` or `fcn8s_atonce` (same as `get_model`).
      num_classes: defaults to the length of `score_fr.bias`.
      width: defaults to (fc6 output channels) / 4096, as `get_model`'s `width`.
      learnable_upsampling: put the transposed-conv kernels in `params` instead of
        `upsampling`, as the model built with the same option expects.
      geometry: "reference" or "simple" (`get_model`); a simple-geometry state_dict has the
        same key names, with 1x1 fc6/fc7.

    Returns:
      `{'params': ..., 'upsampling': ...}` ready for `get_model(name, num_classes,
      width=width, learnable_upsampling=...).apply`.

    Raises:
      ValueError: naming every missing, unexpected or wrongly shaped tensor. The at-once
        model has no tensors for its fixed scalings (§2.3), so none are expected.
    """
    if num_classes is None:
        bias = state.get("score_fr.bias")
        num_classes = int(bias.shape[0]) if bias is not None and bias.ndim == 1 else 21
    if width is None:
        width = _width_from(state, "fc6.bias")
    slots = _slots(name, num_classes, width, learnable_upsampling, geometry)
    _check_tensors(state, slots, {})
    return _assemble(state, slots)


def load_pytorch_fcn(
    path: str | os.PathLike,
    name: str,
    *,
    num_classes: int | None = None,
    width: float | None = None,
    learnable_upsampling: bool = False,
    geometry: str = "reference",
) -> Variables:
    """Loads a pytorch-fcn checkpoint (e.g. `fcn8s_from_caffe.pth`) as Flax variables.

    Args:
      path: a bare state_dict or a trainer checkpoint with `model_state_dict`, in torch's
        zip or legacy format.
      name: `fcn32s`, `fcn16s`, `fcn8s` or `fcn8s_atonce`.
      num_classes: defaults to the file's (length of `score_fr.bias`).
      width: defaults to the file's ((fc6 output channels) / 4096).
      learnable_upsampling: see `fcn_variables_from_state_dict`.
      geometry: see `fcn_variables_from_state_dict`.

    Returns:
      Variables for `get_model(name, num_classes, geometry, width=..., ...)`.

    Raises:
      ValueError: the file does not fit the model; the message names every offending tensor.
    """
    return fcn_variables_from_state_dict(
        read_state_dict(path),
        name,
        num_classes=num_classes,
        width=width,
        learnable_upsampling=learnable_upsampling,
        geometry=geometry,
    )


# ---------------------------------------------------------------------------------------------
# ImageNet VGG16 -> FCN (§3.1, §6.4)
# ---------------------------------------------------------------------------------------------


def _vgg16_feature_names() -> dict[str, str]:
    """Maps torchvision `features.N` to FCN conv names (§6.4): conv/ReLU pairs, then a pool."""
    names, index = {}, 0
    for block, num_convs, _ in VGG16_BLOCKS:
        for i in range(1, num_convs + 1):
            names[f"features.{index}"] = f"conv{block}_{i}"
            index += 2
        index += 1
    return names


# fc6 / fc7 are torchvision's classifier.0 / classifier.3; jcjohnson's older conversion put
# Dropout first, giving classifier.1 / classifier.4 (§6.2). classifier.6 (fc8) is discarded.
_VGG_CLASSIFIER_LAYOUTS = ({"classifier.0": "fc6", "classifier.3": "fc7"},)
_VGG_CLASSIFIER_LAYOUTS += ({"classifier.1": "fc6", "classifier.4": "fc7"},)
_VGG_DISCARDED = ("classifier.6.weight", "classifier.6.bias")
_LEAVES = ("weight", "bias")


def vgg16_variables_from_state_dict(
    state: Mapping[str, np.ndarray],
    name: str,
    num_classes: int = 21,
    *,
    width: float | None = None,
    learnable_upsampling: bool = False,
    geometry: str = "reference",
    rng: jax.Array | None = None,
) -> Variables:
    """Initialises FCN `name` from a torchvision-layout VGG16 state_dict (§3.1, §6.4).

    Convolutions are copied; fc6 (4096, 25088) is reshaped row-major to (4096, 512, 7, 7) and
    fc7 to (4096, 4096, 1, 1), as Caffe's `transplant` does; fc8 is dropped. Score layers are
    zero and the upsampling kernels bilinear: the reference init (§2.1, §2.2, §3.1).

    Args:
      state: torchvision keys (`features.N.*`, `classifier.{0,3,6}.*`); the older jcjohnson
        layout (`classifier.{1,4,6}.*`) is accepted too.
      name: FCN variant (see `get_model`).
      num_classes: classes of the new score layers.
      width: defaults to (classifier.0 output features) / 4096.
      learnable_upsampling: see `fcn_variables_from_state_dict`.
      geometry: "reference", or "simple" (`fcn_jax.models.simple`): its 1x1 fc6/fc7 cannot
        take VGG's fc weights, so VGG's classifier is read but dropped and fc6/fc7 get
        `simple.FC_KERNEL_INIT` (He normal) and zero biases, drawn from `rng`
        (default key 0); a log line names them.
      rng: key for the layers VGG16 does not provide (simple geometry only).

    Returns:
      Variables for `get_model(name, num_classes, geometry, width=..., ...)`.

    Raises:
      ValueError: naming every missing, unexpected or wrongly shaped tensor (by its VGG name).
    """
    layout = _VGG_CLASSIFIER_LAYOUTS[0]
    if "classifier.0.weight" not in state and "classifier.1.weight" in state:
        layout = _VGG_CLASSIFIER_LAYOUTS[1]
    vgg_to_fcn = {**_vgg16_feature_names(), **layout}
    fc6_vgg = next(k for k, v in layout.items() if v == "fc6")
    if width is None:
        width = _width_from(state, f"{fc6_vgg}.bias")
    slots = _slots(name, num_classes, width, learnable_upsampling, geometry)
    fresh = simple.FRESH_LAYERS if geometry == "simple" else ()

    # Messages name tensors as the file does; keys outside the mapping stay distinct from
    # FCN names, so an FCN checkpoint passed here by mistake is rejected, not half-loaded.
    names = {
        f"{fcn}.{leaf}": f"{vgg}.{leaf}" for vgg, fcn in vgg_to_fcn.items() for leaf in _LEAVES
    }
    fcn_state = {}
    for key, value in state.items():
        if key in _VGG_DISCARDED:
            continue
        prefix, _, leaf = key.rpartition(".")
        if vgg_to_fcn.get(prefix) in fresh:
            continue
        fcn_key = f"{vgg_to_fcn[prefix]}.{leaf}" if prefix in vgg_to_fcn else f"vgg:{key}"
        names.setdefault(fcn_key, key)
        if fcn_key in slots and value.ndim == 2 and leaf == "weight":
            # Linear (out, in) -> conv (out, in / (kh * kw), kh, kw), row-major over (c, h, w)
            # as Caffe's transplant does (§3.1); a non-divisible size fails the shape check.
            kh, kw = slots[fcn_key].flax_shape[:2]
            if value.shape[1] % (kh * kw) == 0:
                value = value.reshape(value.shape[0], value.shape[1] // (kh * kw), kh, kw)
        fcn_state[fcn_key] = value
    vgg_slots = {
        k: s
        for k, s in slots.items()
        if s.layer.startswith(("conv", "fc")) and s.layer not in fresh
    }
    _check_tensors(fcn_state, vgg_slots, names)

    variables = _assemble(fcn_state, vgg_slots)
    keys = iter(jax.random.split(jax.random.key(0) if rng is None else rng, len(slots)))
    for key, slot in slots.items():
        if key not in vgg_slots:
            layer = variables.setdefault(slot.collection, {}).setdefault(slot.layer, {})
            if slot.layer in fresh:
                layer[slot.leaf] = simple.fresh_init(next(keys), slot.leaf, slot.flax_shape)
            else:
                layer[slot.leaf] = jnp.asarray(_head_init(slot))
    if fresh:
        logging.info(
            "load_vgg16(%s, geometry=simple): 13 conv layers from VGG16; %s initialised "
            "(He normal kernels, zero biases)",
            name,
            ", ".join(fresh),
        )
    return variables


def _head_init(slot: _Slot) -> np.ndarray:
    """Reference init of a head tensor: bilinear upsampling, zero score layers (§3.1)."""
    if slot.is_deconv:
        size, size_w, c_in, c_out = slot.flax_shape
        if size != size_w or c_in != c_out:
            raise ValueError(f"{slot.layer}: cannot make a bilinear kernel of {slot.flax_shape}")
        return bilinear_kernel(size, c_in)
    return np.zeros(slot.flax_shape, np.float32)


def load_vgg16(
    path: str | os.PathLike,
    name: str,
    num_classes: int = 21,
    *,
    width: float | None = None,
    learnable_upsampling: bool = False,
    geometry: str = "reference",
    rng: jax.Array | None = None,
) -> Variables:
    """Initialises FCN `name` from an ImageNet VGG16 `.pth` in torchvision layout.

    Use the Caffe VGG16 (`vgg16_from_caffe.pth`, BGR 0-255 mean-subtracted inputs) to follow
    the reference recipe; torchvision's own `vgg16-397923af.pth` loads too but expects RGB
    inputs normalised by ImageNet mean/std (§6.4).

    Args:
      path: the VGG16 state_dict file (zip or legacy format).
      name: FCN variant (see `get_model`).
      num_classes: classes of the (zero-initialised) score layers.
      width: defaults to the file's ((classifier.0 output features) / 4096).
      learnable_upsampling: see `fcn_variables_from_state_dict`.
      geometry: "reference" or "simple"; see `vgg16_variables_from_state_dict`.
      rng: see `vgg16_variables_from_state_dict`.

    Returns:
      Variables for `get_model(name, num_classes, geometry, width=..., ...)`.

    Raises:
      ValueError: naming every missing, unexpected or wrongly shaped tensor.
    """
    return vgg16_variables_from_state_dict(
        read_state_dict(path),
        name,
        num_classes,
        width=width,
        learnable_upsampling=learnable_upsampling,
        geometry=geometry,
        rng=rng,
    )


# ---------------------------------------------------------------------------------------------
# Staged initialisation (§3.1: 32s -> 16s -> 8s)
# ---------------------------------------------------------------------------------------------


def _by_name(variables: Mapping[str, Any]) -> dict[tuple[str, str], tuple[str, Any]]:
    """(layer, leaf) -> (collection, value), regardless of the collection holding it."""
    out = {}
    for collection, layers in variables.items():
        for layer, leaves in layers.items():
            for leaf, value in leaves.items():
                out[(layer, leaf)] = (collection, value)
    return out


def stage_variables(source: Mapping[str, Any], target: Mapping[str, Any]) -> Variables:
    """Initialises a finer FCN from a trained coarser one by copying tensors by name (§3.1).

    FCN-32s -> FCN-16s copies conv1_1 ... fc7 and score_fr; FCN-16s -> FCN-8s also copies
    score_pool4 and upscore2. Tensors only the target has (the new skip score layers, zero;
    the new upsampling kernels, bilinear) keep the target's values, so at the start the finer
    net adds nothing from the new skip. Layers are matched by name across collections, so the
    upsampling kernels are matched whether they are frozen or learnable in either model.

    Args:
      source: variables of the trained coarser model.
      target: freshly initialised variables of the finer model (e.g. from `init_variables`,
        or `load_vgg16`); not modified.

    Returns:
      New variables with the structure of `target`.

    Raises:
      ValueError: naming every tensor present in both with different shapes.
    """
    source_by_name = _by_name(source)
    mismatched = []
    staged: Variables = {}
    for (layer, leaf), (collection, value) in _by_name(target).items():
        if (layer, leaf) in source_by_name:
            new = source_by_name[(layer, leaf)][1]
            if tuple(new.shape) != tuple(value.shape):
                mismatched.append(f"{layer}.{leaf}: source {new.shape}, target {value.shape}")
            value = jnp.asarray(new, dtype=value.dtype)
        staged.setdefault(collection, {}).setdefault(layer, {})[leaf] = value
    if mismatched:
        raise ValueError("cannot stage, shapes differ:\n  " + "\n  ".join(mismatched))
    return staged
