"""``ovfkit worker --database URL --broker URL --data-dir D [--concurrency N]``: run exports
for a cluster of API nodes on this host (needs ``pip install 'ovfkit[cluster]'``)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InvalidArgumentError
from .serve_cmd import add_data_dir_argument, default_data_dir

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "worker",
        help="run exports of a many-host service (Celery worker)",
        description=(
            "Declare what this host can reach (the storageRoots and backupStorages of the data "
            "folder's config.json) in the shared database, then run the exports the API nodes "
            "queue for it. Stop with SIGTERM or Ctrl-C: running exports finish first."
        ),
    )
    parser.add_argument("--database", required=True, metavar="URL",
                        help="the shared database, postgresql://USER:PASSWORD@HOST/DB")
    parser.add_argument("--broker", required=True, metavar="URL",
                        help="the Redis broker, redis://HOST:6379/0")
    add_data_dir_argument(parser)
    parser.add_argument("--concurrency", type=int, default=2, metavar="N",
                        help="exports run at the same time (default 2)")
    parser.add_argument("--name", help="this worker's name (default HOSTNAME-PID)")
    parser.add_argument(
        "--lease", type=float, default=60.0, metavar="SECONDS",
        help="a silent worker's jobs are taken over after this long (default 60)",
    )
    parser.add_argument(
        "--log-level", default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="Celery's log level (default warning)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cluster.worker import ClusterTimings, run_worker

    if args.concurrency < 1:
        raise InvalidArgumentError("--concurrency must be at least 1")
    if args.lease <= 0:
        raise InvalidArgumentError("--lease must be positive")
    timings = ClusterTimings(lease=args.lease, visibility_timeout=max(30.0, 10 * args.lease))
    return run_worker(
        args.database, args.broker, args.data_dir or default_data_dir(),
        concurrency=args.concurrency, name=args.name, timings=timings,
        log_level=args.log_level.upper(),
    )
