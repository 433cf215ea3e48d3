"""`modelreg keys export | generate`: the registry's signing keys.

    modelreg keys export [--keyring FILE]          the public keyring (JWKS) on stdout
    modelreg keys generate --dir DIR [SERVICE...]  a private key per service, and the keyring

`export` reads MODELREG_KEYRING_FILE, else the local stack's keyring (`modelreg stack up`
writes it under the stack directory's `keys/`). `generate` keeps keys that already exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from shared import keys


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = commands.add_parser("keys", help="the services' signing keys: export the public keyring (JWKS)")
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="print the public keyring as a JWKS document")
    export.add_argument("--keyring", metavar="FILE", type=Path, default=None,
                        help="default: MODELREG_KEYRING_FILE, else the local stack's")
    generate = actions.add_parser("generate", help="create missing per-service keys and write the keyring")
    generate.add_argument("--dir", metavar="DIR", type=Path, required=True,
                          help="where the keys go (mode 0700; keep it out of the repository)")
    generate.add_argument("services", nargs="*", metavar="SERVICE",
                          help=f"default: all of {', '.join(keys.SERVICES)}")
    return parser


def keyring_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    if os.environ.get("MODELREG_KEYRING_FILE"):
        return Path(os.environ["MODELREG_KEYRING_FILE"])
    from shared.stack.launcher import LocalStack
    return LocalStack().keyring_file


def command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from services.cli.errors import UserError

    out = out or sys.stdout
    try:
        if args.keys_command == "export":
            keyring = keys.Keyring.load(keyring_path(args.keyring))
            out.write(json.dumps(keyring.to_jwks(), indent=2) + "\n")
            return 0
        if args.keys_command == "generate":
            unknown = sorted(set(args.services) - set(keys.SERVICES))
            if unknown:
                raise UserError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(keys.SERVICES)}")
            written = keys.write_keyring(args.dir, args.services or keys.SERVICES)
            print(f"keys in {args.dir}/ (mode 0600); public keyring: {written}", file=sys.stderr)
            return 0
    except keys.KeyFileError as exc:
        raise UserError(str(exc)) from None
    raise UserError(f"unknown keys action {args.keys_command!r}")


# Commands that check signatures on records they read, and so need the keyring.
KEYRING_COMMANDS = ("replay",)


def local_signing_defaults(command: str, service: str | None) -> dict[str, str]:
    """For `modelreg run SERVICE` beside the default local stack with no keys configured: that
    service's key and the stack's keyring (as `stack up` gives the services it starts); for a
    command that checks signatures (`replay`), the keyring. Empty when a key is set, the stack
    has none, or the keyring set is another deployment's."""
    from shared.stack.launcher import LocalStack

    if command in KEYRING_COMMANDS and not os.environ.get("MODELREG_KEYRING_FILE"):
        keyring = LocalStack().keyring_file
        return {"MODELREG_KEYRING_FILE": str(keyring)} if keyring.exists() else {}
    if command != "run" or service is None or os.environ.get("MODELREG_SIGNING_KEY_FILE"):
        return {}
    stack = LocalStack()
    key = stack.signing_key_file(service)
    if not key.exists() or os.environ.get("MODELREG_KEYRING_FILE", str(stack.keyring_file)) != str(stack.keyring_file):
        return {}
    return {"MODELREG_SIGNING_KEY_FILE": str(key), "MODELREG_KEYRING_FILE": str(stack.keyring_file)}
