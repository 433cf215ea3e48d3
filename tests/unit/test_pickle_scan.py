"""The pickle opcode walk: malicious payloads are named, ordinary ML pickles pass, nothing is loaded.

(Layers around pickles, compression, archives, joblib and torch layouts: test_artifact_scan.py.)"""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import pickletools
import struct
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from services.validation.scan import DEFAULT_ALLOWED, ArtifactScan, scan_file, scan_stream

UNRESOLVED = "STACK_GLOBAL with non-constant operands"


# --- helpers -------------------------------------------------------------------------------

def scan(data: bytes, extra_allowed=(), declared: str | None = "pickle") -> ArtifactScan:
    return scan_stream(io.BytesIO(data), declared_format=declared, label="test.pkl", extra_allowed=extra_allowed)


def texts(result: ArtifactScan) -> tuple[str, ...]:
    """The findings' texts, without where they were found."""
    return tuple(f.text for f in result.findings)


def wellformed(data: bytes) -> bytes:
    """pickletools.dis walks the opcodes (stack and memo too) without loading anything."""
    pickletools.dis(data, out=io.StringIO())
    return data


def sbu(text: str) -> bytes:  # SHORT_BINUNICODE
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def bu(text: str) -> bytes:  # BINUNICODE
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def glob(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


PROTO4 = b"\x80\x04"
STACK_GLOBAL = b"\x93"
MEMOIZE = b"\x94"
TUPLE1 = b"\x85"
REDUCE = b"R"
POP = b"0"
STOP = b"."


def call4(module: str, name: str, arg: str) -> bytes:
    """Protocol 4: module.name(arg) through STACK_GLOBAL."""
    return PROTO4 + sbu(module) + sbu(name) + STACK_GLOBAL + sbu(arg) + TUPLE1 + REDUCE + STOP


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class CustomModel:
    def __init__(self) -> None:
        self.weights = [0.5, 1.5]


def name_of(func) -> str:
    return f"{func.__module__}.{func.__name__}"


# --- malicious pickles -----------------------------------------------------------------------

TARGETS = [
    pytest.param(os.system, ("echo pwned",), id="os.system"),
    pytest.param(builtins.eval, ("1+1",), id="builtins.eval"),
    pytest.param(subprocess.Popen, (["true"],), id="subprocess.Popen"),
    pytest.param(builtins.exec, ("pass",), id="builtins.exec"),
    pytest.param(builtins.getattr, (1, "real"), id="builtins.getattr"),
]


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize(("func", "args"), TARGETS)
def test_reduce_payloads_are_named(func, args, protocol):
    result = scan(pickle.dumps(Payload(func, *args), protocol=protocol))
    assert result.examined
    assert not result.safe
    assert name_of(func) in result.imports
    assert name_of(func) in result.disallowed
    assert result.detail() == f"disallowed import {name_of(func)} in test.pkl"


def test_os_system_is_reported_as_the_module_pickle_records():
    # os.system is posix.system on POSIX (nt.system on Windows); both are refused.
    assert "posix.system" in scan(glob("posix", "system") + b"(S'id'\ntR.").disallowed
    assert "os.system" in scan(glob("os", "system") + b"(S'id'\ntR.").disallowed
    assert "nt.system" in scan(glob("nt", "system") + b"(S'id'\ntR.").disallowed


def test_handwritten_protocol0_global():
    data = wellformed(b"cos\nsystem\n(S'echo pwned'\ntR.")
    result = scan(data)
    assert result.imports == ("os.system",)
    assert result.disallowed == ("os.system",)
    assert result.detail() == "disallowed import os.system in test.pkl"


def test_python2_module_names_are_mapped_like_the_unpickler_does():
    result = scan(wellformed(b"c__builtin__\neval\n(S'1'\ntR."))
    assert result.disallowed == ("builtins.eval",)
    # ... and a py2 pickle of a set is fine
    assert scan(wellformed(b"c__builtin__\nset\n((lp0\nI1\natR.")).safe


@pytest.mark.parametrize("target", [
    "builtins.__import__", "importlib.import_module", "runpy._run_code", "webbrowser.open",
    "builtins.compile", "builtins.open", "functools.partial", "operator.attrgetter",
    "shutil.rmtree", "socket.socket", "pickle.loads", "marshal.loads", "ctypes.CDLL",
    "torch.storage._load_from_bytes", "numpy.load", "sklearn.utils._testing.assert_run_python_script",
    "sklearn.datasets.fetch_openml", "xgboost.core.ctypes2numpy", "sklearn.base.save_model",
])
def test_dangerous_globals_are_refused(target):
    module, name = target.rsplit(".", 1)
    result = scan(wellformed(call4(module, name, "x")))
    assert result.disallowed == (target,)


def test_wildcards_do_not_allow_attribute_traversal():
    # protocol 4 resolves dotted qualnames attribute by attribute: sklearn.base -> os -> system
    result = scan(wellformed(call4("sklearn.base", "os.system", "id")))
    assert result.disallowed == ("sklearn.base.os.system",)
    # the same for a caller's wildcard
    result = scan(wellformed(call4(CustomModel.__module__, "os.system", "id")),
                  extra_allowed=[f"{CustomModel.__module__}.*"])
    assert not result.safe


def test_memo_obfuscated_stack_global_is_resolved():
    data = wellformed(
        PROTO4
        + sbu("os") + MEMOIZE + POP                               # memo 0 = "os"
        + sbu("collections") + MEMOIZE + POP                      # memo 1 = decoy
        + bu("system") + b"r" + struct.pack("<I", 7) + POP        # LONG_BINPUT 7 = "system"
        + sbu("OrderedDict") + b"p8\n" + POP                      # PUT 8 = decoy
        + b"h\x00" + b"j" + struct.pack("<I", 7)                  # BINGET 0, LONG_BINGET 7
        + STACK_GLOBAL + sbu("id") + TUPLE1 + REDUCE + STOP)
    result = scan(data)
    assert result.imports == ("os.system",)
    assert result.disallowed == ("os.system",)


def test_memo_with_text_put_get_and_dup():
    data = wellformed(
        b"\x80\x04" + b"Vbuiltins\np0\n" + b"2" + POP + POP + sbu("eval") + b"q\x01" + POP
        + b"g0\n" + b"h\x01" + STACK_GLOBAL + sbu("1") + TUPLE1 + REDUCE + STOP)
    assert scan(data).disallowed == ("builtins.eval",)


def test_stack_global_uses_the_stack_not_the_latest_strings():
    # "collections", "OrderedDict" are pushed last but popped again: the real operands are os/system
    data = wellformed(
        PROTO4 + sbu("os") + sbu("system") + sbu("collections") + sbu("OrderedDict") + POP + POP
        + STACK_GLOBAL + sbu("id") + TUPLE1 + REDUCE + STOP)
    assert scan(data).disallowed == ("os.system",)


def test_stack_global_with_marks_in_between():
    data = wellformed(
        PROTO4 + sbu("os") + b"(" + sbu("collections") + sbu("OrderedDict") + b"1"  # POP_MARK
        + sbu("system") + STACK_GLOBAL + sbu("id") + TUPLE1 + REDUCE + STOP)
    assert scan(data).disallowed == ("os.system",)


def test_stack_global_with_computed_operands_is_unresolved():
    # builtins.str is allowed, but str("os") computed at load time must not slip through
    data = wellformed(
        PROTO4 + sbu("builtins") + sbu("str") + STACK_GLOBAL + sbu("os") + TUPLE1 + REDUCE
        + sbu("system") + STACK_GLOBAL + sbu("id") + TUPLE1 + REDUCE + STOP)
    result = scan(data)
    assert result.imports == ("builtins.str",)
    assert texts(result) == (UNRESOLVED,)
    assert not result.safe
    assert result.detail() == f"{UNRESOLVED} in test.pkl"


def test_stack_global_operand_too_long_to_track_is_unresolved():
    data = PROTO4 + bu("m" * 100_000) + sbu("x") + STACK_GLOBAL + POP + b"N" + STOP
    assert texts(scan(data)) == (UNRESOLVED,)


def test_concatenated_pickles_second_one_malicious():
    data = pickle.dumps({"weights": [1.0, 2.0]}, protocol=4) + pickle.dumps(
        Payload(builtins.eval, "1"), protocol=2)
    result = scan(data)
    assert result.disallowed == ("builtins.eval",)
    assert scan(pickle.dumps([1], protocol=2) + pickle.dumps({"a": 1}, protocol=0)).safe


def test_concatenated_memo_is_per_pickle():
    # the second pickle GETs a memo key that only the first one set: the unpickler fails there
    first = PROTO4 + sbu("os") + MEMOIZE + STOP
    second = PROTO4 + b"h\x00" + sbu("system") + STACK_GLOBAL + STOP
    result = scan(first + second)
    assert not result.safe
    assert any(d.startswith("not a valid pickle: memo key 0 not found") for d in texts(result))


def test_inst_opcode():
    data = wellformed(b"(S'echo pwned'\nios\nsystem\n.")
    result = scan(data)
    assert result.disallowed == ("os.system",)


def test_ext_opcodes_are_refused():
    result = scan(b"\x80\x02\x82\x01)R.")
    assert len(result.findings) == 1
    assert "extension registry" in texts(result)[0]


def test_oversized_global_line():
    result = scan(b"c" + b"a" * 70_000 + b"\nsystem\n.")
    assert "GLOBAL with oversized operands" in texts(result)


# --- safe pickles ----------------------------------------------------------------------------

SAFE_OBJECTS = [
    {"lr": 0.001, "layers": [64, 32], "name": "mlp", "tags": ("a", "b")},
    [1.5, float("inf"), -0.0, 2**70, None, True, b"raw", bytearray(b"buf")],
    collections.OrderedDict([("w", [0.1, 0.2]), ("b", 0.3)]),
    collections.defaultdict(list, {"a": [1]}),
    {"s": {1, 2}, "f": frozenset({3}), "c": complex(1, 2), "r": range(3), "sl": slice(1, 5)},
    collections.Counter("hello"),
]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("obj", SAFE_OBJECTS, ids=lambda o: type(o).__name__)
def test_safe_pickles(obj, protocol):
    result = scan(pickle.dumps(obj, protocol=protocol))
    assert result.examined
    assert result.safe, result.findings
    assert result.disallowed == ()
    assert "all allowed" in result.detail() or result.detail() == "no imports"


def test_detail_counts_imports():
    result = scan(pickle.dumps(collections.OrderedDict(a={1}), protocol=2))
    assert result.imports == ("builtins.set", "collections.OrderedDict")
    assert result.detail() == "2 imports, all allowed"
    assert scan(pickle.dumps([1, 2], protocol=4)).detail() == "no imports"


def test_extra_allowed_admits_a_custom_class():
    data = pickle.dumps(CustomModel(), protocol=4)
    qualname = f"{CustomModel.__module__}.CustomModel"
    assert scan(data).disallowed == (qualname,)
    assert scan(data, extra_allowed=[qualname]).safe
    assert scan(data, extra_allowed=qualname).safe  # a lone string is one pattern
    assert scan(data, extra_allowed=["elsewhere.*"]).disallowed == (qualname,)


def test_extra_allowed_wildcards():
    data = wellformed(PROTO4 + sbu("mypkg.models") + sbu("CustomModel") + STACK_GLOBAL
                      + b")\x81" + STOP)  # NEWOBJ
    assert scan(data).disallowed == ("mypkg.models.CustomModel",)
    assert scan(data, extra_allowed=("mypkg.*",)).safe
    assert scan(data, extra_allowed=("mypkg.models.Custom*",)).safe
    # wildcards are hardened the same way as the defaults: no test helpers, loaders, traversal
    for module, name in [("mypkg.tests.helpers", "Fixture"), ("mypkg.models", "load_model"),
                         ("mypkg.models", "os.system"), ("mypkg.subprocess", "Popen")]:
        result = scan(wellformed(call4(module, name, "x")), extra_allowed=("mypkg.*",))
        assert result.disallowed == (f"{module}.{name}",)
    # an exact entry is taken at its word
    assert scan(wellformed(call4("mypkg.models", "load_model", "x")),
                extra_allowed=("mypkg.models.load_model",)).safe


def test_ml_library_classes_are_allowed_by_default():
    for module, name in [("sklearn.ensemble._forest", "RandomForestClassifier"),
                         ("sklearn.tree._tree", "Tree"), ("scipy.sparse._csr", "csr_matrix"),
                         ("xgboost.sklearn", "XGBClassifier"), ("lightgbm.basic", "Booster"),
                         ("numpy.dtypes", "Float64DType"), ("torch", "FloatStorage"),
                         ("torch.storage", "UntypedStorage")]:
        result = scan(wellformed(PROTO4 + sbu(module) + sbu(name) + STACK_GLOBAL + STOP))
        assert result.safe, (module, name, result.findings)


def test_default_allow_list_has_nothing_that_executes_code():
    dangerous = {"builtins.eval", "builtins.exec", "builtins.compile", "builtins.getattr",
                 "builtins.setattr", "builtins.__import__", "builtins.open", "builtins.input",
                 "builtins.breakpoint", "builtins.globals", "builtins.vars", "builtins.type",
                 "functools.partial", "operator.attrgetter", "operator.methodcaller",
                 "torch.storage._load_from_bytes"}
    assert not dangerous & set(DEFAULT_ALLOWED)
    assert not any(p.startswith(("os.", "posix.", "nt.", "subprocess.", "sys.", "importlib.",
                                 "runpy.", "shutil.", "socket.", "pickle.", "marshal.", "types."))
                   for p in DEFAULT_ALLOWED)


def torch_like_state_dict() -> bytes:
    """What torch.save writes into archive/data.pkl for {"weight": tensor(2x2)}."""
    return wellformed(
        b"\x80\x02" + glob("collections", "OrderedDict") + b")R" + b"("
        + bu("weight") + glob("torch._utils", "_rebuild_tensor_v2") + b"("
        + b"(" + bu("storage") + glob("torch", "FloatStorage") + bu("0") + bu("cpu") + b"K\x04tQ"
        + b"K\x00" + b"K\x02K\x02\x86" + b"K\x02K\x01\x86" + b"\x89"
        + glob("collections", "OrderedDict") + b")R" + b"tR" + b"u" + STOP)


def build_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_torch_like_zip_with_malicious_data_pkl(tmp_path):
    path = build_zip(tmp_path / "model.pt", {
        "archive/data.pkl": pickle.dumps(Payload(os.system, "echo pwned"), protocol=2),
        "archive/version": b"3\n",
        "archive/data/0": b"\x00" * 64,
    })
    result = scan_file(path, declared_format="pt")
    assert result.examined
    assert result.disallowed == (name_of(os.system),)
    assert result.detail() == f"disallowed import {name_of(os.system)} in model.pt > archive/data.pkl"


def test_torch_like_zip_benign(tmp_path):
    path = build_zip(tmp_path / "model.pt", {
        "archive/data.pkl": torch_like_state_dict(),
        "archive/byteorder": b"little",
        "archive/data/0": struct.pack("<4f", 1, 2, 3, 4),
        "archive/version": b"3\n",
    })
    result = scan_file(str(path), declared_format="pt")
    assert result.safe, result.findings
    assert result.imports == ("collections.OrderedDict", "torch.FloatStorage",
                              "torch._utils._rebuild_tensor_v2")


def test_zip_from_a_non_seekable_stream(tmp_path):
    path = build_zip(tmp_path / "model.pt", {
        "archive/data.pkl": torch_like_state_dict(),
        "archive/constants.pkl": call4("builtins", "exec", "pass"),
    })
    with open(path, "rb") as f:
        result = scan_stream(NonSeekable(f))
    assert result.disallowed == ("builtins.exec",)


def test_zip_member_that_is_not_a_pickle(tmp_path):
    path = build_zip(tmp_path / "a.zip", {"data.pkl": b"\x00\x01garbage"})
    result = scan_file(path)
    assert result.examined and not result.safe
    assert str(result.findings[0]).startswith("declared a pickle but is neither a pickle nor a container")
    assert result.findings[0].where == "a.zip > data.pkl"


def test_zip_without_pickles_is_not_a_pickle(tmp_path):
    path = build_zip(tmp_path / "model.keras", {"config.json": b"{}", "model.weights.h5": b"\x89HDF"})
    result = scan_file(path)
    assert result.safe, result.findings
    assert result.imports == ()


def npy(descr: str, payload: bytes) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": (1,)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def test_npy_with_object_dtype_carries_a_pickle(tmp_path):
    bad = npy("|O", pickle.dumps(Payload(builtins.eval, "1"), protocol=3))
    assert scan(bad).disallowed == ("builtins.eval",)
    assert scan(npy("<f8", b"\x00" * 8)).safe
    path = build_zip(tmp_path / "arrays.npz", {"a.npy": npy("<f8", b"\x00" * 8), "b.npy": bad})
    assert scan_file(path).disallowed == ("builtins.eval",)


# --- invalid and non-pickle input ------------------------------------------------------------

@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_pickles_are_unsafe(cut):
    data = pickle.dumps({"a": [1.0, 2.0, "text" * 10]}, protocol=4)
    result = scan(data[:-cut])
    assert result.examined
    assert not result.safe
    assert any(d.startswith("not a valid pickle: ") for d in texts(result))


def test_truncated_malicious_pickle_still_names_the_import():
    data = pickle.dumps(Payload(os.system, "echo"), protocol=4)
    result = scan(data[:-1])  # REDUCE still runs before the missing STOP is noticed
    assert name_of(os.system) in result.disallowed
    assert any(d.startswith("not a valid pickle: ") for d in texts(result))


def test_length_past_the_end_is_truncation():
    data = PROTO4 + b"\x8e" + struct.pack("<Q", 10**12) + b"tiny"
    result = scan(data)
    assert texts(result) and texts(result)[0].startswith("not a valid pickle: truncated")


@pytest.mark.parametrize("data", [
    b"(garbage\xff\xff\xff",
    b"}\xff\xfe\xfd",
    b"\x80\x04\x95\x00",
    b"\x80\x09N.",                # unsupported protocol
    b"\x80\x04.",                 # STOP on an empty stack
    b"\x80\x04N\x93.",            # STACK_GLOBAL underflow
    b"\x80\x04Nt.",               # TUPLE without MARK
    b"\x80\x04Sabc\nN.",          # unquoted STRING
    b"\x80\x04N.\x00\x00",        # trailing bytes after a complete pickle
])
def test_garbage_is_reported_not_raised(data):
    result = scan(data)
    assert result.examined
    assert not result.safe
    assert any(d.startswith("not a valid pickle: ") for d in texts(result)), result.findings
    assert "not a valid pickle" in result.detail()


@pytest.mark.parametrize("data", [
    b"",
    b"\x08\x07\x12\x07pytorch\x1a\x052.1.0:\xa2\x01\n\x1e\n\x05input\x12\x06output",  # ONNX-like
    bytes(range(256)) * 4,        # bytes starting with 0x00, not an opcode
    b"\xde\xad\xbe\xef" * 100,
    b"# a README, not a model\n",
])
def test_non_pickles_of_other_formats(data):
    result = scan(data, declared=None)
    assert result == ArtifactScan(False, (), ())
    assert result.safe
    assert result.detail() == "no pickle or container found"


@pytest.mark.parametrize("data", [
    b"GGUF\x03\x00\x00\x00" + b"\x00" * 32,
    b"\x89HDF\r\n\x1a\n" + b"\x00" * 32,
])
def test_model_formats_whose_first_byte_is_an_opcode_are_checked_not_refused(data):
    result = scan(data, declared=None)
    assert result.examined and result.safe, result.findings
    assert result.imports == ()


@pytest.mark.parametrize("first", [b"N", b"c", b"K", b"X"])
def test_safetensors_whose_header_length_looks_like_an_opcode(first):
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    header += b" " * (first[0] - len(header))
    data = struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0)
    assert data[:1] == first
    result = scan(data, declared="safetensors")
    assert result.safe and result.imports == (), result.findings


