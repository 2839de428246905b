"""The ``ovfkit`` command line. Each subcommand lives in its own module with a ``register``
function that adds its parser; errors leave as one line ``ERROR <code>: <details>`` on stderr.

SIGTERM and SIGHUP end a command the way Ctrl-C does: raised in the main thread as a
KeyboardInterrupt, so the same clean-up runs (``export`` removes its temporary file), then
``ERROR SYS.1017`` and exit status 128 + the signal's number (130, 143, 129). ``serve`` and
``worker`` keep their own handling (graceful shutdown).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_TERMINATING = (signal.SIGTERM, signal.SIGHUP)
_OWN_SIGNALS = ("serve", "worker")  # long-running services with their own shutdown


@contextlib.contextmanager
def _terminate_like_interrupt(command: str) -> Iterator[None]:
    if command in _OWN_SIGNALS or threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, _frame: object) -> None:
        nonlocal raised
        if raised:  # a second signal must not cut the clean-up of the first short
            return
        raised = True
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in _TERMINATING}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            with _terminate_like_interrupt(args.command):
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
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        what = "interrupted" if signum == signal.SIGINT else "terminated"
        print(f"ERROR SYS.1017: {what} by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
