"""``ovfkit serve [--host 127.0.0.1] [--port 8080] [--data-dir DIR]``: the ZStack REST service
(ExportVmOvaPackage, image packages, ParseOvf, login, package downloads) on uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, NotFoundError, OvfkitIOError
from ..zstack.config import DATA_DIR_ENV, default_data_dir

if TYPE_CHECKING:
    from ..server.backend import Backend
    from ..server.runner import Limits
    from ..zstack.auth import AuthStore

__all__ = ["add_data_dir_argument", "default_data_dir", "public_url", "register", "run"]


def add_data_dir_argument(parser: argparse.ArgumentParser, *, database: str | None = None) -> None:
    """``--data-dir DIR``; with ``database`` (its help) also ``--database URL``, the shared
    database a many-host service keeps instead of the data folder's files."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help=f"the data folder (default: ${DATA_DIR_ENV} or ./ovfkit-data)",
    )
    if database is not None:
        parser.add_argument("--database", metavar="URL", help=database)


def public_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL clients reach the service at, for exportUrl: a wildcard bind address is replaced
    by this machine's name; IPv6 literals get brackets (RFC 3986 3.2.2)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve ZStack's ExportVmOvaPackage REST API",
        description=(
            "Serve POST /zstack/v1/ovf/ova-packages and the image-package, ParseOvf and login "
            "APIs of ZStack over HTTP, on the data folder's catalog and backup storages. "
            "Create an account first with 'ovfkit account add NAME'. The OpenAPI document is at "
            "/zstack/v1/openapi.json."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    add_data_dir_argument(parser)
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="base URL put in exportUrl of local packages (default: config.json's baseUrl, "
        "else http://HOST:PORT)",
    )
    parser.add_argument(
        "--export-workers",
        type=int,
        default=None,
        metavar="N",
        help="exports run at the same time (default 2-4 by CPU count)",
    )
    parser.add_argument(
        "--session-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="session lifetime (default 7200, ZStack's identity.session.timeout)",
    )
    parser.add_argument(
        "--download-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a local package's exportUrl (a capability URL: its token, no session, opens it) "
        "works this long after the export or the package's last UpdateImagePackage "
        "(default: no expiry)",
    )
    parser.add_argument(
        "--ssl-certfile",
        metavar="PEM",
        help="serve HTTPS with this certificate (chain); the session and the password digest "
        "then never cross the network in clear",
    )
    parser.add_argument("--ssl-keyfile", metavar="PEM", help="the certificate's private key")
    # Defaults: ovfkit.server.runner.Limits (not imported here: the CLI loads no server code
    # until `serve` runs).
    for flag, kind, meta, text in (
        ("--header-timeout", float, "SECONDS",
         "a request's headers must arrive within this time, else 408 (default 20)"),
        ("--body-timeout", float, "SECONDS",
         "and its body within this time after them (default 60)"),
        ("--max-connections", int, "N",
         "connections open at once (default 1024, lowered to fit the file-descriptor limit)"),
        ("--shutdown-grace", float, "SECONDS",
         "on SIGTERM, running exports may finish within this time; the rest are cancelled and "
         "rolled back (default 30)"),
    ):
        parser.add_argument(flag, type=kind, default=None, metavar=meta, help=text)
    parser.add_argument(
        "--database", metavar="URL",
        help="many hosts: the shared database (postgresql://USER:PASSWORD@HOST/DB) holding "
        "accounts, sessions, the VM catalog, packages and jobs; exports go to 'ovfkit worker' "
        "processes through --broker (needs pip install 'ovfkit[cluster]')",
    )
    parser.add_argument(
        "--broker", metavar="URL", help="many hosts: the Redis broker, redis://HOST:6379/0"
    )
    parser.add_argument(
        "--lease", type=float, default=60.0, metavar="SECONDS",
        help="many hosts: this node reaps every third of it, and re-publishes lost jobs after "
        "5 of it (default 60); each worker is taken for dead after its own --lease",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="uvicorn log level (default info)",
    )
    parser.set_defaults(func=run)


def _check_bind(host: str, port: int) -> None:
    """Bind ``host:port`` once, as uvicorn will (SO_REUSEADDR, IPv6 when the host has a colon),
    so a busy port or a foreign address is one ``ERROR`` line, not uvicorn's log and exit 3."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise OvfkitIOError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    from ..server import Backend, ServiceConfig, create_app
    from ..server.runner import serve
    from ..zstack.auth import DEFAULT_SESSION_TTL, AuthStore
    from ..zstack.config import load_config
    from ..zstack.context import open_context

    if not 0 < args.port < 65536:
        raise InvalidArgumentError(f"--port must be 1-65535, not {args.port}")
    if args.export_workers is not None and args.export_workers < 1:
        raise InvalidArgumentError("--export-workers must be at least 1")
    limits = _limits(args)
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise InvalidArgumentError("--ssl-certfile and --ssl-keyfile go together")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path is not None and not os.path.isfile(path):
            raise NotFoundError(f"TLS file {path!r} not found")
    _check_bind(args.host, args.port)
    scheme = "https" if args.ssl_certfile else "http"
    data_dir = args.data_dir or default_data_dir()
    base_url = (
        args.public_url
        or load_config(data_dir).base_url
        or public_url(args.host, args.port, scheme)
    )
    ttl = args.session_ttl if args.session_ttl is not None else DEFAULT_SESSION_TTL
    if args.download_ttl is not None and not args.download_ttl > 0:
        raise InvalidArgumentError("--download-ttl must be more than 0 s")
    config = ServiceConfig(download_ttl=args.download_ttl)
    if args.export_workers is not None:
        config = dataclasses.replace(config, export_workers=args.export_workers)
    if (args.database is None) != (args.broker is None):
        raise InvalidArgumentError(
            "--database and --broker go together (an API node of a many-host service)"
        )
    if args.database is None:
        auth = AuthStore(data_dir, session_ttl=ttl)
        backend = Backend(open_context(data_dir, base_url=base_url))
        where = f"--data-dir {data_dir}"
    else:
        from ..db import redacted

        auth, backend = _cluster_node(args, data_dir, base_url, ttl)
        where = f"--database {redacted(args.database)}"
    app = create_app(backend, auth, config)
    if not auth.list_accounts():
        print(f"ovfkit serve: no account yet; create one with 'ovfkit account add NAME {where}'",
              flush=True)
    from ..server.logs import configure_logging

    configure_logging(args.log_level)
    serve(
        app,
        host=args.host,
        port=args.port,
        limits=limits,
        export_workers=config.export_workers,
        drain=app.state.ovfkit.gate.drain,
        log_level=args.log_level,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return 0


def _cluster_node(
    args: argparse.Namespace, data_dir: str | os.PathLike[str], base_url: str, ttl: float
) -> tuple[AuthStore, Backend]:
    """An API node: accounts, sessions, catalog and packages in the shared database; exports
    queued for the workers. No start-up recovery here: the workers' leases cover their jobs."""
    from ..cluster.api_node import ClusterBackend
    from ..cluster.service import ClusterService
    from ..cluster.worker import ClusterTimings
    from ..db import open_database
    from ..db.catalog import DatabaseCatalog
    from ..zstack.auth import AuthStore
    from ..zstack.context import open_context

    if args.lease <= 0:
        raise InvalidArgumentError("--lease must be positive")
    db = open_database(args.database)
    try:
        auth = AuthStore(os.fspath(data_dir), session_ttl=ttl, database=db)
        catalog = DatabaseCatalog(db)
        context = open_context(
            data_dir, base_url=base_url, database=db, resolver=catalog, recover=False
        )
        service = ClusterService(
            db, args.broker, resolver=catalog, known_storages=context.config.backup_storages,
            timings=ClusterTimings(lease=args.lease),
        )
    except BaseException:
        db.close()
        raise
    return auth, ClusterBackend(context, service)


def _limits(args: argparse.Namespace) -> Limits:
    from ..server.runner import Limits

    given: dict[str, Any] = {}
    for name in ("header_timeout", "body_timeout", "shutdown_grace"):
        value = getattr(args, name)
        if value is not None:
            if not 0 < value <= 86400:
                flag = "--" + name.replace("_", "-")
                raise InvalidArgumentError(f"{flag} must be more than 0 and at most 86400 s")
            given[name] = value
    if args.max_connections is not None:
        if args.max_connections < 1:
            raise InvalidArgumentError("--max-connections must be at least 1")
        given["max_connections"] = args.max_connections
    return dataclasses.replace(Limits(), **given)
