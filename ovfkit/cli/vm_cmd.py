"""``ovfkit vm add|list|remove|backup-storages``: the embedded VM catalog of a data folder.

``add INVENTORY.json`` registers a ZStack VmInstanceInventory (a QueryVmInstance reply, an API
event or a bare inventory) after checking that ovfkit can build a VM from it; ExportVmOvaPackage
then finds it by uuid. Volume and ISO paths are checked against the storage roots at export time
(the config may change in between); ``--storage-root`` adds a root to the config.

With ``--database URL`` the catalog is the shared one of a many-host service (every API node
resolves VMs there); the storage roots are then each worker's own config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..zstack.catalog import FolderCatalog, unwrap_vm_inventory
from ..zstack.config import (
    LocalStorageConfig,
    default_data_dir,
    ensure_default_storage,
    load_config,
    save_config,
)
from .serve_cmd import add_data_dir_argument

__all__ = ["register"]


def _data_dir_arg(parser: argparse.ArgumentParser, *, database: bool = True) -> None:
    add_data_dir_argument(
        parser,
        database="the shared catalog of a many-host service (postgresql://...) instead of the "
        "data folder's" if database else None,
    )


class _Catalog(Protocol):
    def add(self, inventory: Mapping[str, Any]) -> str: ...
    def remove(self, vm_uuid: str) -> None: ...
    def list(self) -> list[Mapping[str, Any]]: ...


@contextlib.contextmanager
def _catalog(args: argparse.Namespace) -> Iterator[_Catalog]:
    if args.database is None:
        yield FolderCatalog(_data_dir(args))
        return
    from ..db import open_database
    from ..db.catalog import DatabaseCatalog

    db = open_database(args.database)
    try:
        yield DatabaseCatalog(db)
    finally:
        db.close()


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "vm",
        help="manage the VM catalog of a data folder",
        description="Register, list and remove the VMs ExportVmOvaPackage can export.",
    )
    vm_sub = parser.add_subparsers(dest="vm_command", required=True, metavar="ACTION")
    add = vm_sub.add_parser("add", help="register a VmInstanceInventory (JSON)")
    add.add_argument("inventory", metavar="INVENTORY.json", help="inventory file, - for stdin")
    add.add_argument(
        "--storage-root",
        action="append",
        default=[],
        metavar="PATH",
        help="also allow disks and ISOs under PATH (added to the config; repeatable)",
    )
    _data_dir_arg(add)
    add.set_defaults(func=_add)
    ls = vm_sub.add_parser("list", help="list registered VMs")
    ls.add_argument("--json", action="store_true", help="print the inventories as JSON")
    _data_dir_arg(ls)
    ls.set_defaults(func=_list)
    bs = vm_sub.add_parser(
        "backup-storages", help="list the backup storages exports can go to (uuid, kind, place)"
    )
    _data_dir_arg(bs, database=False)
    bs.set_defaults(func=_backup_storages)
    rm = vm_sub.add_parser("remove", help="unregister a VM")
    rm.add_argument("uuid", help="the VM's uuid")
    _data_dir_arg(rm)
    rm.set_defaults(func=_remove)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir is not None else default_data_dir()


def _add(args: argparse.Namespace) -> int:
    from ..zstack.adapter import decode_inventory, vm_from_zstack
    from .descriptor_cmd import read_input

    inventory = unwrap_vm_inventory(decode_inventory(read_input(args.inventory)))
    vm_from_zstack(inventory)  # refuse now what could never be exported
    data = _data_dir(args)
    if args.storage_root:
        config = load_config(data)
        for root in args.storage_root:
            config = config.with_storage_root(str(Path(root).resolve()))
        save_config(data, config)
    with _catalog(args) as catalog:
        uuid = catalog.add(inventory)
    print(uuid)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        vms = catalog.list()
    if args.json:
        json.dump({"inventories": vms}, sys.stdout, indent=1)
        print()
        return 0
    for vm in vms:
        print(f"{vm.get('uuid')}  {vm.get('state', '?'):<9} {vm.get('name', '')}")
    return 0


def _backup_storages(args: argparse.Namespace) -> int:
    config = ensure_default_storage(_data_dir(args))
    for uuid, storage in config.backup_storages.items():
        if isinstance(storage, LocalStorageConfig):
            print(f"{uuid}  local  {storage.path}")
        else:
            print(f"{uuid}  sftp   {storage.username}@{storage.hostname}:{storage.port}"
                  f"{storage.path}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _catalog(args) as catalog:
        catalog.remove(args.uuid)
    return 0
