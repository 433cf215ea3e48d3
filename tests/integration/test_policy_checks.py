"""validation's policy checks through the running services, under the `strict-*` rule of
tests/policy.yaml: size limit (1 MiB), required metadata (signature, description), allowed
formats (pickle, onnx) and `pickle_allow` (strictlib.models.*). Each check is shown passing
for a version that meets it and rejecting, with its own reason code, one that does not."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from shared.settings import Settings
from tests.support import Kafka, cloudevent, eventually, for_model, put_artifact, unique_name

# A pickle of `strictlib.models.Net` (a class no one has installed: the scan never loads it).
STRICTLIB_PICKLE = b"\x80\x02cstrictlib.models\nNet\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00wq\x03K\x01sb."
METADATA = {"signature": {"inputs": "float32[4]", "outputs": "float32[1]"}, "description": "a strict model"}


def _varint(number: int) -> bytes:
    out = b""
    while True:
        low, number = number & 0x7F, number >> 7
        if not number:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def onnx_model(doc_bytes: int = 0) -> bytes:
    """A well-formed ONNX ModelProto (ir_version, a graph), padded with a doc_string: the
    validation scan checks that a declared ONNX file parses as one."""
    return b"\x08\x08" + _field(7, _field(2, b"strict-graph")) + (_field(6, b"d" * doc_bytes) if doc_bytes else b"")


def safetensors_file(data_bytes: int = 0) -> bytes:
    """A well-formed safetensors file: the 8-byte header length, a JSON header, and one uint8
    tensor of `data_bytes` (none for 0)."""
    tensors = {"w": {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]}} if data_bytes else {}
    header = json.dumps({"__metadata__": {"format": "pt"}, **tensors}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + b"\1" * data_bytes


async def _register(settings: Settings, kafka: Kafka, name: str, body: bytes, fmt: str,
                    **metadata: Any) -> None:
    artifact = await put_artifact(settings, f"inbox/{name}/model.{fmt}", body)
    await kafka.publish("model.registered", cloudevent("model.registered", {
        "name": name, "artifact": dict(artifact, format=fmt), "registered_by": "pipelines/strict", **metadata}))


async def _outcome(kafka: Kafka, name: str) -> tuple[str, dict[str, Any]]:
    """The version's validation outcome: ("validated", data) or ("rejected", data)."""
    def decided() -> list[tuple[str, dict[str, Any]]]:
        return [(topic.removeprefix("model."), seen.data) for topic in ("model.validated", "model.rejected")
                for seen in kafka.matching(topic, for_model(name, 1))]

    return (await eventually(decided))[0]


async def test_a_version_that_meets_the_strict_rule_passes_each_of_its_checks(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    name = unique_name("strict")
    await _register(settings, kafka, name, pickle.dumps({"weights": [0.1, 0.2]}), "pickle", **METADATA)
    outcome, data = await _outcome(kafka, name)
    assert outcome == "validated", data
    checks = {c["name"]: c for c in data["checks"]}
    for check in ("size_limit", "required_metadata", "allowed_format", "pickle_safety"):
        assert checks[check]["passed"], checks  # the strict rule's checks ran, and held
    assert "1048576" in checks["size_limit"]["detail"]


@pytest.mark.parametrize(("case", "code", "named"), [
    ("too_large", "too_large", "the limit is 1048576"),
    ("no_description", "missing_metadata", "description"),
    ("no_signature", "missing_metadata", "signature"),
    ("safetensors", "format_not_allowed", "safetensors"),
])
async def test_a_version_breaking_one_strict_check_is_rejected_for_it(
        settings: Settings, kafka: Kafka, pipeline, case: str, code: str, named: str) -> None:
    name = unique_name("strict")
    body, fmt, metadata = onnx_model(), "onnx", dict(METADATA)
    if case == "too_large":
        body = onnx_model(1024 * 1024)  # a little over 1 MiB
        assert len(body) > 1024 * 1024
    elif case == "no_description":
        del metadata["description"]
    elif case == "no_signature":
        del metadata["signature"]
    elif case == "safetensors":
        body, fmt = safetensors_file(), "safetensors"
    await _register(settings, kafka, name, body, fmt, **metadata)
    outcome, data = await _outcome(kafka, name)
    assert outcome == "rejected", data
    assert [r["code"] for r in data["reasons"]] == [code], data["reasons"]  # that check and no other
    assert named in data["reasons"][0]["message"], data["reasons"]


async def test_the_same_bytes_and_metadata_under_the_default_rule_pass(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    """The rejections above come from the strict rule: the default rule takes all of them."""
    name = unique_name("lenient")
    await _register(settings, kafka, name, safetensors_file(1024 * 1024 + 1), "safetensors")
    outcome, data = await _outcome(kafka, name)
    assert outcome == "validated", data
    assert not {"required_metadata", "allowed_format"} & {c["name"] for c in data["checks"]}


async def test_pickle_allow_admits_the_rules_own_classes_and_only_under_that_rule(
        settings: Settings, kafka: Kafka, pipeline) -> None:
    strict, other = unique_name("strict"), unique_name("lenient")
    await _register(settings, kafka, strict, STRICTLIB_PICKLE, "pickle", **METADATA)
    await _register(settings, kafka, other, STRICTLIB_PICKLE, "pickle", **METADATA)
    outcome, data = await _outcome(kafka, strict)
    assert outcome == "validated", data
    assert {c["name"]: c["passed"] for c in data["checks"]}["pickle_safety"] is True
    outcome, data = await _outcome(kafka, other)
    assert outcome == "rejected", data
    assert [r["code"] for r in data["reasons"]] == ["unsafe_pickle"]
    assert "strictlib.models.Net" in data["reasons"][0]["message"]
