"""``ovfkit account add|passwd|remove NAME`` / ``ovfkit account list``: the accounts that may log
in to ``ovfkit serve`` (stored in the data folder, passwords hashed with scrypt)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from ..errors import InvalidArgumentError
from .serve_cmd import add_data_dir_argument, default_data_dir

__all__ = ["register", "run_add", "run_list", "run_passwd", "run_remove"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "account", help="manage the accounts of 'ovfkit serve'"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="create an account",
        description="Create an account. The password is asked for on the terminal, or read "
        "from the first line of stdin with --password-stdin.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    add_data_dir_argument(add)
    add.set_defaults(func=run_add)
    passwd = actions.add_parser(
        "passwd", help="set an account's password (ends its sessions)",
        description="Set the password of an account and end its sessions. The password is "
        "asked for on the terminal, or read from the first line of stdin with --password-stdin.",
    )
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    add_data_dir_argument(passwd)
    passwd.set_defaults(func=run_passwd)
    remove = actions.add_parser("remove", help="remove an account (ends its sessions)")
    remove.add_argument("name", metavar="NAME")
    add_data_dir_argument(remove)
    remove.set_defaults(func=run_remove)
    lst = actions.add_parser("list", help="list the accounts")
    add_data_dir_argument(lst)
    lst.set_defaults(func=run_list)


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise InvalidArgumentError("the two passwords differ")
    return first


def run_add(args: argparse.Namespace) -> int:
    from ..zstack.auth import AuthStore

    store = AuthStore(args.data_dir or default_data_dir())
    password = _read_password(args.password_stdin)
    account = store.create_account(args.name, password)
    print(f"account {account.name} created (uuid {account.uuid})")
    return 0


def run_passwd(args: argparse.Namespace) -> int:
    from ..zstack.auth import AuthStore

    store = AuthStore(args.data_dir or default_data_dir())
    store.set_password(args.name, _read_password(args.password_stdin))
    print(f"password of account {args.name} changed; its sessions are ended")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from ..zstack.auth import AuthStore

    AuthStore(args.data_dir or default_data_dir()).remove_account(args.name)
    print(f"account {args.name} removed")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from ..zstack.auth import AuthStore, zstack_timestamp

    for account in AuthStore(args.data_dir or default_data_dir()).list_accounts():
        print(f"{account.uuid}  {account.name}  created {zstack_timestamp(account.create_date)}")
    return 0
