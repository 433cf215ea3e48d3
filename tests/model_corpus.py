"""Model files for the scanner's tests, made here from the real libraries (no binary blobs).

scikit-learn, joblib, numpy and LightGBM write their own files. torch is not installed (its
PyPI wheels pull CUDA), so its three layouts are written by hand exactly as `torch.save` lays
them out: the zip archive (`<name>/data.pkl` + `<name>/data/<key>` + version records), the
legacy stream (`_use_new_zipfile_serialization=False`: magic, protocol, sys_info, object pickle,
storage keys, storages) and the older tar (`sys_info`, `storages`, `tensors`, `pickle`).
To make `pickle` write torch's globals (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`,
`torch.nn.modules.linear.Linear`) without torch, stand-in modules of those names are put in
`sys.modules` while a file is written.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TORCH_MAGIC = 0x1950A86A20F9469CFC6C


# --- payloads --------------------------------------------------------------------------------

class Exploit:
    """Runs a shell command when unpickled (os.system is recorded as posix.system)."""

    def __init__(self, command: str = "echo pwned > /tmp/modelreg-pwned") -> None:
        self.command = command

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (self.command,))


class SubprocessExploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (subprocess.Popen, (["id"],))


# --- stand-in torch --------------------------------------------------------------------------

class _Storage:
    """A tensor's storage: torch.save writes it as a persistent id, its bytes go elsewhere."""

    def __init__(self, key: str, kind: str, data: bytes, itemsize: int) -> None:
        self.key, self.kind, self.data, self.itemsize = key, kind, data, itemsize

    @property
    def numel(self) -> int:
        return len(self.data) // self.itemsize


class FakeTensor:
    """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, grad, hooks)."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):  # type: ignore[no-untyped-def]
        torch_utils = sys.modules["torch._utils"]
        stride = tuple(int(_prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (torch_utils._rebuild_tensor_v2,
                (self.storage, 0, self.shape, stride, False, collections.OrderedDict()))


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


_TORCH_NAMES = {
    "torch": ["FloatStorage", "LongStorage"],
    "torch._utils": ["_rebuild_tensor_v2", "_rebuild_parameter"],
    "torch.nn": [], "torch.nn.modules": [],
    "torch.nn.modules.linear": ["Linear"], "torch.nn.modules.activation": ["ReLU"],
    "torch.nn.modules.container": ["Sequential"],
}


@contextlib.contextmanager
def stand_in_torch() -> Iterator[None]:
    """Modules named like torch's, with functions and classes named like its own (in place of
    the real ones, should torch be installed, while a file is written)."""
    saved = {name: sys.modules.get(name) for name in _TORCH_NAMES}
    try:
        for modname, names in _TORCH_NAMES.items():
            module = types.ModuleType(modname)
            module._modelreg_stand_in = True  # type: ignore[attr-defined]
            for name in names:
                if name[0].isupper():
                    obj: Any = type(name, (), {"__module__": modname})
                else:
                    def obj(*args: Any) -> None:  # noqa: ARG001 - never called
                        raise AssertionError("stand-in torch is only for writing files")
                    obj.__module__, obj.__name__, obj.__qualname__ = modname, name, name
                setattr(module, name, obj)
            sys.modules[modname] = module
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _TorchPickler(pickle.Pickler):
    """torch.save's pickler: storages become ('storage', type, key, location, numel, None)."""

    def __init__(self, f: io.BytesIO, storages: dict[str, _Storage]) -> None:
        super().__init__(f, protocol=2)
        self.storages = storages

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            self.storages[obj.key] = obj
            storage_type = getattr(sys.modules["torch"], obj.kind)
            return ("storage", storage_type, obj.key, "cpu", obj.numel, None)
        return None


def linear_state_dict() -> collections.OrderedDict:
    """A Linear(2, 2) layer's state dict: weight and bias as float32 tensors."""
    weight = _Storage("0", "FloatStorage", struct.pack("<4f", 0.5, -0.5, 0.25, 1.0), 4)
    bias = _Storage("1", "FloatStorage", struct.pack("<2f", 0.1, 0.2), 4)
    return collections.OrderedDict([("weight", FakeTensor(weight, (2, 2))), ("bias", FakeTensor(bias, (2,)))])


