"""The layers around pickles: compression, archives, joblib's and torch's own layouts, the
fail-closed rule for declared pickle formats, budgets, and the exact allow-list."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import struct
import tarfile
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from services.validation.scan import DEFAULT_ALLOWED, ArtifactScan, Limits, is_pickle_format, scan_file, scan_stream
from tests.model_corpus import (
    Exploit,
    joblib_bytes,
    linear_state_dict,
    tar_of,
    torch_legacy,
    torch_legacy_tar,
    torch_module_object,
    torch_zip,
    zip_of,
)

SYSTEM = "posix.system" if os.name == "posix" else "nt.system"


def scan(data: bytes, declared: str | None = "pickle", label: str = "model", **kwargs) -> ArtifactScan:
    return scan_stream(io.BytesIO(data), declared_format=declared, label=label, **kwargs)


def texts(result: ArtifactScan) -> list[str]:
    return [str(f) for f in result.findings]


def small_model():
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)


JOBLIB_COMPRESSIONS = [
    pytest.param(0, "", id="none"),
    pytest.param(3, " (zlib stream)", id="compress=3"),
    pytest.param(("zlib", 3), " (zlib stream)", id="zlib"),
    pytest.param(("gzip", 3), " (gzip stream)", id="gzip"),
    pytest.param(("bz2", 3), " (bz2 stream)", id="bz2"),
    pytest.param(("lzma", 3), " (lzma stream)", id="lzma"),
    pytest.param(("xz", 3), " (xz stream)", id="xz"),
    pytest.param(("lz4", 3), " (lz4 stream)", id="lz4"),
]


# --- joblib ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("compress", "layer"), JOBLIB_COMPRESSIONS)
def test_joblib_models_pass_with_every_compression(compress, layer):
    obj = {"model": small_model(), "floats": np.arange(1000.0).reshape(10, 100),
           "ints": np.arange(7, dtype=np.int16), "objects": np.array(["a", None, 3], dtype=object),
           "scalar": np.float32(2.5), "empty": np.zeros((0, 3)), "text": np.array(["ab", "cde"])}
    result = scan(joblib_bytes(obj, compress), declared="joblib", label="model.joblib")
    assert result.examined
    assert result.safe, texts(result)
    assert "joblib.numpy_pickle.NumpyArrayWrapper" in result.imports


@pytest.mark.parametrize(("compress", "layer"), JOBLIB_COMPRESSIONS)
def test_malicious_joblib_is_refused_with_every_compression(compress, layer):
    obj = {"model": small_model(), "weights": np.ones(5000), "payload": Exploit()}
    result = scan(joblib_bytes(obj, compress), declared="joblib", label="model.joblib")
    assert texts(result) == [f"disallowed import {SYSTEM} in model.joblib{layer}"]
    assert result.detail() == f"disallowed import {SYSTEM} in model.joblib{layer}"


def test_joblib_object_array_holding_an_exploit_is_refused():
    arr = np.array([1, Exploit()], dtype=object)
    result = scan(joblib_bytes({"a": np.arange(3.0), "o": arr}, 3), declared="joblib")
    assert result.disallowed == (SYSTEM,)


@pytest.mark.parametrize("compress", [0, 3])
def test_joblib_arrays_of_every_dtype_kind_are_stepped_over_exactly(compress):
    fields = [(f"f{i}", "f4") for i in range(40)]
    arrays = {"unicode": np.array(["ab", "cdef"]), "bytes": np.array([b"ab", b"c"]), "void": np.zeros(3, "V7"),
              "structured": np.zeros(4, fields + [("n", "i8")]), "subarray": np.zeros(2, "(2,2)f8"),
              "datetime": np.zeros(3, "M8[ns]"), "bool": np.ones(3, bool), "complex": np.ones(2, "c16"),
              "fortran": np.asfortranarray(np.ones((3, 4)))}
    result = scan(joblib_bytes(arrays, compress), declared="joblib")
    assert result.safe, texts(result)


@pytest.mark.parametrize("dtype", [[("a", "f4"), ("b", "O")], "(2,)O"])
def test_joblib_structured_or_subarray_objects_hold_a_nested_pickle(dtype):
    arr = np.zeros(1, dtype)
    arr.flat[0] = (1.0, Exploit()) if isinstance(dtype, list) else [Exploit(), None]
    assert scan(joblib_bytes({"a": arr}, 3), declared="joblib").disallowed == (SYSTEM,)


def test_joblib_whose_array_bytes_are_cut_short_is_refused():
    data = joblib_bytes({"w": np.arange(10_000.0)})
    result = scan(data[:-1000], declared="joblib")
    assert not result.safe
    assert texts(result)[0].startswith("not a valid pickle: truncated")


def test_joblib_array_bytes_that_hide_opcodes_are_not_read_as_opcodes():
    # The array's bytes spell GLOBAL os.system; joblib reads them as data, and so must we.
    raw = np.frombuffer(b"cos\nsystem\n(S'id'\ntR." + b"\x00" * 11, dtype=np.uint8)
    assert scan(joblib_bytes({"a": raw.copy()}), declared="joblib").safe


# --- torch layouts -----------------------------------------------------------------------------

@pytest.mark.parametrize("build", [
    pytest.param(lambda: torch_zip(linear_state_dict), id="zip-state-dict"),
    pytest.param(lambda: torch_zip(torch_module_object), id="zip-full-model"),
    pytest.param(lambda: torch_legacy(linear_state_dict), id="legacy-state-dict"),
    pytest.param(lambda: torch_legacy(torch_module_object), id="legacy-full-model"),
    pytest.param(torch_legacy_tar, id="legacy-tar"),
])
def test_torch_files_pass(build):
    result = scan(build(), declared="pt", label="model.pt")
    assert result.examined
    assert result.safe, texts(result)
    assert result.imports


def test_malicious_legacy_torch_is_refused():
    result = scan(torch_legacy(lambda: {"sd": linear_state_dict(), "x": Exploit()}), declared="pt",
                  label="model.pt")
    assert texts(result) == [f"disallowed import {SYSTEM} in model.pt"]


def test_pickle_appended_after_legacy_torch_storages_is_refused():
    data = torch_legacy(linear_state_dict, appended=pickle.dumps(Exploit()))
    result = scan(data, declared="pt", label="model.pt")
    assert f"disallowed import {SYSTEM} in model.pt" in texts(result)
    assert "data appended after the storages of a legacy torch file in model.pt" in texts(result)


@pytest.mark.parametrize("declared", ["pt", None, "bin"])
def test_malicious_legacy_tar_torch_is_refused(declared):
    result = scan(torch_legacy_tar(main_pickle=pickle.dumps(Exploit(), protocol=2)), declared=declared,
                  label="model.pt")
    assert texts(result) == [f"disallowed import {SYSTEM} in model.pt > pickle"]


def test_exploit_in_a_legacy_tar_storage_record_is_refused():
    result = scan(torch_legacy_tar(storage_record=pickle.dumps(Exploit(), protocol=2)), declared="pt")
    assert SYSTEM in result.disallowed


def test_torch_zip_with_malicious_data_pkl_is_refused():
    with zipfile.ZipFile(io.BytesIO(torch_zip(linear_state_dict))) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["model/data.pkl"] = pickle.dumps(Exploit(), protocol=2)
    result = scan(zip_of(members, zipfile.ZIP_STORED), declared="pt", label="model.pt")
    assert texts(result) == [f"disallowed import {SYSTEM} in model.pt > model/data.pkl"]


# --- compression and archives, whatever the declared format ----------------------------------

COMPRESSORS = [
    pytest.param(gzip.compress, "gzip stream", id="gzip"),
    pytest.param(zlib.compress, "zlib stream", id="zlib"),
    pytest.param(bz2.compress, "bz2 stream", id="bz2"),
    pytest.param(lzma.compress, "xz stream", id="xz"),
    pytest.param(lambda d: __import__("lz4.frame").frame.compress(d), "lz4 stream", id="lz4"),
    pytest.param(lambda d: __import__("zstandard").ZstdCompressor().compress(d), "zstd stream", id="zstd"),
]


@pytest.mark.parametrize(("compress", "kind"), COMPRESSORS)
@pytest.mark.parametrize("declared", [None, "onnx", "pickle"])
def test_compressed_pickles_are_scanned_whatever_format_is_declared(compress, kind, declared):
    result = scan(compress(pickle.dumps(Exploit())), declared=declared, label="blob")
    assert texts(result) == [f"disallowed import {SYSTEM} in blob ({kind})"]
    assert scan(compress(pickle.dumps({"w": [1.0, 2.0]})), declared=declared).safe


def test_nested_containers_are_followed_and_named():
    inner_zip = zip_of({"weights/model.pkl": pickle.dumps(Exploit())})
    outer = gzip.compress(tar_of({"bundle/inner.zip": inner_zip}))
    result = scan(outer, declared=None, label="bundle.tgz")
    assert texts(result) == [
        f"disallowed import {SYSTEM} in bundle.tgz (gzip stream) > bundle/inner.zip > weights/model.pkl"]


def test_nesting_deeper_than_the_limit_is_refused():
    data = pickle.dumps({"w": 1})
    for _ in range(5):
        data = gzip.compress(data)
    result = scan(data, declared=None, limits=Limits(max_depth=4))
    assert not result.safe
    assert "nested deeper than 4" in texts(result)[0]


def test_a_decompression_bomb_is_refused_not_expanded():
    payload = b"\x80\x04\x8e" + struct.pack("<Q", 64 << 20) + bytes(64 << 20) + b"."  # BINBYTES8
    bomb = gzip.compress(payload, compresslevel=1)
    limits = Limits(min_expanded_bytes=4 << 20, expansion_ratio=10)
    result, peak = peak_during(lambda: scan(bomb, declared=None, limits=limits, stored_bytes=len(bomb)))
    assert not result.safe
    assert "scan limit exceeded: expands past" in texts(result)[0]
    assert peak < 32 << 20, peak


def test_a_zip_bomb_is_refused_from_its_declared_sizes():
    bomb = zip_of({"a.pkl": b"N" * (8 << 20) + b"."})
    result = scan(bomb, declared="pickle", limits=Limits(min_expanded_bytes=1 << 20, expansion_ratio=2),
                  stored_bytes=len(bomb))
    assert "past the scan budget (a zip bomb?)" in texts(result)[0]


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "/abs/model.pkl", "a/../../b.pkl", "C:\\x.pkl"])
def test_archive_members_with_unsafe_paths_are_refused(name):
    for archive in (zip_of({name: pickle.dumps(1)}), tar_of({name: pickle.dumps(1)})):
        result = scan(archive, declared=None, label="a")
        assert any("archive member with an unsafe path" in t for t in texts(result)), texts(result)


def v7_tar(members: dict[str, bytes]) -> bytes:
    """An old-style tar: no ustar magic, only the header checksum says it is a tar."""
    data = bytearray(tar_of(members, fmt=tarfile.GNU_FORMAT))
    data[257:265] = b"\0" * 8
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    assert tarfile.is_tarfile(io.BytesIO(bytes(data)))
    return bytes(data)


@pytest.mark.parametrize("declared", [None, "pt"])
def test_an_old_tar_without_magic_is_opened_too(declared):
    result = scan(v7_tar({"pickle": pickle.dumps(Exploit(), protocol=2)}), declared=declared, label="m.pt")
    assert texts(result) == [f"disallowed import {SYSTEM} in m.pt > pickle"]


@pytest.mark.parametrize("declared", [None, "keras"])
def test_a_zip_behind_prepended_bytes_is_opened_as_zipfile_would(declared):
    data = b"JUNK" * 10 + zip_of({"weights.pkl": pickle.dumps(Exploit())})
    result = scan(data, declared=declared, label="m.keras")
    assert result.disallowed == (SYSTEM,)
    assert texts(result)[0].startswith(f"disallowed import {SYSTEM} in m.keras (zip after 4a 55 4e 4b")


@pytest.mark.parametrize("declared", ["keras", "safetensors", "gguf", "h5"])
def test_a_file_that_is_not_the_checked_format_it_declares_is_refused(declared):
    result = scan(b"hello, world: plain text", declared=declared)
    assert texts(result) == [f"declared {declared} but is not a {declared} file "
                             f"(first bytes 68 65 6c 6c 6f 2c 20 77) in model"]


def test_a_zip_directory_too_large_to_hold_is_refused_unread():
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 65535, 65535, 1 << 31, 30, 0)
    data = b"PK\x03\x04" + bytes(26) + eocd
    result = scan(data, declared=None)
    assert texts(result) == ["zip directory of 65535 entries in 2147483648 bytes is too large to read in model"]


def test_a_tar_extended_header_too_large_to_hold_is_refused_unread():
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 4 << 30
    result, peak = peak_during(lambda: scan(info.tobuf(format=tarfile.USTAR_FORMAT) + bytes(1024), declared=None))
    assert texts(result) == ["not a valid tar archive: an extended header of 4294967296 bytes in model"]
    assert peak < 16 << 20, peak


def test_tar_links_out_of_the_archive_are_refused():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        link = tarfile.TarInfo("model.pkl")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    result = scan(out.getvalue(), declared=None, label="a.tar")
    assert texts(result) == ["tar link 'model.pkl' points outside the archive in a.tar"]


def test_zip_read_from_a_non_seekable_stream_is_spooled():
    data = gzip.compress(zip_of({"m/data.pkl": pickle.dumps(Exploit())}))
    result = scan(data, declared="pt", label="m.pt")
    assert texts(result) == [f"disallowed import {SYSTEM} in m.pt (gzip stream) > m/data.pkl"]


# --- fail closed -----------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (b"", "empty, not a pickle"),
    (os.urandom(8) and b"\x00\x01\x02garbage", "declared a pickle but is neither a pickle nor a container"),
    (b"\x1f\x8b\x08\x00garbage-after-a-gzip-magic", "corrupt gzip stream"),
    (gzip.compress(pickle.dumps([1.0] * 100))[:-30], "corrupt gzip stream"),
    (b"\x78\x9c" + b"\xff" * 40, "corrupt zlib stream"),
    (struct.pack("<Q", 2) + b"{}", "declared a pickle but holds safetensors"),
    (zip_of({"config.json": b"{}"}), "declared a pickle but the zip archive holds none"),
    (tar_of({"README": b"hello"}), "declared a pickle but the tar archive holds none"),
    (pickle.dumps(1) + b"\x00trailing", "not a valid pickle"),
    (b"ZF0x2a" + zlib.compress(pickle.dumps(1)), "declared a pickle but is neither"),  # joblib < 0.10
])
def test_a_declared_pickle_that_does_not_parse_is_refused(data, expected):
    result = scan(data, declared="joblib", label="m.joblib")
    assert result.examined and not result.safe
    assert texts(result)[0].startswith(expected), texts(result)
    assert texts(result)[0].endswith("in m.joblib") or " in m.joblib " in texts(result)[0]


@pytest.mark.parametrize("data", [
    b"\x08\x07\x12\x07pytorch\x1a\x052.1.0",     # ONNX-like protobuf
    b"\x78\x9c not zlib after all",             # a weak zlib signature, then no zlib
    b"(this is text, not a pickle)",
    zip_of({"config.json": b"{}", "weights.h5": b"\x89HDF\r\n\x1a\n"}),
])
def test_other_formats_are_not_refused_for_not_being_pickles(data):
    assert scan(data, declared="tflite").safe


def test_bin_format_holding_a_plain_pickle_is_parsed_strictly():
    data = pickle.dumps({"w": 1}, protocol=4)
    assert scan(data, declared="bin").safe
    result = scan(data[:-1] + b"\x00", declared="bin")  # PROTO says pickle: it must parse
    assert not result.safe
    assert SYSTEM in scan(pickle.dumps(Exploit(), protocol=4), declared="bin").disallowed


def test_pickle_family_formats():
    for fmt in ("pickle", "pkl", "joblib", "pt", "pth", "ckpt", "PT"):
        assert is_pickle_format(fmt)
    for fmt in (None, "onnx", "safetensors", "bin", "gguf"):
        assert not is_pickle_format(fmt)


def test_scan_file_names_the_file_and_streams_large_compressed_pickles(tmp_path):
    path = tmp_path / "big.joblib"
    with gzip.open(path, "wb", compresslevel=1) as f:
        pickle.dump([b"\x00" * (64 << 20), Exploit()], f, protocol=4)
    result, peak = peak_during(lambda: scan_file(path, declared_format="joblib"))
    assert texts(result) == [f"disallowed import {SYSTEM} in big.joblib (gzip stream)"]
    assert peak < 32 << 20, peak


# --- the allow-list ----------------------------------------------------------------------------

def test_the_default_allow_list_names_exact_globals_only():
    assert not [p for p in DEFAULT_ALLOWED if set("*?[") & set(p)]


@pytest.mark.parametrize("target", [
    "sklearn.tree._export.export_graphviz", "sklearn.tree.export_graphviz",
    "sklearn.utils._testing.assert_run_python_script",
    "sklearn.datasets._openml.fetch_openml", "joblib.load", "joblib.numpy_pickle.load", "numpy.load",
    "numpy.save", "scipy.io.savemat", "lightgbm.basic._load_lib", "torch.load", "torch.storage._load_from_bytes",
])
def test_library_functions_that_touch_files_are_refused(target):
    module, name = target.rsplit(".", 1)
    data = b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) \
        + name.encode() + b"\x93)R."
    assert scan(data).disallowed == (target,)


def test_every_scikit_learn_estimator_class_is_allowed():
    from sklearn.utils import all_estimators

    allowed = set(DEFAULT_ALLOWED)
    missing = [f"{c.__module__}.{c.__qualname__}" for _, c in all_estimators()
               if f"{c.__module__}.{c.__qualname__}" not in allowed]
    assert not missing


def test_no_default_entry_reads_writes_or_fetches():
    import fnmatch

    risky = ("load*", "save*", "dump*", "fetch*", "export*", "open*", "read*", "write*", "*_testing*",
             "*datasets*", "*system*", "*popen*", "*exec*", "*eval*", "*import*")
    flagged = [entry for entry in DEFAULT_ALLOWED for part in entry.split(".")
               if any(fnmatch.fnmatchcase(part, pattern) for pattern in risky)]
    assert not flagged


def test_the_policy_extends_the_list_per_rule():
    data = b"\x80\x04\x8c\x0bmylib.model\x8c\x05Model\x93)\x81."
    assert scan(data).disallowed == ("mylib.model.Model",)
    assert scan(data, extra_allowed=("mylib.model.Model",)).safe
    assert scan(data, extra_allowed=("mylib.*",)).safe


# --- helpers ---------------------------------------------------------------------------------

def peak_during(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak
