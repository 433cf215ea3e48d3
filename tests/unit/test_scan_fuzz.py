"""Damaged files: whatever bytes it is given, the scanner answers with findings, never an
exception (the validation service would retry such an event forever) and never a crash
finding; and a time budget stops a scan that would run too long."""

from __future__ import annotations

import gzip
import io
import pickle
import random

import numpy as np
import pytest

from services.validation.scan import SCANNER_FAILED, Limits, scan_stream
from tests.model_corpus import joblib_bytes, linear_state_dict, torch_legacy, torch_legacy_tar, torch_zip


def seeds() -> dict[str, bytes]:
    return {
        "joblib": joblib_bytes({"a": np.arange(50.0), "o": np.array([1, "x"], dtype=object)}),
        "joblib-zlib": joblib_bytes({"a": np.arange(50.0)}, 3),
        "torch-zip": torch_zip(linear_state_dict),
        "torch-legacy": torch_legacy(linear_state_dict),
        "torch-tar": torch_legacy_tar(),
        "gzip-pickle": gzip.compress(pickle.dumps({"a": [1, 2], "b": "text"})),
    }


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        pos = rnd.randrange(len(b))
        roll = rnd.random()
        if roll < 0.6:
            b[pos] = rnd.randrange(256)
        elif roll < 0.8:
            del b[pos:pos + rnd.randint(1, 16)]
        else:
            b[pos:pos] = rnd.randbytes(rnd.randint(1, 8))
    return bytes(b)


@pytest.mark.parametrize("seed", range(4))
def test_damaged_files_get_findings_not_exceptions(seed):
    rnd = random.Random(seed)
    corpus = seeds()
    for _ in range(100):
        name = rnd.choice(sorted(corpus))
        data = mutate(corpus[name], rnd)
        for declared in ("pickle", None):
            result = scan_stream(io.BytesIO(data), declared_format=declared, label=name)
            failed = [f for f in result.findings if f.text.startswith(SCANNER_FAILED)]
            assert not failed, (name, declared, data)


def test_a_scan_past_its_time_budget_is_refused():
    data = pickle.dumps(list(range(200_000)), protocol=4)
    result = scan_stream(io.BytesIO(data), declared_format="pickle", limits=Limits(max_seconds=0))
    assert not result.safe
    assert "scan took longer than 0 s" in str(result.findings[0])