def torch_module_object() -> Any:
    """A full-model pickle: Sequential(Linear, ReLU), built from the stand-in classes."""
    container = sys.modules["torch.nn.modules.container"]
    linear = sys.modules["torch.nn.modules.linear"].Linear()
    linear.__dict__.update({"training": False, "_parameters": linear_state_dict(), "in_features": 2,
                            "out_features": 2})
    relu = sys.modules["torch.nn.modules.activation"].ReLU()
    relu.__dict__.update({"training": False, "inplace": False})
    model = container.Sequential()
    model.__dict__.update({"training": False, "_modules": collections.OrderedDict([("0", linear), ("1", relu)])})
    return model


def _pickle_with_storages(obj: Any) -> tuple[bytes, dict[str, _Storage]]:
    storages: dict[str, _Storage] = {}
    buf = io.BytesIO()
    _TorchPickler(buf, storages).dump(obj)
    return buf.getvalue(), storages


def torch_zip(obj_factory: Any, name: str = "model") -> bytes:
    """torch.save(obj, f): the zip archive layout (stored, not compressed)."""
    with stand_in_torch():
        data, storages = _pickle_with_storages(obj_factory())
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{name}/data.pkl", data)
        zf.writestr(f"{name}/.format_version", b"1")
        zf.writestr(f"{name}/.storage_alignment", b"64")
        zf.writestr(f"{name}/byteorder", b"little")
        for key, storage in sorted(storages.items()):
            zf.writestr(f"{name}/data/{key}", storage.data)
        zf.writestr(f"{name}/version", b"3\n")
        zf.writestr(f"{name}/.data/serialization_id", b"1234567890123456789012345678901234567890")
    return out.getvalue()


_SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}


def torch_legacy(obj_factory: Any, appended: bytes = b"") -> bytes:
    """torch.save(obj, f, _use_new_zipfile_serialization=False)."""
    with stand_in_torch():
        data, storages = _pickle_with_storages(obj_factory())
    out = io.BytesIO()
    for header in (TORCH_MAGIC, 1001, _SYS_INFO):
        pickle.dump(header, out, protocol=2)
    out.write(data)
    keys = sorted(storages)
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        out.write(struct.pack("<q", storages[key].numel))
        out.write(storages[key].data)
    return out.getvalue() + appended


def torch_legacy_tar(main_pickle: bytes | None = None, storage_record: bytes | None = None) -> bytes:
    """The tar layout torch.load still reads (torch.save before 0.4): `main_pickle` replaces the
    `pickle` member, `storage_record` the first storage's record pickle."""
    floats = struct.pack("<2f", 1.0, 2.0)
    with stand_in_torch():
        storage_type = sys.modules["torch"].FloatStorage
        storages = io.BytesIO()
        pickle.dump(1, storages, protocol=2)
        storages.write(storage_record if storage_record is not None
                       else pickle.dumps(("0", "cpu", storage_type), protocol=2))
        storages.write(struct.pack("<q", 2) + floats)
        pickle.dump([], storages, protocol=2)  # storage views
        tensors = io.BytesIO()
        pickle.dump(1, tensors, protocol=2)
        tensors.write(pickle.dumps(("t0", "0", "torch.FloatTensor"), protocol=2))
        tensors.write(struct.pack("<i", 1) + b"\0" * 4 + struct.pack("<q", 2) + struct.pack("<q", 1)
                      + struct.pack("<q", 0))
    members = {
        "sys_info": pickle.dumps(_SYS_INFO, protocol=2),
        "pickle": main_pickle if main_pickle is not None else pickle.dumps({"weight": "t0"}, protocol=2),
        "storages": storages.getvalue(),
        "tensors": tensors.getvalue(),
    }
    return tar_of(members, fmt=tarfile.PAX_FORMAT)


# --- archives --------------------------------------------------------------------------------

def tar_of(members: dict[str, bytes], fmt: int = tarfile.PAX_FORMAT, mode: str = "w") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def joblib_bytes(obj: Any, compress: Any = 0) -> bytes:
    import joblib

    buf = io.BytesIO()
    joblib.dump(obj, buf, compress=compress)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
