"""`modelreg stack up | down | status | credentials ROLE`."""

from __future__ import annotations

import argparse
import shlex
import sys

from services.cli.errors import UserError
from shared.kafka_acls import OUTSIDE_ROLE_READS, OUTSIDE_ROLE_WRITES, OUTSIDE_ROLES
from shared.stack.kafka_auth import BROKER, PRINCIPALS
from shared.stack.launcher import LocalStack, Ports
from shared.stack.proc import alive

CLIENT_PRINCIPALS = tuple(p for p in PRINCIPALS if p != BROKER)
# Who a command of a source checkout connects as, when no KAFKA_* setting says otherwise.
# `import` registers as the pipeline and asks for the imported stages as ops (a second set of
# credentials: services/cli/mlflow_import).
COMMAND_PRINCIPALS = {"register": "pipeline", "evaluate": "qa", "promote": "ops", "restore": "ops",
                      "import": "pipeline", "replay": "reader",
                      "bench": "admin"}

# Outside roles that upload artifacts: their credentials include the stack's publisher S3
# account, which may write the bucket's uploads/ and nothing else (shared/stack/s3.py); and
# the commands that upload as that role.
S3_PUBLISHER_ROLES = ("pipeline",)
S3_PUBLISHER_COMMANDS = ("register", "import")

# Settings every client shares; the Kafka ones differ per principal (`credentials ROLE`).
_KAFKA_PREFIX = "KAFKA_"


def command(args: argparse.Namespace) -> int:
    stack = LocalStack()
    if args.stack_command == "up":
        current = stack.ports
        ports = Ports(kafka=args.kafka_port or current.kafka,
                      postgres=args.postgres_port or current.postgres,
                      s3=args.s3_port or current.s3)
        stack.up(ports, brokers=args.brokers)
        if not args.infra_only:
            from services.cli.service_names import SERVICES
            from services.cli.up import service_env

            stack.start_services(SERVICES, service_env())
        print_status(stack)
        return 0
    if args.stack_command == "down":
        stack.down(purge=args.purge)
        return 0
    if args.stack_command == "credentials":
        return print_credentials(stack, args.role)
    if args.stack_command == "acls":
        return apply_acls_here(args.prefix)
    if args.stack_command == "kafka-auth":
        from pathlib import Path

        from shared.stack.compose_kafka import write_compose_kafka

        write_compose_kafka(Path(args.dir), Path(args.ca_dir), args.owner)
        print(f"wrote Kafka's CA, certificate and config to {args.dir}, the CA to {args.ca_dir}")
        return 0
    return print_status(stack)


def apply_acls_here(prefix: str | None) -> int:
    """The ACL table on the cluster of the current settings, as the principal they name."""
    import asyncio

    from shared.kafka_acls import AclRefusedError, acl_plan, apply_acls
    from shared.settings import load_settings

    settings = load_settings()
    chosen = settings.topic_prefix if prefix is None else prefix
    try:
        asyncio.run(apply_acls(settings, chosen))
    except AclRefusedError as exc:
        raise UserError(str(exc)) from None
    print(f"{len(acl_plan(chosen))} ACLs in place on {settings.kafka_bootstrap_servers} "
          f"for topic prefix {chosen!r}")
    return 0


