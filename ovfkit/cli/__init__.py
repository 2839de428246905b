"""The ``ovfkit`` command line. Each subcommand lives in its own module with a ``register``
function that adds its parser; errors leave as one line ``ERROR <code>: <details>`` on stderr."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .._extras import extra_of
from ..errors import MissingExtraError, OvfkitError

__all__ = ["main"]

# Subcommand modules, in the order `ovfkit --help` lists them.
_COMMANDS = (
    "export", "descriptor", "inventory", "verify", "inspect", "vm", "serve", "worker", "account",
)

_DESCRIPTION = (
    "Turn a virtual machine into an OVA package, and check packages. A VM is read from "
    "ovfkit's neutral VM JSON (format ovfkit.vm/1: ovfkit inventory --schema), from an OVF "
    "descriptor beside its files (a re-pack), or from a ZStack VM inventory; the input's "
    "content says which."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovfkit", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}_cmd":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            rc: int = args.func(args)
        except ModuleNotFoundError as exc:
            extra = extra_of(exc)
            if extra is None:
                raise
            module = (exc.name or "").partition(".")[0]
            raise MissingExtraError(extra, f"ovfkit {args.command}", module) from None
    except OvfkitError as exc:
        print(f"ERROR {exc.code}: {exc.details}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ERROR SYS.1017: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
