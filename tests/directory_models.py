"""Directory models for tests, built from the real libraries: an MLflow scikit-learn model
directory laid out as `mlflow.sklearn.save_model` writes it (MLmodel, model.pkl via cloudpickle,
conda.yaml, python_env.yaml, requirements.txt), and a pickle that runs a command on load."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import cloudpickle
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression


class _RunsACommand:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned > /tmp/modelreg-pwned",))


EVIL_PICKLE = pickle.dumps(_RunsACommand(), protocol=4)

_MLMODEL = """artifact_path: model
flavors:
  python_function:
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.sklearn
    model_path: model.pkl
    predict_fn: predict
    python_version: 3.11.9
  sklearn:
    code: null
    pickled_model: model.pkl
    serialization_format: cloudpickle
    sklearn_version: {sklearn}
mlflow_version: 2.17.0
model_size_bytes: {size}
model_uuid: 7d0f1c7e9a8b4b53a3a1c0f52f0a6f11
run_id: 2b3c4d5e6f708192a3b4c5d6e7f80912
utc_time_created: '2026-11-30 07:00:00.000000'
"""
_CONDA = """channels:
- conda-forge
dependencies:
- python=3.11.9
- pip<=24.2
- pip:
  - mlflow==2.17.0
  - cloudpickle=={cloudpickle}
  - numpy=={numpy}
  - scikit-learn=={sklearn}
name: mlflow-env
"""
_PYTHON_ENV = """python: 3.11.9
build_dependencies:
- pip==24.2
- setuptools
- wheel
dependencies:
- -r requirements.txt
"""
_REQUIREMENTS = "mlflow=={mlflow}\ncloudpickle=={cloudpickle}\nnumpy=={numpy}\nscikit-learn=={sklearn}\n"


def clean_sklearn_pickle(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    features = rng.random((64, 4))
    labels = (features[:, 0] + features[:, 1] > 1).astype(int)
    return cloudpickle.dumps(LogisticRegression().fit(features, labels))


def mlflow_sklearn_dir(root: Path, *, pickle_bytes: bytes | None = None, seed: int = 0) -> Path:
    """An MLflow sklearn model directory at `root`; `pickle_bytes` replaces the clean model."""
    model = clean_sklearn_pickle(seed) if pickle_bytes is None else pickle_bytes
    versions = {"sklearn": sklearn.__version__, "cloudpickle": cloudpickle.__version__,
                "numpy": np.__version__, "mlflow": "2.17.0"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.pkl").write_bytes(model)
    (root / "MLmodel").write_text(_MLMODEL.format(size=len(model), **versions))
    (root / "conda.yaml").write_text(_CONDA.format(**versions))
    (root / "python_env.yaml").write_text(_PYTHON_ENV)
    (root / "requirements.txt").write_text(_REQUIREMENTS.format(**versions))
    return root


def directory_manifest(root: Path) -> tuple[str, int]:
    """(sha256, size_bytes) a pipeline announces for the directory: the documented recipe."""
    files = sorted((p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()), key=str.encode)
    manifest = "".join(f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {(root / f).stat().st_size}  {f}\n"
                       for f in files)
    return hashlib.sha256(manifest.encode()).hexdigest(), sum((root / f).stat().st_size for f in files)
