"""Which globals a model pickle may import: exact names, never package globs.

Unpickling imports every global a pickle names and calls what it imported, so each entry is a
class whose reconstruction only restores data (`cls.__new__` + `__setstate__`) or a function
that only computes. A package glob such as `sklearn.*` would also admit functions that write
files (`sklearn.tree.export_graphviz`) or run scripts (test helpers), so the defaults list names
one by one. A policy rule's `pickle_allow` extends the list for its models; patterns there may
use globs ("mylib.models.*"), hardened so that a glob never reaches modules or names that
execute code, touch files or re-enter unpickling.
"""

from __future__ import annotations

import fnmatch
import functools
import re

from .allowed_sklearn import SKLEARN_ALLOWED

_TORCH_DTYPES = (
    "float16", "float32", "float64", "bfloat16", "half", "float", "double",
    "complex32", "complex64", "complex128", "cfloat", "cdouble", "chalf",
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "short", "int", "long", "bool", "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
)
# Legacy typed storages, the persistent-id types torch.save writes (bytes per element).
TORCH_STORAGE_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8,
    "QUInt8Storage": 1, "QInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1, "UntypedStorage": 1,
}
# torch.nn building blocks a full-model pickle (torch.save(model)) names; restoring one is
# cls.__new__ + Module.__setstate__ (a dict update).
_TORCH_MODULES = (
    "container.Sequential", "container.ModuleList", "container.ModuleDict",
    "container.ParameterList", "container.ParameterDict",
    "linear.Linear", "linear.Identity", "linear.Bilinear", "linear.LazyLinear",
    "conv.Conv1d", "conv.Conv2d", "conv.Conv3d", "conv.ConvTranspose1d", "conv.ConvTranspose2d",
    "conv.ConvTranspose3d",
    "activation.ReLU", "activation.ReLU6", "activation.LeakyReLU", "activation.PReLU",
    "activation.ELU", "activation.SELU", "activation.GELU", "activation.SiLU", "activation.Mish",
    "activation.Sigmoid", "activation.Tanh", "activation.Softmax", "activation.LogSoftmax",
    "activation.Softplus", "activation.Hardtanh", "activation.MultiheadAttention",
    "dropout.Dropout", "dropout.Dropout1d", "dropout.Dropout2d", "dropout.Dropout3d",
    "dropout.AlphaDropout",
    "batchnorm.BatchNorm1d", "batchnorm.BatchNorm2d", "batchnorm.BatchNorm3d",
    "normalization.LayerNorm", "normalization.GroupNorm", "normalization.RMSNorm",
    "instancenorm.InstanceNorm1d", "instancenorm.InstanceNorm2d",
    "sparse.Embedding", "sparse.EmbeddingBag",
    "rnn.RNN", "rnn.LSTM", "rnn.GRU", "rnn.RNNCell", "rnn.LSTMCell", "rnn.GRUCell",
    "pooling.MaxPool1d", "pooling.MaxPool2d", "pooling.MaxPool3d", "pooling.AvgPool1d",
    "pooling.AvgPool2d", "pooling.AvgPool3d", "pooling.AdaptiveAvgPool1d",
    "pooling.AdaptiveAvgPool2d", "pooling.AdaptiveMaxPool2d",
    "flatten.Flatten", "flatten.Unflatten",
    "transformer.Transformer", "transformer.TransformerEncoder",
    "transformer.TransformerEncoderLayer", "transformer.TransformerDecoder",
    "transformer.TransformerDecoderLayer",
    "loss.MSELoss", "loss.CrossEntropyLoss", "loss.BCELoss", "loss.BCEWithLogitsLoss",
    "loss.NLLLoss", "loss.L1Loss",
)
_NUMPY_SCALAR_TYPES = (
    "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "longdouble", "complex64", "complex128", "clongdouble",
    "str_", "bytes_", "object_", "datetime64", "timedelta64", "intc", "uintc", "intp", "uintp",
)
_NUMPY_DTYPE_CLASSES = (
    "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType",
    "UInt16DType", "UInt32DType", "UInt64DType", "ByteDType", "UByteDType", "ShortDType",
    "UShortDType", "IntDType", "UIntDType", "LongDType", "ULongDType", "LongLongDType",
    "ULongLongDType", "Float16DType", "Float32DType", "Float64DType", "LongDoubleDType",
    "Complex64DType", "Complex128DType", "CLongDoubleDType", "ObjectDType", "BytesDType",
    "StrDType", "VoidDType", "DateTime64DType", "TimeDelta64DType", "StringDType",
)

