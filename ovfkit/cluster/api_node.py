"""The HTTP service's backend on an API node of a many-host service (``ovfkit serve --database
URL --broker URL``): exports go to the workers through :class:`~.service.ClusterService`; the
package records, accounts, sessions and VM catalog are the shared database's, so any API node
answers for any of them. A job started on one node is polled on any node (the job row), also
after the node that started it restarted."""

from __future__ import annotations

from ..progress import CancelToken
from ..server.backend import Backend, StoredJob
from ..server.jobs import current_job
from ..zstack.context import ExportContext
from ..zstack.inventory import ExportVmOvaPackageRequest, Reply
from .service import ClusterService

__all__ = ["ClusterBackend"]


class ClusterBackend(Backend):
    def __init__(self, context: ExportContext, service: ClusterService) -> None:
        super().__init__(context)
        self.service = service

    def export(
        self,
        request: ExportVmOvaPackageRequest,
        *,
        account_uuid: str | None = None,
        cancel: CancelToken | None = None,
    ) -> Reply:
        """Queue the export (as the HTTP job's uuid when it runs in the job form, so every
        node can answer its polls) and wait for a worker to finish it."""
        job = current_job.get()
        owner = account_uuid if account_uuid is not None else job.owner if job else ""
        return self.service.export(
            request,
            owner,
            job_uuid=job.uuid if job is not None else None,
            cancel=cancel,
        )

    def stored_job(self, uuid: str) -> StoredJob | None:
        """The job's row in the shared database, as the HTTP answer it gives."""
        job = self.service.store.get(uuid)
        if job is None:
            return None
        if not job.done:
            return StoredJob(job.account_uuid, None, None)
        status = 200 if job.status == 200 else 503
        return StoredJob(job.account_uuid, status, self.service.reply(job).to_json())

    def close(self) -> None:
        self.service.close()
        super().close()
        self.service.db.close()
