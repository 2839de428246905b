"""``ovfkit export INPUT -o OUT.ova [...]``: write a VM's OVA package and print what was written
as JSON on stdout. INPUT is ovfkit's neutral VM JSON, an OVF descriptor beside its files (a
re-pack) or a ZStack VM inventory, told apart by content (:mod:`._input`). For a ZStack
inventory the JSON is the ImagePackageInventory of the result (what ExportVmOvaPackage answers);
otherwise the package's path, size, digests and files. With ``-o -`` the package streams to
stdout (write_ova's streaming layout: chunked disks, manifest last) and the JSON goes to stderr.

A progress bar goes to stderr when stderr is a terminal; nothing but the JSON is printed when it
is not. Ctrl-C, SIGTERM and SIGHUP remove the partial package (write_ova never leaves one at the
target path); the temporary file of an export killed outright is removed by the next export to
the same folder.

The command trusts its input: it reads whatever volume and ISO paths it names, as far as
the user running it may. ``--storage-root`` confines it as the service always is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import InvalidArgumentError
from ..progress import Progress
from ._input import add_input_arguments, add_zstack_arguments, load_vm
from ._texts import OVF_VERSION_HELP

if TYPE_CHECKING:
    from ..ova import PackageResult

__all__ = ["ProgressBar", "inventory_json", "package_json", "register", "run"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="write the OVA package of a VM (neutral JSON, .ovf or ZStack inventory)",
        description=(
            "Export a VM as an OVA package and print what was written as JSON. The input is "
            "ovfkit's neutral VM JSON (schema: ovfkit inventory --schema), an OVF descriptor "
            "whose files sit beside it (re-packed, its ISO images included), or a ZStack "
            "VmInstanceInventory (then the JSON is its ImagePackageInventory); disk and ISO "
            "paths are local files."
        ),
    )
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="OUT.ova",
                        help="package path, or - to stream the package to stdout (chunked "
                        "disks, manifest last; JSON then goes to stderr)")
    parser.add_argument("--ovf-version", choices=("1.0", "2.0"), default="1.0",
                        help=OVF_VERSION_HELP)
    parser.add_argument("--manifest", choices=("sha1", "sha256", "sha512", "none"),
                        default="sha256", help="manifest digest (default sha256)")
    parser.add_argument("--engine", choices=("native", "qemu-img"), default="native",
                        help="VMDK engine (default native)")
    parser.add_argument("--threads", type=_positive, metavar="N",
                        help="worker processes (native) or qemu-img processes at once "
                        "(qemu-img engine); default one per core")
    parser.add_argument("--layout", choices=("default", "one-pass"), default="default",
                        help="member order of a package path: default (sizes in the descriptor, "
                        "manifest after it, the package's MD5 in a second pass) or one-pass "
                        "(descriptor without the disks' sizes, manifest last, hashed while it "
                        "is written); -o - is always one pass, chunked")
    parser.add_argument("--sign", metavar="KEY", help="RSA private key (PEM) signing the manifest")
    parser.add_argument("--cert", metavar="CERT", help="X.509 certificate (PEM) of --sign's key")
    parser.add_argument("--include-iso", action="store_true",
                        help="pack the ISO images of the CD-ROM drives (default: drives empty)")
    parser.add_argument("--ovf-env", metavar="PROPS.json",
                        help="add an OVF environment ISO with these property values (JSON object)")
    parser.add_argument("--force-shared", action="store_true",
                        help="read disks a running VM holds locked (crash-consistent at best)")
    parser.add_argument("--storage-root", action="append", default=[], metavar="PATH",
                        help="read disks, their backing files and ISOs only under PATH "
                        "(repeatable; default: any file this user can read, as INPUT says). "
                        "The service always confines to its storage roots.")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr (auto: only on a terminal)")
    zstack = add_zstack_arguments(parser)
    zstack.add_argument("--name", help="package name (default exported-vm-<vm name>)")
    zstack.add_argument("--description", help="package description")
    zstack.add_argument("--resource-uuid", help="package uuid (default: a new one)")
    zstack.add_argument("--backup-storage-uuid", help="backup storage uuid for the inventory")
    parser.set_defaults(func=run)


class ProgressBar:
    """One status line on a terminal, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = 0.0
        self.stage = ""
        self.started = time.monotonic()

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.stage == self.stage and now - self.last < 0.1 and p.done != p.total:
            return
        if p.stage != self.stage:
            self.stage, self.started = p.stage, now
        self.last = now
        rate = p.done / max(now - self.started, 1e-3) / 2**20
        if p.total:
            frac = min(p.done / p.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"{p.stage[:40]:<40} [{bar:<30}] {frac:6.1%} {rate:8.1f} MiB/s"
        else:
            text = f"{p.stage[:40]:<40} {p.done / 2**20:10.1f} MiB"
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def inventory_json(
    *,
    uuid: str,
    name: str,
    description: str,
    vm_uuid: str,
    backup_storage_uuid: str | None,
    path: str | None,
    md5: str,
    size: int,
    created: datetime,
    finished: datetime,
) -> dict[str, Any]:
    """ZStack's ImagePackageInventory of an exported package (null fields left out)."""
    from ..zstack.inventory import format_zstack_time

    out: dict[str, Any] = {
        "uuid": uuid,
        "name": name,
        "description": description,
        "vmUuid": vm_uuid,
        "backupStorageUuid": backup_storage_uuid,
        "state": "Exported",
        "exportUrl": Path(os.path.abspath(path)).as_uri() if path is not None else None,
        "md5Sum": md5,
        "format": "OVA",
        "size": int(size),
        "createDate": format_zstack_time(created),
        "lastOpDate": format_zstack_time(finished),
    }
    return {k: v for k, v in out.items() if v is not None}


def _read_json(path: str, what: str) -> Any:
    from ._files import read_input

    try:
        return json.loads(read_input(path, what=what))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{what} {path!r} is not JSON: {exc}") from None
    except RecursionError:  # 200,000 nested "[" (issue 12 #5)
        raise InvalidArgumentError(f"{what} {path!r} nests JSON too deeply") from None


def _env_values(path: str) -> dict[str, str]:
    doc = _read_json(path, "--ovf-env file")
    if not isinstance(doc, dict):
        raise InvalidArgumentError("--ovf-env must be a JSON object of property key -> value")
    out: dict[str, str] = {}
    for key, value in doc.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        else:
            raise InvalidArgumentError(f"--ovf-env property {key!r} must be a string or number")
    return out


def _signer(key: str | None, cert: str | None) -> Any:
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        raise InvalidArgumentError("--sign KEY and --cert CERT go together")
    from ..ova.signing import load_signer
    from ._files import read_input

    return load_signer(read_input(key, what="--sign key"), read_input(cert, what="--cert file"))


def package_json(path: str | None, result: PackageResult) -> dict[str, Any]:
    """What a neutral (non-ZStack) export prints: the package and each of its files."""
    return {
        "path": os.path.abspath(path) if path is not None else None,
        "size": result.size,
        "md5": result.md5,
        "xxh128": result.xxh128,
        "files": [
            {"name": f.name, "size": f.size, "digests": dict(f.digests)} for f in result.files
        ],
    }


def run(args: argparse.Namespace) -> int:
    from ..ova import OvaOptions, write_ova
    from ..zstack.inventory import is_zstack_uuid, new_zstack_uuid

    created = datetime.now(UTC)
    loaded = load_vm(args.input, args.input_kind, system_tags=tuple(args.system_tag))
    vm = loaded.vm
    zstack_only = {"--name": args.name, "--description": args.description,
                   "--resource-uuid": args.resource_uuid,
                   "--backup-storage-uuid": args.backup_storage_uuid}
    if loaded.zstack is None:
        given = [flag for flag, value in zstack_only.items() if value is not None]
        if given:
            raise InvalidArgumentError(f"{given[0]} applies to a ZStack inventory only")
    if args.storage_root:
        # The service's confinement (ovfkit.zstack.catalog): realpath of every volume and ISO
        # path, then every file qemu would open for a disk (backing chain, data file).
        from ..zstack.catalog import confine_images, confine_paths

        roots = [os.path.realpath(r) for r in args.storage_root]
        vm = confine_paths(vm, roots)
        confine_images(vm, roots)
    uuid = args.resource_uuid or new_zstack_uuid()
    for field, value in (("--resource-uuid", uuid), ("--backup-storage-uuid",
                                                    args.backup_storage_uuid)):
        if value is not None and not is_zstack_uuid(value):
            raise InvalidArgumentError(
                f"{field} {value!r} is not a ZStack uuid (32 lower-case hex digits, version 1-5)"
            )
    options = OvaOptions(
        ovf_version=args.ovf_version,
        manifest=args.manifest,
        engine=args.engine,
        threads=args.threads,
        signer=_signer(args.sign, args.cert),
        include_iso=args.include_iso or loaded.kind == "ovf",  # a re-pack keeps its ISOs
        ovf_env=_env_values(args.ovf_env) if args.ovf_env else None,
        force_shared=args.force_shared,
        layout=args.layout,
    )
    to_stdout = args.output == "-"
    if to_stdout and sys.stdout.isatty():
        raise InvalidArgumentError("-o - writes a binary package to stdout: redirect it")
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    bar = ProgressBar(sys.stderr) if show else None
    try:
        result = write_ova(
            vm, sys.stdout.buffer if to_stdout else args.output, options, progress=bar
        )
    finally:
        if bar is not None:
            bar.close()
    path = None if to_stdout else str(args.output)
    if loaded.zstack is None:
        doc = package_json(path, result)
    else:
        vm_uuid = str(loaded.zstack["uuid"])
        doc = inventory_json(
            uuid=uuid,
            # ZStack's default, cut to ImagePackageVO.name's 255 characters as the API does.
            name=args.name or f"exported-vm-{vm.name}"[:255],
            description=args.description or f"source vm uuid: {vm_uuid}",
            vm_uuid=vm_uuid,
            backup_storage_uuid=args.backup_storage_uuid,
            path=path,
            md5=result.md5,
            size=result.size,
            created=created,
            finished=datetime.now(UTC),
        )
    out = sys.stderr if to_stdout else sys.stdout
    json.dump(doc, out, indent=2)
    out.write("\n")
    return 0
