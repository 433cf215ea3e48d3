"""Format checks beyond pickle, on files written by the formats' own libraries (safetensors,
onnx, gguf) or laid out as Keras does (a .keras archive is a zip of config.json,
metadata.json and model.weights.h5; keras itself needs a deep-learning backend)."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from services.validation.scan import ArtifactScan, scan_file, scan_stream
from tests.model_corpus import zip_of


def scan(data: bytes, declared: str | None, label: str = "m", **kwargs) -> ArtifactScan:
    return scan_stream(io.BytesIO(data), declared_format=declared, label=label, **kwargs)


def texts(result: ArtifactScan) -> list[str]:
    return [str(f) for f in result.findings]


class NonSeekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._f.readinto(b)


# --- safetensors -----------------------------------------------------------------------------

def safetensors_file() -> bytes:
    from safetensors.numpy import save

    return save({"w": np.ones((3, 4), np.float32), "b": np.arange(4, dtype=np.int64),
                 "h": np.zeros(5, np.float16)}, metadata={"format": "np"})


def with_header(data: bytes, edit) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


@pytest.mark.parametrize("stream", [io.BytesIO, NonSeekable])
def test_safetensors_from_the_library_pass(stream):
    result = scan_stream(stream(safetensors_file()), declared_format="safetensors", label="m.safetensors")
    assert result.examined and result.safe, texts(result)


def _overlap(h):
    h["h2"] = dict(h["h"])  # a second tensor on the same bytes


@pytest.mark.parametrize(("edit", "expected"), [
    (_overlap, "overlap"),
    (lambda h: h["w"].update(shape=[3, 5]), "needs 60 bytes"),
    (lambda h: h["w"].update(dtype="F128"), "unknown dtype"),
    (lambda h: h["w"].update(data_offsets=[0, 10**12]), "needs 48 bytes"),
    (lambda h: h.__setitem__("__metadata__", {"a": 1}), "__metadata__"),
])
def test_safetensors_with_a_bad_header_is_refused(edit, expected):
    result = scan(with_header(safetensors_file(), edit), "safetensors", "m.safetensors")
    assert not result.safe
    assert expected in texts(result)[0] and texts(result)[0].endswith("in m.safetensors"), texts(result)


def test_safetensors_with_data_past_its_tensors_or_cut_short_is_refused():
    data = safetensors_file()
    assert "cover" in texts(scan(data + b"\0" * 8, "safetensors"))[0]
    assert not scan(data[:-4], "safetensors").safe


# --- ONNX --------------------------------------------------------------------------------------

def onnx_model(external: str | None = None, nested: bool = False) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), name="W")
    if external is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "16")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    node = helper.make_node("MatMul", ["X", "W"], ["Y"])
    if nested:  # the tensor inside a Constant node's attribute of an If's subgraph
        const = helper.make_node("Constant", [], ["W"], value=weight)
        then = helper.make_graph([const], "then", [], [helper.make_tensor_value_info("W", TensorProto.FLOAT, [2, 2])])
        node = helper.make_node("If", ["C"], ["Y"], then_branch=then, else_branch=then)
        inputs = [helper.make_tensor_value_info("C", TensorProto.BOOL, [])]
        graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 2])])
    else:
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 2])],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external is None:
        onnx.checker.check_model(model)
    return model.SerializeToString()


def test_an_onnx_model_from_the_library_passes():
    result = scan(onnx_model(), "onnx", "m.onnx")
    assert result.examined and result.safe, texts(result)


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/shadow", "C:\\secrets.bin"])
def test_onnx_external_data_outside_the_artifact_is_refused(location, nested):
    result = scan(onnx_model(external=location, nested=nested), "onnx", "m.onnx")
    assert texts(result) == [f"ONNX external data {location!r} points outside the artifact in m.onnx"]


def test_onnx_external_data_must_be_a_file_of_the_artifact():
    data = onnx_model(external="weights.bin")
    assert texts(scan(data, "onnx", "m.onnx")) == [
        "ONNX external data 'weights.bin' is not a file of the artifact in m.onnx"]
    assert scan(data, "onnx", siblings=frozenset({"weights.bin"})).safe
    bundle = zip_of({"model/m.onnx": data, "model/weights.bin": np.ones(4, np.float32).tobytes()})
    assert scan(bundle, None).safe
    lonely = zip_of({"model/m.onnx": data})
    assert "is not a file of the artifact in m > model/m.onnx" in texts(scan(lonely, None))[0]


def test_a_truncated_onnx_model_is_refused():
    result = scan(onnx_model()[:-7], "onnx")
    assert texts(result)[0].startswith("not a valid ONNX model")


# --- GGUF ----------------------------------------------------------------------------------------

def gguf_file(tmp_path) -> bytes:
    import gguf

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_tensor("tok_embd", np.ones((4, 8), np.float32))
    writer.add_tensor("out", np.zeros(16, np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_a_gguf_file_from_the_library_passes(tmp_path):
    result = scan(gguf_file(tmp_path), "gguf", "m.gguf")
    assert result.examined and result.safe, texts(result)


def test_a_gguf_file_cut_short_or_with_a_bad_header_is_refused(tmp_path):
    data = gguf_file(tmp_path)
    assert texts(scan(data[:40], "gguf"))[0].startswith("not a valid GGUF file")
    assert "version 7 is not supported" in texts(scan(data[:4] + struct.pack("<I", 7) + data[8:], "gguf"))[0]


# --- Keras ---------------------------------------------------------------------------------------

def keras_archive(layers: list[dict]) -> bytes:
    config = {"module": "keras", "class_name": "Sequential", "config": {"name": "seq", "layers": layers},
              "registered_name": None}
    return zip_of({"metadata.json": json.dumps({"keras_version": "3.5.0"}).encode(),
                   "config.json": json.dumps(config).encode(),
                   "model.weights.h5": b"\x89HDF\r\n\x1a\n" + b"\0" * 64})


DENSE = {"module": "keras.layers", "class_name": "Dense", "config": {"name": "dense", "units": 2,
         "activation": {"module": "keras.activations", "class_name": "function", "config": "relu"}}}
LAMBDA = {"module": "keras.layers", "class_name": "Lambda",
          "config": {"name": "evil", "function": {"class_name": "__lambda__", "config": {"code": "4wEAAAAA"}}}}
CUSTOM = {"module": "mylib.layers", "class_name": "Scaler", "config": {"name": "scale"}}


def test_a_keras_archive_of_builtin_layers_passes():
    result = scan(keras_archive([DENSE]), "keras", "m.keras")
    assert result.examined and result.safe, texts(result)


def test_keras_lambda_layers_and_custom_objects_are_reported():
    result = scan(keras_archive([DENSE, LAMBDA, CUSTOM]), "keras", "m.keras")
    assert texts(result) == ["Keras Lambda layer 'evil' (runs Python code when loaded) in m.keras",
                             "Keras Lambda layer '__lambda__' (runs Python code when loaded) in m.keras",
                             "Keras custom object mylib.layers.Scaler in m.keras"]
    allowed = scan(keras_archive([DENSE, CUSTOM]), "keras", extra_allowed=("mylib.layers.Scaler",))
    assert allowed.safe, texts(allowed)


def test_a_legacy_h5_keras_model_with_a_lambda_layer_is_reported(tmp_path):
    config = json.dumps({"class_name": "Sequential", "config": {"layers": [{"class_name": "Lambda"}]}})
    body = b"\x89HDF\r\n\x1a\n" + b"\0" * (3 << 20) + b"model_config\0" + config.encode() + b"\0" * 100
    path = tmp_path / "m.h5"
    path.write_bytes(body)
    assert texts(scan_file(path, declared_format="h5")) == [
        "Keras Lambda layer in an HDF5 model config (runs Python code when loaded) in m.h5"]
    assert scan(body.replace(b"Lambda", b"Dense\0"), "h5").safe


# --- any zip-based format --------------------------------------------------------------------------

@pytest.mark.parametrize("declared", ["keras", "pt", "npz", None])
def test_path_traversal_members_are_refused_in_any_zip_format(declared):
    data = zip_of({"config.json": b"{}", "metadata.json": b"{}", "../../outside.pkl": b"N."})
    assert any("unsafe path '../../outside.pkl'" in t for t in texts(scan(data, declared)))