DEFAULT_ALLOWED: tuple[str, ...] = (
    # --- Plain containers and values. Constructing them runs no user code; a callable handed to
    #     one (a defaultdict's default_factory) is itself a global, checked on its own.
    "collections.OrderedDict", "collections.defaultdict", "collections.Counter",
    "collections.deque",
    "builtins.set", "builtins.frozenset", "builtins.dict", "builtins.list", "builtins.tuple",
    "builtins.bytearray", "builtins.bytes", "builtins.complex", "builtins.slice",
    "builtins.range", "builtins.object", "builtins.float", "builtins.int", "builtins.str",
    "builtins.bool",
    "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta",
    "datetime.timezone", "decimal.Decimal", "fractions.Fraction",
    # --- What the pickle protocol itself emits: they only call cls.__new__ / base.__init__ of
    #     classes that reach them as (checked) globals.
    "copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__",
    # --- numpy (protocol <= 2) stores raw bytes as _codecs.encode(latin-1 text, "latin1").
    "_codecs.encode",
    # --- numpy arrays, scalars and dtypes: reconstruction from data only.
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
    "numpy.ndarray", "numpy.dtype", "numpy.matrix",
    "numpy.ma.core._mareconstruct", "numpy.ma.core.MaskedArray", "numpy.ma.MaskedArray",
    # Abstract scalar types, as dtype selectors (make_column_selector(dtype_include=np.number)).
    "numpy.number", "numpy.integer", "numpy.signedinteger", "numpy.unsignedinteger",
    "numpy.floating", "numpy.complexfloating", "numpy.inexact", "numpy.generic", "numpy.bool",
    "numpy.character", "numpy.flexible",
    *(f"numpy.dtypes.{c}" for c in _NUMPY_DTYPE_CLASSES),
    *(f"numpy.{t}" for t in _NUMPY_SCALAR_TYPES),
    # Reductions estimators keep as parameter defaults (FeatureAgglomeration's pooling_func).
    "numpy.mean", "numpy.median", "numpy.sum", "numpy.max", "numpy.min", "numpy.std",
    # Random generator state: constructors taking a bit-generator name and a state dict.
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__generator_ctor",
    "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random.mtrand.RandomState", "numpy.random._generator.Generator",
    "numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64",
    "numpy.random._pcg64.PCG64DXSM", "numpy.random._philox.Philox",
    "numpy.random._sfc64.SFC64", "numpy.random.bit_generator.SeedSequence",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    # --- joblib's placeholder for an array whose bytes follow the pickle opcode that built it.
    "joblib.numpy_pickle.NumpyArrayWrapper",
    # --- scipy: sparse matrices/arrays, splines (SplineTransformer), array conversion.
    *(f"scipy.sparse._{fmt}.{fmt}_{kind}" for fmt in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
      for kind in ("matrix", "array")),
    "scipy.interpolate._bsplines.BSpline",
    "scipy._lib.array_api_compat.numpy._aliases.asarray",
    # --- scikit-learn: estimator classes and what they hold, one by one.
    *SKLEARN_ALLOWED,
    # --- gradient boosting libraries: boosters restore from their own model text/bytes.
    "lightgbm.basic.Booster", "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.sklearn.LGBMRegressor", "lightgbm.sklearn.LGBMRanker",
    "xgboost.core.Booster", "xgboost.sklearn.XGBClassifier", "xgboost.sklearn.XGBRegressor",
    "xgboost.sklearn.XGBRanker", "xgboost.sklearn.XGBRFClassifier",
    "xgboost.sklearn.XGBRFRegressor",
    # --- torch: the tensor rebuilders torch.save emits, storages, dtypes, devices, layouts.
    #     NOT torch.storage._load_from_bytes: it calls torch.load, an unrestricted unpickle.
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage", "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter", "torch.Tensor", "torch.Size", "torch.device",
    "torch.serialization._get_layout", "torch.strided", "torch.sparse_coo", "torch.sparse_csr",
    "torch.per_tensor_affine", "torch.per_channel_affine", "torch.per_tensor_symmetric",
    "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams",
    *(f"torch.{s}" for s in TORCH_STORAGE_SIZES),
    "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
    *(f"torch.{d}" for d in _TORCH_DTYPES),
    *(f"torch.nn.modules.{m}" for m in _TORCH_MODULES),
)