def export_lines(env: dict[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def print_credentials(stack: LocalStack, role: str) -> int:
    """One principal's Kafka client settings (a publisher's: and its S3 keys), as lines a
    shell can eval."""
    if role not in CLIENT_PRINCIPALS:
        raise UserError(f"unknown role {role!r}; one of: {', '.join(CLIENT_PRINCIPALS)}")
    if not stack.kafka_secured:
        raise UserError(f"the stack in {stack.dir} runs Kafka PLAINTEXT (it predates Kafka security): "
                        "no credentials to hand out; `modelreg stack down --purge` then `up` secures it")
    if not stack.kafka_auth.exists():
        raise UserError(f"the stack in {stack.dir} has not been started yet: `modelreg stack up` makes "
                        "its Kafka credentials")
    env = stack.kafka_env(role)
    if role in S3_PUBLISHER_ROLES:
        env.update(stack.publisher_s3_env())
        if not stack.uploads_confined:
            print(f"warning: the stack's S3 server ({stack.state.s3_server or 'not running'}) does not confine this "
                  "S3 credential to uploads/ (moto checks no policies; a versitygw started before publisher "
                  "accounts needs `modelreg stack up`)", file=sys.stderr)
    for line in export_lines(env):
        print(line)
    return 0


def local_kafka_defaults(command: str, service: str | None = None) -> dict[str, str]:
    """For a command run beside the default local stack with no Kafka security settings of its
    own: the settings of the principal that command acts as (a pipeline registers, QA
    evaluates, ops promote, a service runs as itself). Empty when anything is set, or the
    stack is not there or not secured."""
    import os

    if any(name.startswith(_KAFKA_PREFIX) and name != "KAFKA_BOOTSTRAP_SERVERS" for name in os.environ):
        return {}
    principal = service if command == "run" else COMMAND_PRINCIPALS.get(command)
    stack = LocalStack()
    if principal is None or not stack.state_file.exists() or not stack.kafka_secured:
        return {}
    env = stack.kafka_env(principal)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS", env["KAFKA_BOOTSTRAP_SERVERS"]) != env["KAFKA_BOOTSTRAP_SERVERS"]:
        return {}  # pointed at another cluster
    return env


def local_s3_defaults(command: str) -> dict[str, str]:
    """For a command that uploads (`register`, `import`) beside the default local stack with no
    S3 key of its own: the publisher's keys, which may write uploads/ only. Empty when an AWS
    key is set, the command points at another S3 endpoint or bucket, or the stack's S3 server
    does not confine publishers (moto; a versitygw started before publisher accounts)."""
    import os

    if command not in S3_PUBLISHER_COMMANDS or os.environ.get("AWS_ACCESS_KEY_ID") \
            or os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return {}
    stack = LocalStack()
    if not stack.state_file.exists() or not stack.uploads_confined:
        return {}
    env = stack.env()
    if any(os.environ.get(name, env[name]) != env[name] for name in ("S3_ENDPOINT_URL", "S3_BUCKET")):
        return {}  # pointed at another store
    return stack.publisher_s3_env()


def _role_summary(role: str) -> str:
    writes = ", ".join(OUTSIDE_ROLE_WRITES[role]) or "nothing"
    reads = "every topic" if role == "reader" else (", ".join(OUTSIDE_ROLE_READS[role]) or "nothing")
    return f"writes {writes}; reads {reads}"


def print_status(stack: LocalStack) -> int:
    answers, ours = stack.answers(), stack.running_parts()
    print(f"# modelreg local stack in {stack.dir}")
    for part, port in (("kafka", stack.ports.kafka), ("postgres", stack.ports.postgres),
                       ("s3", stack.ports.s3)):
        state = "DOWN" if not answers[part] else "answers" if part in ours else "answers, but not this stack's process"
        print(f"#   {part:<9} 127.0.0.1:{port:<6} {state}")
    for name, pid in sorted(stack.state.services.items()):
        print(f"#   service {name:<11} {'running' if alive(pid) else 'STOPPED'} (pid {pid}, log: "
              f"{stack.dir / 'logs' / (name + '.log')})")
    env = stack.env()
    for line in export_lines({k: v for k, v in env.items() if not k.startswith(_KAFKA_PREFIX)}):
        print(line)
    print(export_lines({"KAFKA_BOOTSTRAP_SERVERS": env["KAFKA_BOOTSTRAP_SERVERS"]})[0])
    if not stack.kafka_secured:
        print("# Kafka runs PLAINTEXT, without ACLs (this stack predates Kafka security): "
              "`modelreg stack down --purge` then `up` secures it")
        return 0 if all(answers.values()) else 1
    if not stack.kafka_auth.exists():
        print("# Kafka: SASL_SSL with ACLs once `modelreg stack up` has made its credentials")
        return 0 if all(answers.values()) else 1
    print("# Kafka: SASL_SSL (SCRAM-SHA-512), ACLs per principal. Each role's client settings, for")
    print("# this shell (eval \"$(modelreg stack credentials ROLE)\") or a librdkafka client")
    print("# (bootstrap.servers, security.protocol, sasl.mechanisms, sasl.username, sasl.password,")
    print("# ssl.ca.location):")
    for role in OUTSIDE_ROLES:
        print(f"# -- {role}: {_role_summary(role)}")
        for line in export_lines(stack.kafka_env(role)):
            print(f"#   {line}")
        if role in S3_PUBLISHER_ROLES:
            confined = "writes uploads/ only" if stack.uploads_confined else "NOT confined to uploads/ (see README)"
            print(f"#   S3 keys: `modelreg stack credentials {role}` ({confined})")
    return 0 if all(answers.values()) else 1
