"""The MLflow side of `modelreg bench --compare-mlflow`, run by the interpreter that has mlflow
(bench/.mlflow-venv); it imports nothing of modelreg and prints one JSON object.

The same four things as the issue's reference: registrations/s (`create_model_version`),
promotions/s (`set_registered_model_alias` + `set_model_version_tag`), the champion lookup by
alias (`get_model_version_by_alias`) with `--versions` versions registered, and a pipeline's
create + 3 tags + alias per version (p99). Versions are
spread over `--models` models and each model is written by one thread at a time (MLflow numbers
versions per model), `--concurrency` threads in all.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--promotions", type=int, default=300)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.url, registry_uri=args.url)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i:03d}" for i in range(args.models)]
    for name in names:
        client.create_registered_model(name)
    share = [args.versions // args.models + (1 if i < args.versions % args.models else 0) for i in range(args.models)]

    def register(index: int) -> None:
        for i in range(share[index]):
            client.create_model_version(names[index], source=f"s3://modelreg/inbox/{prefix}/{index}-{i}/model.onnx")

    began = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(register, range(args.models)))
    registration_seconds = time.perf_counter() - began

    promotions = min(args.promotions, args.versions)
    plan = [share_index for share_index in range(args.models) for _ in range(
        promotions // args.models + (1 if share_index < promotions % args.models else 0))]
    per_model: dict[int, int] = {}
    for index in plan:
        per_model[index] = per_model.get(index, 0) + 1

    def promote(index: int) -> None:
        for version in range(1, per_model[index] + 1):
            client.set_registered_model_alias(names[index], "champion", str(version))
            client.set_model_version_tag(names[index], str(version), "stage", "production")

    began = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(promote, sorted(per_model)))
    promotion_seconds = time.perf_counter() - began

    latencies: list[float] = []
    lock = threading.Lock()
    generator = random.Random(7)
    targets = [names[generator.choice(sorted(per_model))] for _ in range(args.lookups)]
    chunks = [targets[i::args.concurrency] for i in range(args.concurrency)]

    def lookup(chunk: list[str]) -> None:
        mine = []
        for name in chunk:
            start = time.perf_counter()
            client.get_model_version_by_alias(name, "champion")
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(lookup, chunks))
    lookup_seconds = time.perf_counter() - began

    # What a pipeline does per version in MLflow, timed whole: register it, tag it three times
    # (run, dataset, QA verdict), point the champion alias at it. modelreg's counterpart is its
    # end-to-end latency, registered -> promoted, QA hop included.
    steps: list[float] = []
    step_names = [f"{prefix}-pipeline-{i:02d}" for i in range(args.concurrency)]
    for name in step_names:
        client.create_registered_model(name)

    def pipeline(name: str) -> None:
        mine = []
        for i in range(max(1, args.promotions // args.concurrency)):
            start = time.perf_counter()
            version = client.create_model_version(name, source=f"s3://modelreg/inbox/{prefix}/{name}-{i}/model.onnx")
            for key, value in (("run_id", f"run-{i}"), ("dataset", "s3://d/x@7"), ("qa", "passed")):
                client.set_model_version_tag(name, version.version, key, value)
            client.set_registered_model_alias(name, "champion", version.version)
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            steps.extend(mine)

    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(pipeline, step_names))

    print(json.dumps({
        "pipeline_steps": len(steps), "pipeline_p50_ms": round(percentile(steps, 50), 3),
        "pipeline_p99_ms": round(percentile(steps, 99), 3),
        "mlflow_version": mlflow.__version__, "versions": args.versions, "models": args.models,
        "concurrency": args.concurrency,
        "registration_seconds": round(registration_seconds, 3),
        "registrations_per_second": round(args.versions / registration_seconds, 1),
        "promotions": promotions, "promotion_seconds": round(promotion_seconds, 3),
        "promotions_per_second": round(promotions / promotion_seconds, 1),
        "lookups": len(latencies), "lookup_p50_ms": round(percentile(latencies, 50), 3),
        "lookup_p99_ms": round(percentile(latencies, 99), 3),
        "lookup_requests_per_second": round(len(latencies) / lookup_seconds, 1),
    }))


if __name__ == "__main__":
    main()
