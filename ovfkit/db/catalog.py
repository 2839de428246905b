"""The VM catalog of a cluster in the shared database: what every API node resolves ``vmUuid``
against (``ovfkit vm add --database URL``). Callable as a
:data:`~ovfkit.zstack.catalog.VmResolver`, like the data folder's catalog."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, insert, select

from ..errors import NotFoundError
from ..zstack.catalog import read_vm_inventory, unwrap_vm_inventory
from ..zstack.inventory import is_zstack_uuid
from . import Database
from .packages import now_ms
from .schema import vms

__all__ = ["DatabaseCatalog"]


class DatabaseCatalog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def __call__(self, vm_uuid: str) -> Mapping[str, Any] | None:
        if not is_zstack_uuid(vm_uuid):
            return None
        with self.db.connect() as conn:
            row = conn.execute(select(vms.c.inventory).where(vms.c.uuid == vm_uuid)).first()
        return None if row is None else unwrap_vm_inventory(json.loads(row[0]))

    def add(self, inventory: Mapping[str, Any] | str | bytes) -> str:
        """Register (or replace) a VM; returns its uuid."""
        vm = read_vm_inventory(inventory)
        uuid = str(vm["uuid"])
        with self.db.begin() as conn:
            conn.execute(delete(vms).where(vms.c.uuid == uuid))
            conn.execute(insert(vms).values(uuid=uuid, inventory=json.dumps(vm), updated=now_ms()))
        return uuid

    def remove(self, vm_uuid: str) -> None:
        with self.db.begin() as conn:
            if not conn.execute(delete(vms).where(vms.c.uuid == vm_uuid)).rowcount:
                raise NotFoundError(f"VM {vm_uuid} is not in the catalog of {self.db.name}")

    def list(self) -> list[Mapping[str, Any]]:
        with self.db.connect() as conn:
            rows = conn.execute(select(vms.c.inventory).order_by(vms.c.uuid)).all()
        return [unwrap_vm_inventory(json.loads(r[0])) for r in rows]