# Policy globs are refused when any dotted component they supply is one of these (modules and
# builtins that execute code, spawn processes, touch files/network, or re-enter unpickling) ...
_DENY_COMPONENTS = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "builtins", "__builtin__", "__builtins__",
    "importlib", "runpy", "shutil", "socket", "pty", "ctypes", "pickle", "_pickle", "cPickle",
    "dill", "cloudpickle", "joblib", "_joblib", "marshal", "types", "code", "codeop", "functools",
    "operator", "webbrowser", "multiprocessing", "threading", "signal", "tempfile", "io",
    "pathlib", "glob", "asyncio", "inspect", "urllib", "http", "requests", "eval", "exec",
    "compile", "getattr", "setattr", "delattr", "__import__", "open", "input", "breakpoint",
    "globals", "locals", "vars", "system", "popen", "__globals__", "__dict__", "__class__",
    "__subclasses__", "__getattribute__", "__reduce__", "__reduce_ex__", "__loader__",
    "__spec__", "__code__",
})
# ... or when a module component matches one of these (test helpers run scripts, dataset
# helpers download and write files, trackers/collectives open sockets) ...
_DENY_MODULE_PARTS = (
    "test", "tests", "testing", "_testing", "test_*", "*_test", "conftest", "externals",
    "_build_utils", "datasets", "_show_versions", "tracker", "collective", "dask", "spark",
    "rabit", "federated", "setup",
)
# ... or when the final name matches one of these (file IO, process/code execution, memory).
_DENY_NAMES = (
    "load*", "_load*", "save*", "_save*", "dump*", "_dump*", "fetch*", "open*", "read*",
    "write*", "exec*", "eval*", "spawn*", "popen*", "run*", "_run*", "system", "call",
    "check_call", "check_output", "compile*", "import*", "_import*", "*ctypes*", "c_*", "*cstr*",
    "*pointer*", "*_ptr", "export*",
)
_WILDCARD_CHARS = frozenset("*?[")


class AllowList:
    """Exact entries are taken at their word; glob entries (policy only) are hardened.

    The hardening looks only at what the glob supplied: the dotted components that start after
    the pattern's literal prefix ("mylib.models.*" must not reach `mylib.models.os.system`)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.exact = frozenset(p for p in patterns if not _WILDCARD_CHARS & set(p))
        self.wild: list[tuple[re.Pattern[str], int]] = []
        for p in dict.fromkeys(p for p in patterns if _WILDCARD_CHARS & set(p)):
            prefix = min(p.index(c) for c in _WILDCARD_CHARS if c in p)
            self.wild.append((re.compile(fnmatch.translate(p)), prefix))

    def permits(self, module: str, name: str) -> bool:
        full = f"{module}.{name}"
        if full in self.exact:
            return True
        if "." in name or not self.wild:  # protocol 4 qualnames walk attributes: "a.b" + "os.system"
            return False
        parts = full.split(".")
        if not all(p.isidentifier() for p in parts):
            return False
        starts, at = [], 0
        for part in parts:
            starts.append(at)
            at += len(part) + 1
        return any(regex.match(full) and _hardened(parts, starts, prefix) for regex, prefix in self.wild)


def _hardened(parts: list[str], starts: list[int], prefix: int) -> bool:
    free = [i for i, start in enumerate(starts) if start >= prefix]
    if any(parts[i] in _DENY_COMPONENTS for i in free):
        return False
    last = len(parts) - 1
    if any(fnmatch.fnmatchcase(parts[i], d) for i in free if i != last for d in _DENY_MODULE_PARTS):
        return False
    return last not in free or not any(fnmatch.fnmatchcase(parts[last], d) for d in _DENY_NAMES)


@functools.lru_cache(maxsize=32)
def allow_list(extra: tuple[str, ...] = ()) -> AllowList:
    """The default list extended by a policy rule's `pickle_allow` patterns."""
    return AllowList(DEFAULT_ALLOWED + tuple(p for p in extra if p))
