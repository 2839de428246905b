"""The tables of every record ovfkit keeps, as SQLAlchemy Core metadata (one schema for SQLite
and PostgreSQL). Alembic's migrations in ``migrations/versions`` create and change them; this
module is what the code reads and writes through, and a test checks that the two agree.

Times are Unix milliseconds in BIGINT (Java's precision, exact in round trips, no time-zone
conversion by either database), except the account tables, which keep seconds as floats.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "access_keys",
    "accounts",
    "cluster_workers",
    "export_jobs",
    "image_packages",
    "metadata",
    "pending_cleanup",
    "sessions",
    "tags",
    "vms",
]

metadata = MetaData()

UUID = String(32)

# ImagePackageVO. vm_uuid UNIQUE: ZStack allows one package per VM, and the database (not a
# lock of one host) decides which of two requests for the same VM wins, whichever API node
# they reached. account_uuid: the owning account (ZStack's AccountResourceRefVO; NULL for rows
# made before ownership, which only the admin sees); download_token: the secret part of a local
# package's exportUrl (NULL until Exported, and for remote storages' packages).
image_packages = Table(
    "image_packages",
    metadata,
    Column("uuid", UUID, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("description", Text),
    Column("vm_uuid", UUID, nullable=False, unique=True),
    Column("backup_storage_uuid", UUID, nullable=False),
    Column("state", String(16), CheckConstraint("state IN ('Exporting', 'Exported')"),
           nullable=False),
    Column("export_url", Text),
    Column("md5_sum", String(64)),
    Column("format", String(16), nullable=False, server_default="OVA"),
    Column("size", BigInteger),
    Column("create_date", BigInteger, nullable=False),
    Column("last_op_date", BigInteger, nullable=False),
    Column("install_path", Text, nullable=False),
    Column("owner_pid", Integer),
    Column("account_uuid", UUID),
    Column("download_token", String(64)),
    Index("image_packages_account", "account_uuid"),
)

# Files to remove from a backup storage: a durable to-do list (see zstack/records.py).
pending_cleanup = Table(
    "pending_cleanup",
    metadata,
    Column("backup_storage_uuid", UUID, primary_key=True),
    Column("install_path", String(512), primary_key=True),
    Column("queued", Float, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("uuid", UUID, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("salt", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("create_date", Float, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("uuid", UUID, primary_key=True),
    Column("account_uuid", UUID, ForeignKey("accounts.uuid", ondelete="CASCADE"), nullable=False),
    Column("create_date", Float, nullable=False),
    Column("expired_date", Float, nullable=False),
    Index("sessions_expiry", "expired_date"),
)

# The VM catalog of a cluster: one VmInstanceInventory (JSON) per VM, shared by API nodes.
vms = Table(
    "vms",
    metadata,
    Column("uuid", UUID, primary_key=True),
    Column("inventory", Text, nullable=False),
    Column("updated", BigInteger, nullable=False),
)

# An export handed to the workers (ovfkit.cluster): the API job, its queue, the lease of the
# worker running it, and the HTTP answer once done. The row outlives any API node, so a job's
# result can be polled from any of them, after a restart too.
export_jobs = Table(
    "export_jobs",
    metadata,
    Column("uuid", UUID, primary_key=True),
    Column("account_uuid", String(64), nullable=False),
    Column("package_uuid", UUID, nullable=False),
    Column("vm_uuid", UUID, nullable=False),
    Column("backup_storage_uuid", UUID, nullable=False),
    Column("request", Text, nullable=False),
    Column("vm", Text, nullable=False),
    Column("queue", String(255), nullable=False),
    Column("state", String(16), CheckConstraint("state IN ('queued', 'running', 'done')"),
           nullable=False),
    Column("worker", String(64)),
    Column("worker_name", String(255)),
    Column("lease_until", BigInteger),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("status", Integer),
    Column("body", Text),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Column("dispatched", BigInteger, nullable=False),
    # The job form's X-Web-Hook, kept with the job so that any API node can send it once the job
    # is done, when the node that took the request is gone: webhook_state 'pending' until one
    # node has sent it ('sent') or given up after RestServer's retries ('failed');
    # webhook_until: the sending node's claim (ms), after which another node may take it over.
    Column("webhook", Text),
    Column("webhook_state", String(16)),
    Column("webhook_until", BigInteger),
    Index("export_jobs_state", "state", "lease_until"),
)

# What each live worker declared it can reach; heartbeat refreshed while it runs.
cluster_workers = Table(
    "cluster_workers",
    metadata,
    Column("uuid", UUID, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("roots", Text, nullable=False),
    Column("backup_storages", Text, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("started", BigInteger, nullable=False),
    Column("heartbeat", BigInteger, nullable=False),
    # the worker's own --lease in ms: it is live while its heartbeat is younger (None: rows of
    # workers from before 0004, judged by the reader's lease)
    Column("lease_ms", BigInteger),
)

# ZStack's SystemTagVO and UserTagVO in one table (type System or Simple); a package's tags go
# with it in the same transactions.
tags = Table(
    "tags",
    metadata,
    Column("uuid", UUID, primary_key=True),
    Column("resource_uuid", UUID, nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("tag", Text, nullable=False),
    Column("type", String(16), CheckConstraint("type IN ('System', 'Simple')"), nullable=False),
    Column("create_date", BigInteger, nullable=False),
    Column("last_op_date", BigInteger, nullable=False),
    Index("tags_resource", "resource_uuid"),
)

# ZStack's AccessKey pairs (the secret is an HMAC key, so it is kept as is).
access_keys = Table(
    "access_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_uuid", UUID, ForeignKey("accounts.uuid", ondelete="CASCADE"), nullable=False),
    Column("secret", String(128), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("create_date", Float, nullable=False),
)
