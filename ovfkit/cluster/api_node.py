"""The HTTP service's backend on an API node of a many-host service (``ovfkit serve --database
URL --broker URL``): exports go to the workers through :class:`~.service.ClusterService`; the
package records, accounts, sessions and VM catalog are the shared database's, so any API node
answers for any of them. A job started on one node is polled on any node (the job row), also
after the node that started it restarted.

A job-form export's webhook is kept in its row: the node that took the request sends it when
the job is done, holding a claim on it in the row; if that node is gone (or died sending), a
reaper on any other node takes the claim over once the job has been done for two leases, and
sends it. Delivery is at least once: a node that dies after the receiver accepted the webhook
but before it marked it sent leaves it to be sent again (RestServer's receivers see a job
uuid in ``X-Job-UUID``)."""

from __future__ import annotations

import json
import logging
import threading

from ..errors import InvalidArgumentError, OvfkitError
from ..progress import CancelToken
from ..server import webhook
from ..server.backend import Backend, StoredJob
from ..server.jobs import current_job
from ..zstack.context import ExportContext
from ..zstack.inventory import ExportVmOvaPackageRequest, Reply
from .jobs import Job
from .service import ClusterService

__all__ = ["WEBHOOK_HOLD_MS", "ClusterBackend"]

_log = logging.getLogger(__name__)

# How long a node's claim on a webhook lasts: RestServer's retries (15 attempts of up to 10 s, 2 s
# apart) and a margin; a node that died sending leaves it to another after this.
WEBHOOK_HOLD_MS = int(
    (webhook.RETRY_TIMES * (webhook.ATTEMPT_TIMEOUT + webhook.RETRY_INTERVAL) + 30) * 1000
)


class ClusterBackend(Backend):
    def __init__(
        self, context: ExportContext, service: ClusterService, *, webhook_reaper: bool = True
    ) -> None:
        super().__init__(context)
        self.service = service
        self._stop = threading.Event()
        self._sending: set[str] = set()
        if webhook_reaper:
            threading.Thread(target=self._reap, name="ovfkit-webhooks", daemon=True).start()

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
            webhook=job.webhook if job is not None else None,
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

    def claim_webhook(self, job_uuid: str) -> bool:
        """Send it if the job's row keeps no webhook (a job form of another API), or if this
        node got the claim on it; not if another node holds it or sent it already."""
        store = self.service.store
        try:
            job = store.get(job_uuid)
            if job is None or job.webhook_state is None:
                return True
            return store.claim_webhook(job_uuid, WEBHOOK_HOLD_MS)
        except OvfkitError as exc:  # the database is down: send it (at least once)
            _log.warning("webhook of job %s: no claim (%s); sending it anyway", job_uuid, exc)
            return True

    def webhook_sent(self, job_uuid: str, sent: bool) -> None:
        try:
            self.service.store.webhook_done(job_uuid, sent)
        except OvfkitError as exc:  # left pending: another node sends it again once the claim ends
            _log.warning("webhook of job %s: its state was not saved: %s", job_uuid, exc)

    def _reap(self) -> None:
        timings = self.service.timings
        while not self._stop.wait(timings.reap_every):
            try:
                self._send_orphans(int(2 * timings.lease * 1000))
            except OvfkitError as exc:
                _log.warning("webhook reaper: %s", exc)
            except Exception:
                _log.exception("webhook reaper failed")

    def _send_orphans(self, unclaimed_for_ms: int) -> None:
        """Send the webhooks of done jobs that the node that took them did not send."""
        store = self.service.store
        for uuid in store.pending_webhooks(unclaimed_for_ms):
            if uuid in self._sending or not store.claim_webhook(
                uuid, WEBHOOK_HOLD_MS, unclaimed_for_ms=unclaimed_for_ms
            ):
                continue
            job = store.get(uuid)
            if job is None or job.webhook is None:
                continue
            try:
                target = webhook.check_webhook_url(job.webhook, self.context.config.webhook_hosts)
            except InvalidArgumentError as exc:  # this node's allowed hosts refuse it
                _log.warning("webhook of job %s not sent: %s", uuid, exc.details)
                store.webhook_done(uuid, False)
                continue
            self._sending.add(uuid)
            threading.Thread(
                target=self._send, args=(job, target), name="ovfkit-webhook", daemon=True
            ).start()

    def _send(self, job: Job, target: webhook.WebhookTarget) -> None:
        try:
            body = json.dumps(self.service.reply(job).to_json()).encode()
            sent = webhook.post(target, body, job.uuid, job.status == 200, stop=self._stop)
            if sent or not self._stop.is_set():
                self.webhook_sent(job.uuid, sent)
            _log.info("webhook of job %s (its node gone) sent: %s", job.uuid, sent)
        except Exception:
            _log.exception("webhook of job %s failed", job.uuid)
        finally:
            self._sending.discard(job.uuid)

    def close(self) -> None:
        self._stop.set()
        self.service.close()
        super().close()
        self.service.db.close()
