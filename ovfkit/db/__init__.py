"""Records in SQL through SQLAlchemy 2: a SQLite file in the data folder (the embedded default,
no server) or PostgreSQL shared by many hosts (``--database postgresql://...``).

:func:`open_database` gives a :class:`Database` whose schema Alembic has brought to the newest
revision (``migrations/``); opening is cheap once the schema is current (one SELECT). Each
write runs in :meth:`Database.begin`, one transaction; on SQLite that is ``BEGIN IMMEDIATE`` (the
write lock up front, so two writers queue on ``busy_timeout`` instead of failing on a lock
upgrade), in WAL mode so readers never wait for a writer.

A database that cannot be reached, or fails mid-statement, is an
:class:`~ovfkit.errors.OvfkitIOError` (SYS.1016) naming the database, never a driver traceback.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._extras import needs_extra

with needs_extra("server", "the records of the ZStack API"):
    from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
    from sqlalchemy.engine import URL
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from ..errors import InvalidArgumentError, OvfkitIOError

__all__ = ["HEAD_REVISION", "Database", "open_database", "redacted", "sqlite_url"]

# The newest migration in migrations/versions (a test checks that it is Alembic's head).
HEAD_REVISION = "0005"

_MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key: start-ups of many nodes upgrade the schema one at a time.
_UPGRADE_LOCK = 0x6F76666B


def sqlite_url(path: str | Path) -> str:
    return str(URL.create("sqlite", database=str(path)))


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable database URL)"


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidArgumentError(
            f"invalid database URL {url!r}: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DB "
            "or sqlite:///PATH"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, the cluster extra
    elif backend not in ("postgresql", "sqlite"):
        raise InvalidArgumentError(
            f"database {redacted(url)}: only PostgreSQL and SQLite are supported"
        )
    return parsed


class Database:
    """An engine on one database, shared by the threads of a process."""

    def __init__(self, url: str) -> None:
        parsed = _parse(url)
        self.url = parsed.render_as_string(hide_password=False)
        self.name = parsed.render_as_string(hide_password=True)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        try:
            if self.is_sqlite:
                if parsed.database:
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                self.engine: Engine = create_engine(
                    parsed, connect_args={"timeout": 30.0, "check_same_thread": False}
                )
                event.listen(self.engine, "connect", _sqlite_connect)
                event.listen(self.engine, "begin", _sqlite_begin)
            else:
                self.engine = create_engine(
                    parsed, pool_pre_ping=True, pool_size=5, max_overflow=20,
                    connect_args={"connect_timeout": 10},
                )
        except (NoSuchModuleError, ModuleNotFoundError):
            raise InvalidArgumentError(
                f"database {self.name}: its driver is not installed "
                "(pip install 'ovfkit[cluster]' for PostgreSQL)"
            ) from None
        except OSError as exc:
            raise OvfkitIOError(
                f"cannot create the folder of {self.name}: {exc.strerror}"
            ) from None
        self._upgraded = False
        self._upgrade_lock = threading.Lock()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.errors(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (SQLite: no write lock taken)."""
        with self.errors(), self.engine.connect() as conn:
            yield conn.execution_options(ovfkit_read=True)

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Driver faults (server down, disk full, locked for too long) as SYS.1016."""
        try:
            yield
        except DBAPIError as exc:
            if isinstance(exc.orig, Exception) and _is_integrity(exc):
                raise
            raise OvfkitIOError(f"database {self.name}: {_first_line(exc.orig)}") from None

    def upgrade(self) -> None:
        """Bring the schema to :data:`HEAD_REVISION` with Alembic (nothing if it is there)."""
        with self._upgrade_lock:
            if self._upgraded:
                return
            if self.revision() != HEAD_REVISION:
                from alembic import command
                from alembic.config import Config

                cfg = Config()
                cfg.set_main_option("script_location", str(_MIGRATIONS))
                with self.begin() as conn:
                    if not self.is_sqlite:
                        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK})
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
            self._upgraded = True

    def revision(self) -> str | None:
        """The schema revision Alembic recorded, None for a database it never touched."""
        from sqlalchemy import inspect

        with self.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self.engine.dispose()


def _is_integrity(exc: DBAPIError) -> bool:
    from sqlalchemy.exc import IntegrityError

    return isinstance(exc, IntegrityError)


def _first_line(exc: BaseException | None) -> str:
    return (str(exc) or type(exc).__name__).strip().splitlines()[0] if exc else "failed"


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver's own transaction handling is turned off; _sqlite_begin starts each one.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    read = conn.get_execution_options().get("ovfkit_read")
    conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


def open_database(url: str, *, upgrade: bool = True) -> Database:
    """A :class:`Database` on ``url`` (``sqlite:///PATH`` or ``postgresql://...``), its schema
    brought up to date unless ``upgrade=False``. SYS.1007 for a bad URL or a missing driver,
    SYS.1016 if the database cannot be reached."""
    db = Database(url)
    if upgrade:
        try:
            db.upgrade()
        except SQLAlchemyError as exc:
            db.close()
            raise OvfkitIOError(f"database {db.name}: {_first_line(exc)}") from None
        except BaseException:
            db.close()
            raise
    return db
