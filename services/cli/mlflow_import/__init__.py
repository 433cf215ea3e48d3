"""`modelreg import mlflow --tracking-uri URL [--models GLOB] [--dry-run] --actor APPROVER`.

Copies an MLflow registry's models, versions (artifacts, run ids, tags, descriptions, the
source runs' metrics and params), aliases and stages into modelreg, keeping version numbers.
See run.py for how, plan.py for what, and the README's "Importing from MLflow" for whom the
registry trusts to say which version was the champion.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
from pathlib import Path
from typing import Any

from services.cli.errors import UserError

DEFAULT_WAIT_SECONDS = 600.0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("import", help="copy models from another registry (MLflow) into modelreg")
    systems = parser.add_subparsers(dest="import_system", required=True, metavar="SYSTEM")
    mlflow = systems.add_parser(
        "mlflow", help="registered models, versions, artifacts, aliases and stages of an MLflow tracking server")
    mlflow.add_argument("--tracking-uri", required=True, metavar="URL",
                        help="the MLflow tracking server, e.g. http://mlflow.internal:5000 (its token: "
                             "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)")
    mlflow.add_argument("--models", metavar="GLOB", default=None,
                        help="only MLflow models whose name matches (shell pattern, case-sensitive; default: all)")
    mlflow.add_argument("--dry-run", action="store_true", help="show what would be copied and asked; do nothing")
    mlflow.add_argument("--actor", required=True,
                        help="the approver (in the policy's approvers) on whose authority MLflow's champion "
                             "and staging versions take those stages here")
    mlflow.add_argument("--champion-alias", default="champion",
                        help="the MLflow alias naming the champion (default: champion; without it, the "
                             "newest version in stage Production)")
    mlflow.add_argument("--ops-credentials", metavar="FILE", type=Path, default=None,
                        help="the ops principal's Kafka settings as export lines (`modelreg stack credentials "
                             "ops` prints them); default: the local stack's, else the same as registering")
    mlflow.add_argument("--wait", dest="wait_seconds", type=_seconds, default=DEFAULT_WAIT_SECONDS,
                        metavar="SECONDS", help="how long to wait for the registry to settle (default 600; "
                                                "0: publish and return)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 to 86400 seconds")
    return value


def read_credentials(path: Path) -> dict[str, str]:
    """KAFKA_* settings from lines `export NAME=VALUE` or `NAME=VALUE` (shell quoting)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"--ops-credentials {path}: {exc.strerror or exc}") from None
    env = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UserError(f"--ops-credentials {path}, line {number}: {exc}") from None
        if words and words[0] == "export":
            words = words[1:]
        for word in words:
            name, sep, value = word.partition("=")
            if not sep or not name.startswith("KAFKA_"):
                raise UserError(f"--ops-credentials {path}, line {number}: expected KAFKA_NAME=VALUE")
            env[name] = value
    if not env:
        raise UserError(f"--ops-credentials {path} sets no KAFKA_* setting")
    return env


def ops_environment(explicit: Path | None) -> dict[str, str]:
    """The Kafka settings the import requests go out with (see README: they need ops' ACL)."""
    if explicit is not None:
        return read_credentials(explicit)
    from shared.stack.launcher import LocalStack

    stack = LocalStack()
    if not stack.state_file.exists() or not stack.kafka_secured or not stack.kafka_auth.exists():
        return {}
    mine = stack.kafka_env("pipeline")
    # Only beside the default local stack, connected as its pipeline principal (main did that).
    if all(os.environ.get(k) == v for k, v in mine.items()):
        return stack.kafka_env("ops")
    return {}


def command(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError
    from botocore.exceptions import BotoCoreError, ClientError

    from shared.directories import DirectoryRefused
    from shared.settings import load_settings

    from .plan import GlobError, check_glob
    from .run import Options, run_import

    try:
        glob = None if args.models is None else check_glob(args.models)
    except GlobError as exc:
        raise UserError(str(exc)) from None
    options = Options(tracking_uri=args.tracking_uri, models=glob, dry_run=args.dry_run, actor=args.actor,
                      champion_alias=args.champion_alias, wait_seconds=args.wait_seconds)
    pipeline = load_settings()
    ops_env = ops_environment(args.ops_credentials)
    ops = load_settings(**{**pipeline.model_dump(), **{k.lower(): v for k, v in ops_env.items()}}) \
        if ops_env else pipeline
    try:
        return asyncio.run(run_import(options, pipeline, ops))
    except KafkaError as exc:
        raise UserError(f"Kafka at {pipeline.kafka_bootstrap_servers}: {type(exc).__name__}: {exc} (registering "
                        "needs the pipeline principal's ACL, asking for stages the ops principal's)") from None
    except (BotoCoreError, ClientError) as exc:
        raise UserError(f"the registry's S3 store ({pipeline.s3_endpoint_url or 'AWS'}): {exc}") from None
    except DirectoryRefused as exc:
        raise UserError(str(exc)) from None
