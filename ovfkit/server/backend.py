"""What the HTTP handlers call: the function layer of :mod:`ovfkit.zstack.api` on one opened
:class:`~ovfkit.zstack.context.ExportContext`, plus the look-up of a package file to download.
Every method is blocking and meant to run in a worker thread."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError
from ..progress import CancelToken
from ..zstack import api
from ..zstack.context import ExportContext
from ..zstack.inventory import ExportVmOvaPackageRequest, ImagePackageInventory, Reply
from ..zstack.tags import TagRecord

if TYPE_CHECKING:
    from ..ovf.reader import ParsedDescriptor

__all__ = ["Backend", "StoredJob"]


@dataclass(frozen=True)
class StoredJob:
    """A job kept outside this process (many hosts): its owner account, and its HTTP answer
    once done (``status`` None while it runs)."""

    owner: str
    status: int | None
    body: dict[str, Any] | None


class Backend:
    def __init__(self, context: ExportContext) -> None:
        self.context = context

    # ``account_uuid``: the caller's account; in queries, updates and deletes the account whose
    # packages the call sees (None: every account's, for the admin).

    def export(
        self,
        request: ExportVmOvaPackageRequest,
        *,
        account_uuid: str | None = None,
        cancel: CancelToken | None = None,
    ) -> Reply:
        return api.export_vm_ova_package(
            request, context=self.context, cancel=cancel, account_uuid=account_uuid
        )

    def query(
        self,
        conditions: Sequence[str],
        *,
        limit: int | None = None,
        start: int = 0,
        sort_by: str | None = None,
        sort_direction: str = "asc",
        group_by: str | None = None,
        account_uuid: str | None = None,
    ) -> list[ImagePackageInventory]:
        return api.query_image_packages(
            self.context,
            conditions,
            limit=limit,
            start=start,
            sort_by=sort_by,
            sort_direction=sort_direction,
            group_by=group_by,
            account_uuid=account_uuid,
        )

    def count(
        self,
        conditions: Sequence[str],
        *,
        group_by: str | None = None,
        account_uuid: str | None = None,
    ) -> int:
        return api.count_image_packages(
            self.context, conditions, group_by=group_by, account_uuid=account_uuid
        )

    def query_tags(
        self,
        kind: str,
        conditions: Sequence[str],
        *,
        limit: int | None = None,
        start: int = 0,
        sort_by: str | None = None,
        sort_direction: str = "asc",
        account_uuid: str | None = None,
    ) -> list[TagRecord]:
        return api.query_tags(
            self.context, kind, conditions, limit=limit, start=start, sort_by=sort_by,
            sort_direction=sort_direction, account_uuid=account_uuid,
        )

    def count_tags(
        self, kind: str, conditions: Sequence[str], *, account_uuid: str | None = None
    ) -> int:
        return api.count_tags(self.context, kind, conditions, account_uuid=account_uuid)

    def update(
        self,
        uuid: str,
        *,
        name: str | None,
        description: str | None,
        account_uuid: str | None = None,
    ) -> ImagePackageInventory:
        return api.update_image_package(
            self.context, uuid, name=name, description=description, account_uuid=account_uuid
        )

    def delete(self, uuid: str, *, account_uuid: str | None = None) -> None:
        api.delete_image_package(self.context, uuid, account_uuid=account_uuid)

    def parse_ovf(self, xml: bytes) -> ParsedDescriptor:
        from ..ovf.reader import parse_package_descriptor

        return parse_package_descriptor(xml)

    def package_file(
        self, uuid: str, token: str, *, ttl: float | None = None
    ) -> tuple[Path, str, int]:
        """(path, download file name, size) of an Exported package on a local backup storage,
        whose download token is ``token`` and whose URL has not expired (``ttl``); SYS.1003
        otherwise (see :func:`ovfkit.zstack.api.package_file`)."""
        inventory, path = api.package_file(self.context, uuid, token, ttl=ttl)
        if inventory.size is None:
            raise NotFoundError(f"image package[uuid: {uuid}] has no size yet")
        return path, f"{inventory.uuid}.ova", inventory.size

    def stored_job(self, uuid: str) -> StoredJob | None:
        """A job this process's registry does not hold (None here: jobs live in memory)."""
        return None

    def claim_webhook(self, job_uuid: str) -> bool:
        """Whether this process sends the done job's webhook (here always: the job lives and
        dies with this process; many hosts: the node that holds it, see ovfkit.cluster)."""
        return True

    def webhook_sent(self, job_uuid: str, sent: bool) -> None:
        """The webhook was accepted, or refused through every retry."""

    def close(self) -> None:
        self.context.close()
