"""The `modelreg` command: run services, the local stack, and the registry's tools.

Errors a person can fix are printed as one line (`modelreg: error: ...`) with exit code 2
for bad usage or settings and 1 for a failed operation; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from services.cli.errors import UserError
from services.cli.service_names import SERVICES
from shared.keys import KeyFileError
from shared.policy import PolicyError
from shared.settings import Settings, SettingsError

EXIT_FAILED = 1
EXIT_USAGE = 2


class _Service(Protocol):
    """What every service's `create_app` builds (shared.runtime.ServiceApp, the API's ApiService)."""

    async def run_until_signalled(self) -> None: ...


def _service_factory(name: str) -> Callable[[Settings], _Service]:
    if name not in SERVICES:
        raise UserError(f"unknown service {name!r}; choose one of: {', '.join(SERVICES)}")
    module = importlib.import_module(f"services.{name}.app")
    create_app: Callable[[Settings], _Service] = module.create_app
    return create_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelreg", description="Event-driven ML model registry.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = commands.add_parser("stack", help="the local Kafka + PostgreSQL + S3 stack")
    stack_commands = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = stack_commands.add_parser("up", help="start Kafka, PostgreSQL and S3 on 127.0.0.1")
    up.add_argument("--kafka-port", type=_port, default=None)
    up.add_argument("--postgres-port", type=_port, default=None)
    up.add_argument("--s3-port", type=_port, default=None)
    up.add_argument("--brokers", type=int, default=None,
                    help="Kafka brokers (KRaft nodes) on consecutive ports from --kafka-port; 3 gives the "
                         "registry's topics replication factor 3 and min.insync.replicas 2 (default: as the "
                         "stack was made, else 1)")
    up.add_argument("--infra-only", action="store_true",
                    help="only Kafka, PostgreSQL and S3; not the registry's services")
    down = stack_commands.add_parser("down", help="stop the stack (data is kept)")
    down.add_argument("--purge", action="store_true", help="also delete every bit of its data")
    stack_commands.add_parser("status", help="what runs, and the env exports that point at it")
    credentials = stack_commands.add_parser(
        "credentials", help="one Kafka principal's client settings, as export lines: "
                            "eval \"$(modelreg stack credentials pipeline)\"")
    credentials.add_argument("role", help="an outside role (pipeline, qa, ops, reader), a service, or admin")
    acls = stack_commands.add_parser(
        "acls", help="create the registry's Kafka ACLs on the cluster the settings point at "
                     "(connecting as a super user; infra/kafka-acls.sh is the same with kafka-acls.sh)")
    acls.add_argument("--prefix", default=None, help="topic prefix (default: MODELREG_TOPIC_PREFIX)")
    kafka_auth = stack_commands.add_parser(
        "kafka-auth", help="docker-compose.yml's Kafka identities: CA, broker certificate, config")
    kafka_auth.add_argument("--dir", required=True, help="the Kafka container's private volume")
    kafka_auth.add_argument("--ca-dir", required=True, help="where the services read the CA")
    kafka_auth.add_argument("--owner", type=int, default=None, help="uid the Kafka image runs as")

    run = commands.add_parser("run", help="run one service in the foreground")
    run.add_argument("service", choices=SERVICES)

    commands.add_parser("migrate", help="apply database migrations and exit")
    commands.add_parser("up", help="the local stack and every service, in the foreground "
                                   "(taking over from services `stack up` started in the background)")
    commands.add_parser("demo", help="start everything and play a model's life through it")

    from services.cli import audit, bench, replay, tools
    audit.add_parser(commands)
    replay.add_parser(commands)
    bench.add_parser(commands)
    tools.add_parsers(commands)
    from services.cli import api, people
    api.add_parser(commands)
    people.add_parsers(commands)
    from services.cli import keys
    keys.add_parser(commands)
    from services.cli import dlq
    dlq.add_parser(commands)
    from services.cli import webhooks
    webhooks.add_parser(commands)
    from services.cli import mlflow_import
    mlflow_import.add_parser(commands)

    schemas = commands.add_parser("schemas", help="the published event contract in schemas/")
    schemas.add_argument("action", choices=("generate", "check"))
    schemas.add_argument("--dir", default="schemas", help="default: ./schemas")
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Every command of a source checkout reads the same policy the services it starts use.
    from services.cli.up import default_policy

    if not os.environ.get("MODELREG_POLICY_FILE") and (policy := default_policy()):
        os.environ["MODELREG_POLICY_FILE"] = policy
    # ... and beside the local stack, connects to Kafka as the principal the command acts as.
    from services.cli.stack import local_kafka_defaults, local_s3_defaults

    os.environ.update(local_kafka_defaults(args.command, getattr(args, "service", None)))
    os.environ.update(local_s3_defaults(args.command))  # and uploads with the publisher's S3 key
    from services.cli.keys import local_signing_defaults

    os.environ.update(local_signing_defaults(args.command, getattr(args, "service", None)))
    from shared.logs import configure

    configure(None, verbose=args.verbose)
    from shared.stack.proc import StackError

    try:
        return dispatch(args) or 0
    except (SettingsError, PolicyError, KeyFileError) as exc:
        print(f"modelreg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (UserError, StackError) as exc:
        print(f"modelreg: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except (OSError, ConnectionError) as exc:
        print(f"modelreg: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def dispatch(args: argparse.Namespace) -> int | None:
    if args.command == "stack":
        from services.cli import stack
        return stack.command(args)
    if args.command == "run":
        from shared.settings import load_settings
        settings = load_settings()
        app = _service_factory(args.service)(settings)
        asyncio.run(app.run_until_signalled())
        return 0
    if args.command in ("register", "evaluate", "promote", "restore"):
        from services.cli import tools
        return tools.command(args)
    if args.command == "replay":
        from services.cli import replay
        return replay.command(args)
    if args.command == "bench":
        from services.cli import bench
        return bench.command(args)
    if args.command == "audit":
        from services.cli import audit
        return audit.command(args)
    if args.command == "dlq":
        from services.cli import dlq
        return dlq.command(args)
    if args.command == "webhooks":
        from services.cli import webhooks
        return webhooks.command(args)
    if args.command == "import":
        from services.cli import mlflow_import
        return mlflow_import.command(args)
    if args.command == "keys":
        from services.cli import keys
        return keys.command(args)
    if args.command == "token":
        from services.cli import api
        return api.command(args)
    if args.command in ("models", "versions", "show", "explain", "policy"):
        from services.cli import people
        return people.command(args)
    if args.command == "up":
        from services.cli import up
        return up.run(SERVICES)
    if args.command == "demo":
        from services.cli import demo
        return demo.run()
    if args.command == "migrate":
        from shared.db import migrate
        from shared.settings import load_settings
        applied = asyncio.run(migrate(load_settings().dsn))
        print(f"applied {len(applied)} migration(s)" if applied else "the database is up to date")
        return 0
    if args.command == "schemas":
        from pathlib import Path

        from shared import schemagen
        directory = Path(args.dir)
        if args.action == "generate":
            written = schemagen.write(directory)
            print(f"wrote {len(written)} files under {directory}/")
            return 0
        drift = schemagen.drift(directory)
        for line in drift:
            print(line)
        if drift:
            print("schemas/ is out of date: run `modelreg schemas generate`", file=sys.stderr)
            return EXIT_FAILED
        print("schemas/ matches the event models")
        return 0
    raise UserError(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
