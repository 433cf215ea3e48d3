"""Structure checks for model formats that are not pickles, read as streams.

Each check reads a `Reader` from the start of the file and returns its findings (empty: the
file is well formed). They parse the format's framing, never its payload:
- safetensors: the JSON header, each tensor's dtype/shape against its byte range, ranges that
  tile the data exactly (no overlap, no gap, nothing past the end), as the reference loader does;
- GGUF: header, metadata and tensor table, tensor offsets aligned and inside the data section;
- ONNX: the protobuf framing down to every tensor (initializers, node attributes, subgraphs,
  functions), and external-data locations, which must name a file inside the artifact;
- Keras: `config.json` of a `.keras` archive (Lambda layers and custom objects), and the model
  config of a legacy HDF5 `.h5` file (Lambda layers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from .reader import Invalid, Reader

_MAX_HEADER = 100_000_000    # safetensors' own limit on its JSON header
_MAX_COUNT = 10_000_000      # GGUF metadata entries / tensors / array items
_MAX_STRING = 64 << 20       # GGUF strings

# --------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------

_ST_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
                  "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64,
                  "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


def check_safetensors(r: Reader) -> list[str]:
    try:
        size = int.from_bytes(r.read(8), "little")
        if size > _MAX_HEADER:
            return [f"safetensors header of {size} bytes, over the format's limit"]
        try:
            header = json.loads(r.read(size))
        except ValueError as exc:
            return [f"safetensors header is not JSON: {exc}"]
        if not isinstance(header, dict):
            return ["safetensors header is not a JSON object"]
        spans = []
        for name, info in header.items():
            if name == "__metadata__":
                if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                    return ["safetensors __metadata__ must map strings to strings"]
                continue
            problem = _tensor_problem(name, info)
            if problem:
                return [problem]
            begin, end = info["data_offsets"]
            spans.append((begin, end, name))
        spans.sort()
        at, previous = 0, None
        for begin, end, name in spans:
            if begin < at:
                return [f"safetensors tensors {previous!r} and {name!r} overlap"]
            if begin > at:
                return [f"safetensors tensor {name!r} leaves a gap before it (bytes {at}..{begin})"]
            at, previous = end, name
        data_size = _bytes_left(r)
        if at != data_size:
            return [f"safetensors tensors cover {at} bytes of data but the file holds {data_size}"]
        return []
    except Invalid as exc:
        return [f"not a valid safetensors file: {exc}"]


def _tensor_problem(name: str, info: Any) -> str | None:
    if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
        return f"safetensors entry {name!r} is not a tensor description"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ST_DTYPE_BITS:
        return f"safetensors tensor {name!r} has an unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"safetensors tensor {name!r} has an invalid shape"
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        return f"safetensors tensor {name!r} has invalid data_offsets"
    bits = math.prod(shape) * _ST_DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        return (f"safetensors tensor {name!r}: {dtype}{shape} needs {bits / 8:g} bytes, "
                f"its offsets span {offsets[1] - offsets[0]}")
    return None


def _bytes_left(r: Reader) -> int:
    """Skip to the end (seeking where it can); how many bytes there were."""
    start = r.offset
    r.skip_to_end()
    return r.offset - start


# --------------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------------

# Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array,
# 10 u64, 11 i64, 12 f64.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def check_gguf(r: Reader) -> list[str]:
    try:
        if r.read(4) != b"GGUF":
            return ["not a GGUF file"]
        version = int.from_bytes(r.read(4), "little")
        if version not in (2, 3):
            return [f"GGUF version {version} is not supported (2 and 3 are)"]
        tensors, entries = (int.from_bytes(r.read(8), "little") for _ in range(2))
        if tensors > _MAX_COUNT or entries > _MAX_COUNT:
            return ["GGUF header claims too many tensors or metadata entries"]
        alignment = 32
        for _ in range(entries):
            key = _gguf_string(r)
            kind = int.from_bytes(r.read(4), "little")
            value = _gguf_value(r, kind)
            if key == "general.alignment":
                if not isinstance(value, int) or value <= 0 or value & (value - 1):
                    return ["GGUF general.alignment is not a power of two"]
                alignment = value
        offsets = []
        for _ in range(tensors):
            name = _gguf_string(r)
            dims = int.from_bytes(r.read(4), "little")
            if dims > 8:
                return [f"GGUF tensor {name!r} has {dims} dimensions"]
            r.skip(8 * dims + 4)  # the dimensions and the ggml type
            offset = int.from_bytes(r.read(8), "little")
            if offset % alignment:
                return [f"GGUF tensor {name!r} is not aligned to {alignment} bytes"]
            offsets.append((offset, name))
        header_end = r.offset
        r.skip(-header_end % alignment)
        data_size = _bytes_left(r)
        seen: set[int] = set()
        for offset, name in offsets:
            if offset > data_size:
                return [f"GGUF tensor {name!r} starts past the end of the data"]
            if offset in seen:
                return [f"GGUF tensor {name!r} shares its offset with another tensor"]
            seen.add(offset)
        return []
    except Invalid as exc:
        return [f"not a valid GGUF file: {exc}"]


def _gguf_string(r: Reader) -> str | None:
    n = int.from_bytes(r.read(8), "little")
    if n > _MAX_STRING:
        raise Invalid(f"a string of {n} bytes")
    if n > 4096:
        r.skip(n)
        return None
    return r.read(n).decode("utf-8", "replace")


def _gguf_value(r: Reader, kind: int) -> Any:
    if kind in _GGUF_SIZES:
        return int.from_bytes(r.read(_GGUF_SIZES[kind]), "little")
    if kind == 8:
        return _gguf_string(r)
    if kind == 9:
        item = int.from_bytes(r.read(4), "little")
        count = int.from_bytes(r.read(8), "little")
        if count > _MAX_COUNT:
            raise Invalid(f"an array of {count} items")
        if item in _GGUF_SIZES:
            r.skip(count * _GGUF_SIZES[item])
        elif item in (8, 9):
            for _ in range(count):
                _gguf_value(r, item)
        else:
            raise Invalid(f"an array of unknown type {item}")
        return None
    raise Invalid(f"unknown metadata type {kind}")


# --------------------------------------------------------------------------------------------
# ONNX (protobuf)
# --------------------------------------------------------------------------------------------

# (message, field number) -> message type of that field; every other field is skipped.
_ONNX_FIELDS = {
    ("model", 7): "graph", ("model", 25): "function",
    ("graph", 1): "node", ("graph", 5): "tensor", ("graph", 15): "sparse",
    ("function", 2): "node",
    ("node", 5): "attribute",
    ("attribute", 5): "tensor", ("attribute", 6): "graph", ("attribute", 10): "tensor",
    ("attribute", 11): "graph", ("attribute", 22): "sparse", ("attribute", 23): "sparse",
    ("sparse", 1): "tensor", ("sparse", 2): "tensor",
    ("tensor", 13): "entry",
}
_MAX_PROTO_DEPTH = 64


def _varint(r: Reader) -> int:
    value, shift = 0, 0
    while True:
        byte = r.read(1)[0]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise Invalid("a varint longer than 10 bytes")


def _walk_proto(r: Reader, end: int | None, kind: str, depth: int, on_entry: Callable[[str, str], None],
                seen: dict[str, int]) -> dict[int, Any]:
    """Walk one message up to `end` (None: the end of the stream); return the short scalar and
    string fields of interest by number."""
    if depth > _MAX_PROTO_DEPTH:
        raise Invalid("messages nested too deep")
    fields: dict[int, Any] = {}
    while (r.offset < end) if end is not None else not r.at_eof():
        key = _varint(r)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise Invalid("field number 0")
        seen[kind] = seen.get(kind, 0) + 1
        if wire == 0:
            fields[number] = _varint(r)
        elif wire == 1:
            r.skip(8)
        elif wire == 5:
            r.skip(4)
        elif wire == 2:
            length = _varint(r)
            stop = r.offset + length
            if end is not None and stop > end:
                raise Invalid("a field runs past its message")
            sub = _ONNX_FIELDS.get((kind, number))
            if sub is not None:
                inner = _walk_proto(r, stop, sub, depth + 1, on_entry, seen)
                if sub == "entry":
                    k, v = inner.get(1), inner.get(2)
                    if isinstance(k, str) and isinstance(v, str):
                        on_entry(k, v)
            elif kind == "entry" and length <= 4096:
                fields[number] = r.read(length).decode("utf-8", "replace")
            else:
                r.skip(length)
        else:
            raise Invalid(f"wire type {wire}")
        if end is not None and r.offset > end:
            raise Invalid("a field runs past its message")
    return fields


def check_onnx(r: Reader, siblings: frozenset[str] | None) -> list[str]:
    """`siblings`: the other files of the artifact, relative to this file's folder (None: the
    artifact is this file alone, so no external data can be inside it)."""
    locations: list[str] = []
    seen: dict[str, int] = {}

    def on_entry(key: str, value: str) -> None:
        if key == "location":
            locations.append(value)

    try:
        top = _walk_proto(r, None, "model", 0, on_entry, seen)
    except Invalid as exc:
        return [f"not a valid ONNX model: {exc}"]
    if 1 not in top or not seen.get("graph"):
        return ["not a valid ONNX model: no ir_version or no graph"]
    findings = []
    for location in dict.fromkeys(locations):
        path = PurePosixPath(location.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or (len(location) > 1 and location[1] == ":"):
            findings.append(f"ONNX external data {location!r} points outside the artifact")
        elif siblings is None or str(path) not in siblings:
            findings.append(f"ONNX external data {location!r} is not a file of the artifact")
    return findings


# --------------------------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------------------------

_KERAS_MODULES = ("keras", "tf_keras", "tensorflow.keras", "tensorflow.python.keras")
_LAMBDA_NAMES = frozenset({"Lambda", "__lambda__", "TFOpLambda"})


def check_keras_config(config: Any, allowed: Callable[[str, str], bool]) -> list[str]:
    """Lambda layers (their Python code runs when the model loads) and custom objects (classes
    from outside Keras, refused unless the policy allows them) in a Keras model config."""
    findings: list[str] = []

    def walk(node: Any, depth: int) -> None:
        if depth > 200 or len(findings) > 50:
            return
        if isinstance(node, dict):
            cls = node.get("class_name")
            if isinstance(cls, str):
                label = node.get("config", {}).get("name") if isinstance(node.get("config"), dict) else None
                if cls in _LAMBDA_NAMES:
                    findings.append(f"Keras Lambda layer {label or cls!r} (runs Python code when loaded)")
                module = node.get("module")
                if isinstance(module, str) and module and not module.startswith(_KERAS_MODULES):
                    target = node.get("config") if cls == "function" and isinstance(node.get("config"), str) else cls
                    if not allowed(module, str(target)):
                        findings.append(f"Keras custom object {module}.{target}")
            for value in node.values():
                walk(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth + 1)

    walk(config, 0)
    return findings


_H5_LAMBDA_MARKERS = (b'"class_name": "Lambda"', b'"class_name":"Lambda"', b'"class_name": "TFOpLambda"')


def check_hdf5_keras(r: Reader) -> list[str]:
    """A legacy Keras .h5 keeps its model config as JSON text in an HDF5 attribute: look for a
    Lambda layer in it (a byte search across the file, chunk by chunk)."""
    overlap = max(len(m) for m in _H5_LAMBDA_MARKERS)
    tail = b""
    try:
        while not r.at_eof():
            chunk = r.unread_buffer()
            window = tail + chunk
            if any(m in window for m in _H5_LAMBDA_MARKERS):
                return ["Keras Lambda layer in an HDF5 model config (runs Python code when loaded)"]
            tail = window[-overlap:]
            r.skip(len(chunk))
    except Invalid as exc:
        return [f"cannot read HDF5 file: {exc}"]
    return []

