"""`modelreg stack up | down | status`."""

from __future__ import annotations

import argparse

from shared.stack.launcher import LocalStack, Ports
from shared.stack.proc import alive


def command(args: argparse.Namespace) -> int:
    stack = LocalStack()
    if args.stack_command == "up":
        current = stack.ports
        ports = Ports(kafka=args.kafka_port or current.kafka,
                      postgres=args.postgres_port or current.postgres,
                      s3=args.s3_port or current.s3)
        stack.up(ports)
        if not args.infra_only:
            from services.cli.main import SERVICES
            from services.cli.up import service_env

            stack.start_services(SERVICES, service_env())
        print_status(stack)
        return 0
    if args.stack_command == "down":
        stack.down(purge=args.purge)
        return 0
    return print_status(stack)


def print_status(stack: LocalStack) -> int:
    answers = stack.answers()
    print(f"# modelreg local stack in {stack.dir}")
    for part, port in (("kafka", stack.ports.kafka), ("postgres", stack.ports.postgres),
                       ("s3", stack.ports.s3)):
        print(f"#   {part:<9} 127.0.0.1:{port:<6} {'answers' if answers[part] else 'DOWN'}")
    for name, pid in sorted(stack.state.services.items()):
        print(f"#   service {name:<11} {'running' if alive(pid) else 'STOPPED'} (pid {pid}, log: "
              f"{stack.dir / 'logs' / (name + '.log')})")
    for name, value in stack.env().items():
        print(f"export {name}={value}")
    return 0 if all(answers.values()) else 1
