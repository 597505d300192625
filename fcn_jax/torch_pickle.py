"""Reads PyTorch `.pth` files into numpy arrays without importing torch.

Both serialisation formats written by `torch.save` are supported:

* **zip** (torch >= 1.6, the default): a zip archive `<prefix>/data.pkl` holding the object
  pickle, and one member `<prefix>/data/<key>` of raw little-endian bytes per storage.
* **legacy** (torch < 1.6, or `_use_new_zipfile_serialization=False`): a plain stream of
  pickles -- magic number, protocol version, sys_info, the object, the list of storage keys --
  followed by every storage's raw bytes, each preceded by its element count as an int64.
  The published `*_from_caffe.pth` files (docs/reference.md §6.2) date from 2017 and may be
  in this format.

In both formats a tensor is pickled as a call to `torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)` (or the older `_rebuild_tensor`, or a `torch.FloatTensor` object
with a `__setstate__` state in torch 0.1), where `storage` is a persistent id
`('storage', storage_type, key, location, numel[, view_metadata])`.

Security: unpickling can run arbitrary code. `_RestrictedUnpickler.find_class` resolves only
the handful of names listed in `_SAFE_GLOBALS` / `_TORCH_STORAGE_DTYPES` to local stand-ins (no
torch, no arbitrary callables); anything else raises `UnsupportedPickleError`.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

# torch.save's legacy stream starts with these two pickles (torch/serialization.py).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Storage class name -> little-endian numpy dtype of its elements. bfloat16 has no numpy
# dtype; it is read as uint16 and widened to float32 when the tensor is built.
_TORCH_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
# Old (torch 0.1-0.3) tensor classes, pickled with a __setstate__ state instead of a
# _rebuild_tensor call: `torch.FloatTensor` -> its storage class.
_TORCH_TENSOR_CLASSES = {
    name.replace("Storage", "Tensor"): name
    for name in _TORCH_STORAGE_DTYPES
    if name != "BoolStorage"
}


class UnsupportedPickleError(pickle.UnpicklingError):
    """Raised when a file refers to a Python global that the reader does not allow."""


class _StorageType:
    """Stand-in for a `torch.<X>Storage` class: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _TORCH_STORAGE_DTYPES[name]


