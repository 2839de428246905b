"""``ovfkit account add|passwd|remove NAME`` / ``ovfkit account list``: the accounts that may log
in to ``ovfkit serve`` (stored in the data folder, passwords hashed with scrypt).
``ovfkit account access-key add|list NAME`` / ``access-key remove ID``: the account's AccessKey
pairs, for ZStack SDK clients that sign requests instead of logging in.
``ovfkit account adopt NAME --ownerless | --package UUID``: give packages to an account (those
made before packages had owners are the admin's until given)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, NotFoundError
from .serve_cmd import add_data_dir_argument, default_data_dir

if TYPE_CHECKING:
    from ..zstack.auth import AuthStore

__all__ = [
    "register",
    "run_add",
    "run_adopt",
    "run_key_add",
    "run_key_list",
    "run_key_remove",
    "run_list",
    "run_passwd",
    "run_remove",
]


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
    _location_arguments(add)
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
    _location_arguments(passwd)
    passwd.set_defaults(func=run_passwd)
    remove = actions.add_parser("remove", help="remove an account (ends its sessions)")
    remove.add_argument("name", metavar="NAME")
    _location_arguments(remove)
    remove.set_defaults(func=run_remove)
    lst = actions.add_parser("list", help="list the accounts")
    _location_arguments(lst)
    lst.set_defaults(func=run_list)
    adopt = actions.add_parser(
        "adopt", help="give packages to an account",
        description="Make the account the owner of packages: those named with --package "
        "(whoever owns them) and, with --ownerless, every package made before packages had "
        "owners (since that upgrade they are the admin's, and the accounts that exported them "
        "no longer see them).",
    )
    adopt.add_argument("name", metavar="NAME", help="the account")
    adopt.add_argument("--package", action="append", default=[], metavar="UUID",
                       help="a package to give (repeatable)")  # fmt: skip
    adopt.add_argument("--ownerless", action="store_true",
                       help="every package that has no owner")  # fmt: skip
    _location_arguments(adopt)
    adopt.set_defaults(func=run_adopt)
    _register_access_keys(actions)


def _register_access_keys(actions: Any) -> None:
    parser: argparse.ArgumentParser = actions.add_parser(
        "access-key",
        help="manage an account's AccessKey pairs",
        description="AccessKey pairs sign requests (Authorization: ZStack <AccessKeyId>:"
        "<signature> and a Date header) as ZStack's SDKs do when given accessKeyId and "
        "accessKeySecret instead of a session.",
    )
    keys = parser.add_subparsers(dest="key_action", required=True, metavar="ACTION")
    add = keys.add_parser(
        "add", help="create a pair; prints AccessKeyId and AccessKeySecret (shown only once)"
    )
    add.add_argument("name", metavar="NAME", help="the account")
    add.add_argument("--description", default="", help="what the pair is for")
    _location_arguments(add)
    add.set_defaults(func=run_key_add)
    lst = keys.add_parser("list", help="list an account's pairs (not their secrets)")
    lst.add_argument("name", metavar="NAME", help="the account")
    _location_arguments(lst)
    lst.set_defaults(func=run_key_list)
    remove = keys.add_parser("remove", help="remove a pair")
    remove.add_argument("key_id", metavar="ACCESS_KEY_ID")
    _location_arguments(remove)
    remove.set_defaults(func=run_key_remove)


def _location_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir_argument(
        parser,
        database="the shared database of a many-host service (postgresql://...) instead of the "
        "data folder",
    )


def _auth(args: argparse.Namespace) -> AuthStore:
    """The account store the arguments name (closed when the command's process ends)."""
    from ..zstack.auth import AuthStore

    database = None
    if args.database is not None:
        from ..db import open_database

        database = open_database(args.database)
    return AuthStore(args.data_dir or default_data_dir(), database=database)


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise InvalidArgumentError("the two passwords differ")
    return first


def run_add(args: argparse.Namespace) -> int:

    store = _auth(args)
    password = _read_password(args.password_stdin)
    account = store.create_account(args.name, password)
    print(f"account {account.name} created (uuid {account.uuid})")
    return 0


def run_passwd(args: argparse.Namespace) -> int:

    store = _auth(args)
    store.set_password(args.name, _read_password(args.password_stdin))
    print(f"password of account {args.name} changed; its sessions are ended")
    return 0


def run_remove(args: argparse.Namespace) -> int:

    _auth(args).remove_account(args.name)
    print(f"account {args.name} removed")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from ..zstack.auth import zstack_timestamp

    for account in _auth(args).list_accounts():
        print(f"{account.uuid}  {account.name}  created {zstack_timestamp(account.create_date)}")
    return 0


def run_adopt(args: argparse.Namespace) -> int:
    from ..zstack.records import PackageRecords

    if not args.package and not args.ownerless:
        raise InvalidArgumentError("name the packages to give: --package UUID or --ownerless")
    auth = _auth(args)
    account = next((a for a in auth.list_accounts() if a.name == args.name), None)
    if account is None:
        raise NotFoundError(f"no account named {args.name!r}")
    if args.database is not None:  # the shared database holds the packages too
        from ..db.packages import PackageStore

        given = PackageStore(auth.db).give(
            account.uuid, packages=args.package, ownerless=args.ownerless
        )
    else:
        records = PackageRecords(args.data_dir or default_data_dir())
        try:
            given = records.give(account.uuid, packages=args.package, ownerless=args.ownerless)
        finally:
            records.close()
    for uuid in given:
        print(uuid)
    print(f"{len(given)} package(s) given to account {account.name}", file=sys.stderr)
    return 0


def _key_store(args: argparse.Namespace) -> Any:
    from ..zstack.accesskeys import AccessKeyStore

    auth = _auth(args)  # the accounts table the keys refer to
    return AccessKeyStore(auth.path.parent, database=auth.db)


def run_key_add(args: argparse.Namespace) -> int:
    key, secret = _key_store(args).add(args.name, args.description)
    print(f"AccessKeyId: {key.id}")
    print(f"AccessKeySecret: {secret}")
    return 0


def run_key_list(args: argparse.Namespace) -> int:
    from ..zstack.auth import zstack_timestamp

    for key in _key_store(args).list(args.name):
        print(f"{key.id}  created {zstack_timestamp(key.create_date)}  {key.description}")
    return 0


def run_key_remove(args: argparse.Namespace) -> int:
    _key_store(args).remove(args.key_id)
    print(f"access key {args.key_id} removed")
    return 0
