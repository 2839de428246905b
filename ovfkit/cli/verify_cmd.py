"""``ovfkit verify PACKAGE``: check an .ova (or an .ovf with its files) and list every problem.
Exit status 0 when the package is valid, 1 when it is not (problems found), 2 when it could not
be checked (the package or one of its files missing or unreadable, a tool missing) and no
problem was found in what could be."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="check a package: layout, manifest, certificate, disks",
        description=(
            "Verify an OVA package: tar layout and member order, descriptor schema, manifest "
            "digests, certificate signature, File sizes, VMDK structure and data."
        ),
    )
    parser.add_argument("package", metavar="PACKAGE", help=".ova file, or .ovf beside its files")
    parser.add_argument("--no-data", action="store_true",
                        help="check VMDK structure only, without inflating every grain")
    parser.add_argument("--strict-schema", action="store_true",
                        help="also validate with the spec-strict xmlschema package")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes that inflate the grains of each large disk"
                             " (default: one per core)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the checks passed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ova import verify_package

    report = verify_package(
        args.package,
        check_data=not args.no_data,
        strict_schema=args.strict_schema,
        workers=args.workers,
    )
    if args.json:
        json.dump(
            {"path": report.path, "ok": report.ok, "problems": list(report.problems),
             "errors": list(report.errors), "checked": list(report.checked)},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        if args.verbose:
            for line in report.checked:
                print(f"ok: {line}")
        for line in report.problems:
            print(f"problem: {line}")
        for line in report.errors:
            print(f"error: {line}")
        if report.problems:
            verdict = f"INVALID ({len(report.problems)} problems)"
        elif report.errors:
            verdict = f"NOT CHECKED ({len(report.errors)} checks could not run)"
        else:
            verdict = "valid"
        print(f"{report.path}: {verdict}")
    return 1 if report.problems else 2 if report.errors else 0