def test_gguf_pickle_polyglot_is_caught():
    # GGUF magic, but read as a pickle: BINFLOAT eats "GUF" + 5 bytes, POP, then os.system
    data = b"GGUF" + b"\x00" * 5 + POP + glob("os", "system") + STOP
    result = scan(data, declared="gguf")
    assert result.examined
    assert "os.system" in result.disallowed


# --- large inputs: memory stays bounded ------------------------------------------------------

BIG = 200 * 1024 * 1024


def sparse_pickle(path: Path, opcode: bytes, protocol: int, tail: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(bytes([0x80, protocol]) + opcode + struct.pack("<Q", BIG))
        f.seek(BIG, os.SEEK_CUR)  # a hole: nothing of the payload is ever in memory here
        f.write(tail + STOP)
    return path


class NonSeekable(io.RawIOBase):
    def __init__(self, f) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:
        return self._f.readinto(b)


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


@pytest.mark.parametrize(("opcode", "protocol"), [
    pytest.param(b"\x8e", 4, id="BINBYTES8"),
    pytest.param(b"\x96", 5, id="BYTEARRAY8"),
    pytest.param(b"\x8d", 4, id="BINUNICODE8"),
])
def test_huge_payload_is_skipped_with_bounded_memory(tmp_path, opcode, protocol):
    path = sparse_pickle(tmp_path / "big.pkl", opcode, protocol)
    result, peak = peak_during(lambda: scan_file(path))
    assert result.examined and result.safe, result.findings
    assert peak < 16 * 1024 * 1024, peak


def test_huge_payload_from_a_non_seekable_stream(tmp_path):
    tail = POP + glob("os", "system")  # the payload is dropped, the global is what STOP returns
    path = sparse_pickle(tmp_path / "big.pkl", b"\x8e", 4, tail=tail)
    with open(path, "rb", buffering=0) as f:
        result, peak = peak_during(lambda: scan_stream(NonSeekable(f)))
    assert result.disallowed == ("os.system",)
    assert peak < 16 * 1024 * 1024, peak


def test_scanning_resumes_after_a_skipped_payload(tmp_path):
    tail = POP + sbu("builtins") + sbu("eval") + STACK_GLOBAL
    path = sparse_pickle(tmp_path / "big.pkl", b"\x8e", 4, tail=tail)
    assert scan_file(path).disallowed == ("builtins.eval",)


def test_medium_payloads_inside_the_read_buffer():
    blob = os.urandom(300_000)
    data = pickle.dumps({"blob": blob, "more": [blob[:70_000], "x" * 70_000]}, protocol=4)
    assert scan(data).safe
    data = pickle.dumps([blob, Payload(os.system, "id")], protocol=5)
    assert scan(data).disallowed == (name_of(os.system),)


def test_many_small_objects():
    data = pickle.dumps([{"k": i, "s": str(i)} for i in range(50_000)], protocol=4)
    assert scan(data).safe


# --- numpy -----------------------------------------------------------------------------------

def test_numpy_array_pickle_is_safe():
    np = pytest.importorskip("numpy")
    for protocol in (2, 4, 5):
        obj = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "s": np.float64(1.5),
               "dt": np.dtype("int16"), "o": np.array(["a", None], dtype=object)}
        result = scan(pickle.dumps(obj, protocol=protocol))
        assert result.safe, (protocol, result.findings)
        assert result.imports