class _Storage:
    """One storage of the file; `array` may be filled after unpickling (legacy format)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int, bfloat16: bool):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.bfloat16 = bfloat16
        self.array: np.ndarray | None = None


class _PendingTensor:
    """A tensor recorded while unpickling and materialised once every storage is read.

    The legacy format stores the raw bytes after the object pickle, so tensors cannot be
    built during unpickling; deferring them keeps both formats on one code path.
    """

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("tensor without a storage")
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialise(self) -> np.ndarray:
        """Returns the tensor as a contiguous numpy array (bfloat16 widened to float32).

        Bounds are checked before `as_strided`, so a corrupt or hostile file cannot make it
        read memory outside the storage.
        """
        storage, size, stride, offset = self.storage.array, self.size, self.stride, self.offset
        if len(size) != len(stride) or min(size + stride + (offset,)) < 0:
            raise pickle.UnpicklingError(f"invalid tensor geometry size={size} stride={stride}")
        if 0 in size:
            result = np.zeros(size, storage.dtype)
        else:
            last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
            if last >= storage.size:
                raise pickle.UnpicklingError(
                    f"tensor (offset {offset}, size {size}, stride {stride}) runs past its "
                    f"storage of {storage.size} elements"
                )
            result = np.lib.stride_tricks.as_strided(
                storage[offset:],
                shape=size,
                strides=tuple(st * storage.itemsize for st in stride),
                writeable=False,
            ).copy()
        if self.storage.bfloat16:
            # bfloat16 has no numpy dtype; its bits are the top half of a float32.
            result = (result.astype(np.uint32) << 16).view(np.float32)
        return result


class _LegacyTensor:
    """Stand-in for a torch 0.1 `torch.<X>Tensor` object rebuilt through `__setstate__`."""

    def __init__(self, *args: Any):
        if args:
            raise pickle.UnpicklingError("unexpected arguments to a legacy tensor class")
        self.pending: _PendingTensor | None = None

    def __setstate__(self, state: tuple) -> None:
        self.pending = _PendingTensor(*state[:4])


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any):
    """`torch._utils._rebuild_tensor[_v2]`; extra arguments (requires_grad, hooks) ignored."""
    return _PendingTensor(storage, offset, size, stride)


def _rebuild_parameter(data: _PendingTensor, *_: Any) -> _PendingTensor:
    """`torch._utils._rebuild_parameter[_with_state]`: a Parameter is just its data here."""
    return data


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> np.generic:
    """`numpy.core.multiarray.scalar`, as pickled for numpy scalars (e.g. a best mean IU)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsupportedPickleError("numpy scalar of an unsupported dtype")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_dtype(spec: str, align: bool = False, copy: bool = False) -> np.dtype:
    """`numpy.dtype` restricted to plain numeric / boolean types (no object dtype)."""
    dtype = np.dtype(spec)
    if dtype.kind not in "biufc":
        raise UnsupportedPickleError(f"numpy dtype {spec!r} is not allowed")
    return dtype


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode`, which protocol-2 pickles use to carry `bytes` objects."""
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsupportedPickleError(f"encoding {encoding!r} is not allowed")
    return text.encode(encoding)


# Every global a checkpoint may name, mapped to a local, side-effect-free stand-in.
_SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and torch storage references.

    Storages are recorded in `storages` (key -> `_Storage`, without data); the caller fills
    their `array` and then materialises the tensors with `_resolve`.
    """

    def __init__(self, file: BinaryIO, allow_storages: bool = True):
        super().__init__(file)
        self.allow_storages = allow_storages
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _TORCH_TENSOR_CLASSES:
            return _LegacyTensor
        raise UnsupportedPickleError(
            f"refusing to load global {module}.{name}: this reader only understands tensors, "
            "dicts and plain Python values"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (self.allow_storages and isinstance(pid, tuple) and len(pid) >= 5):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        tag, storage_type, key, _location, numel = pid[:5]
        if tag != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if len(pid) > 5 and pid[5] is not None:
            # Storage views: only written by torch < 0.4 for shared sub-storages.
            raise pickle.UnpicklingError("storage views (torch < 0.4) are not supported")
        key = str(key)
        if key not in self.storages:
            bf16 = storage_type.name == "BFloat16Storage"
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel), bf16)
        return self.storages[key]


def _resolve(obj: Any) -> Any:
    """Replaces pending tensors by numpy arrays throughout dicts, lists and tuples."""
    if isinstance(obj, _PendingTensor):
        return obj.materialise()
    if isinstance(obj, _LegacyTensor):
        if obj.pending is None:
            raise pickle.UnpicklingError("legacy tensor without a state")
        return obj.pending.materialise()
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _resolve(value)
    elif isinstance(obj, list):
        obj[:] = [_resolve(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def _load_zip(path: str | os.PathLike) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path}: zip file without exactly one data.pkl; not a torch file")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian torch files are not supported")
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])))
        obj = unpickler.load()
        for storage in unpickler.storages.values():
            data = archive.read(f"{prefix}data/{storage.key}")
            if len(data) < storage.numel * storage.dtype.itemsize:
                raise pickle.UnpicklingError(f"{path}: storage {storage.key} is truncated")
            storage.array = np.frombuffer(data, dtype=storage.dtype, count=storage.numel)
    return obj


def _load_legacy(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        try:
            magic = _RestrictedUnpickler(f, allow_storages=False).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: neither a zip nor a legacy PyTorch file") from err
        if magic != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path}: not a PyTorch file (bad magic number)")
        protocol = _RestrictedUnpickler(f, allow_storages=False).load()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported legacy protocol version {protocol}")
        sys_info = _RestrictedUnpickler(f, allow_storages=False).load()
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian torch files are not supported")
        unpickler = _RestrictedUnpickler(f)
        obj = unpickler.load()
        keys = _RestrictedUnpickler(f, allow_storages=False).load()
        # Raw bytes follow in the order of `keys`, each prefixed by its element count.
        for key in keys:
            (count,) = struct.unpack("<q", _read_exact(f, 8))
            storage = unpickler.storages.get(str(key))
            if storage is None:
                raise pickle.UnpicklingError(f"{path}: unexpected storage {key}")
            if count != storage.numel:
                raise pickle.UnpicklingError(
                    f"{path}: storage {key} has {count} elements, expected {storage.numel}"
                )
            raw = _read_exact(f, count * storage.dtype.itemsize)
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=count)
        missing = [k for k, st in unpickler.storages.items() if st.array is None]
        if missing:
            raise pickle.UnpicklingError(f"{path}: storages {missing} have no data")
    return obj


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise pickle.UnpicklingError("file is truncated")
    return data


def load(path: str | os.PathLike) -> Any:
    """Loads the object saved by `torch.save` at `path`, with tensors as numpy arrays.

    Args:
      path: a `.pth` / `.pt` file in the zip or the legacy format.

    Returns:
      The saved object (typically an `OrderedDict` state_dict, or a checkpoint dict), with
      every tensor and Parameter replaced by a contiguous numpy array of the same dtype
      (bfloat16 is widened to float32).

    Raises:
      UnsupportedPickleError: the file names a Python global outside the allow-list.
      ValueError: the file is neither a zip nor a legacy torch file.
      pickle.UnpicklingError: the file is corrupt or truncated.
    """
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    return _resolve(obj)
