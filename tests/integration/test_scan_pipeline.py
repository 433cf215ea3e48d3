"""The safety scan through the running pipeline: the bypasses of issue 10 registered from a plain
Kafka client are rejected with a reason naming the import; a compressed joblib model passes."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from services.validation.scan import SCAN_IN_MEMORY_BYTES
from shared.settings import Settings
from tests.model_corpus import Exploit, joblib_bytes, torch_legacy_tar
from tests.support import Kafka, cloudevent, for_model, put_artifact, unique_name

SYSTEM = "posix.system" if os.name == "posix" else "nt.system"


def registered(name: str, artifact: dict, fmt: str | None) -> dict:
    return cloudevent("model.registered", {"name": name, "artifact": dict(artifact, format=fmt),
                                           "registered_by": "pipelines/train", "metrics": {"auc": 0.9}})


async def register(settings: Settings, kafka: Kafka, name: str, body: bytes, fmt: str | None) -> None:
    artifact = await put_artifact(settings, f"inbox/{name}/model", body)
    await kafka.publish("model.registered", registered(name, artifact, fmt))


@pytest.mark.parametrize(("fmt", "build", "where"), [
    pytest.param("joblib", lambda: joblib_bytes({"w": np.ones(100), "x": Exploit()}, compress=3),
                 ".joblib (zlib stream)", id="joblib-zlib"),
    pytest.param("pt", lambda: torch_legacy_tar(main_pickle=pickle.dumps(Exploit(), protocol=2)),
                 ".pt > pickle", id="legacy-tar-torch"),
    pytest.param(None, lambda: gzip.compress(pickle.dumps(Exploit())), " (gzip stream)", id="undeclared-gzip"),
    # Bigger than validation keeps in memory to scan: spooled to a file on disk instead.
    pytest.param(None, lambda: gzip.compress(pickle.dumps([os.urandom(SCAN_IN_MEMORY_BYTES), Exploit()])),
                 " (gzip stream)", id="undeclared-gzip-spooled-to-disk"),
])
async def test_a_bypass_is_rejected_naming_the_import(settings: Settings, kafka: Kafka, pipeline,
                                                     fmt, build, where) -> None:
    name = unique_name("scan")
    await register(settings, kafka, name, build(), fmt)
    rejected = (await kafka.wait_for("model.rejected", for_model(name, 1)))[0]
    reasons = rejected.data["reasons"]
    assert [r["code"] for r in reasons] == ["unsafe_pickle"]
    assert reasons[0]["message"] == f"pickle_safety: disallowed import {SYSTEM} in {name}{where}"
    assert not kafka.matching("model.validated", for_model(name))


async def test_a_compressed_joblib_model_passes(settings: Settings, kafka: Kafka, pipeline) -> None:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    name = unique_name("scan")
    await register(settings, kafka, name, joblib_bytes(model, compress=("xz", 3)), "joblib")
    validated = (await kafka.wait_for("model.validated", for_model(name, 1)))[0]
    safety = [c for c in validated.data["checks"] if c["name"] == "pickle_safety"]
    assert safety and safety[0]["passed"], validated.data["checks"]
    assert safety[0]["detail"].endswith("all allowed")
