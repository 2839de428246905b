"""Real Redis and PostgreSQL servers for tests, each in its own temp folder on 127.0.0.1.

    with running_redis(tmp) as redis:      # redis.url: redis://127.0.0.1:PORT/0
        ...
        redis.restart()                    # same port and data (append-only file kept)
    with running_postgres(tmp) as pg:      # initdb as the postgres user when run as root
        url = pg.create_database("t1")     # postgresql+psycopg://ovfkit@127.0.0.1:PORT/t1

Both are child processes of the test run (never daemons), waited for with bounded loops and
stopped (SIGTERM, then SIGKILL) on the way out whatever happens. PostgreSQL runs with
``fsync=off``: a crashed test machine loses nothing worth keeping, and restarts by the tests
are clean shutdowns, which write everything anyway.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_available() -> bool:
    return os.access(REDIS_SERVER, os.X_OK)


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder (``/usr/lib/postgresql/N/bin``)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    return Path(found[-1]).parent if found else None


def _wait(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str,
          timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- Redis ------------------------------------------------------------------------------------


def _redis_ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


@dataclass
class RedisServer:
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.folder / "redis.log"

    def start(self) -> None:
        # appendfsync always: a queued export survives a restart of the broker (the tests
        # restart it; a site would choose everysec and accept a second of loss).
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
                 "--dir", str(self.folder), "--save", "", "--appendonly", "yes",
                 "--appendfsync", "always", "--daemonize", "no", "--protected-mode", "yes"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        _wait(lambda: _redis_ping(self.port), self.process, self.log, "redis-server")

    def stop(self) -> None:
        _stop(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_redis(base: Path) -> Iterator[RedisServer]:
    folder = base / f"redis-{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir(parents=True)
    server = RedisServer(folder, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


# -- PostgreSQL -------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    bin: Path
    folder: Path
    port: int
    user: str = "ovfkit"
    process: subprocess.Popen[bytes] | None = None
    _run_as: dict[str, Any] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url().replace("+psycopg", ""), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.folder / "data"),
                 "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.folder),
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, **self._run_as,
            )
        _wait(self._ready, self.process, self.log, "postgres")

    def stop(self) -> None:
        _stop(self.process)  # SIGTERM: PostgreSQL's smart shutdown

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """initdb in a fresh temp folder (as the ``postgres`` user when run as root: PostgreSQL
    refuses to run as root), trust authentication on 127.0.0.1 only."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/bootstrap test installs it)")
    folder = Path(tempfile.mkdtemp(prefix="ovfkit-pg-"))
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    server = PostgresServer(bin_dir, folder, free_port(), _run_as=run_as)
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", server.user,
             "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"],
            check=True, capture_output=True, timeout=120, cwd=folder, **run_as,
        )
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
