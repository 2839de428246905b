"""``ovfkit inspect PACKAGE [--json]``: the VM a package describes and the files it holds,
read in place (nothing extracted)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "inspect",
        help="show the VM and files of a package",
        description="Show the virtual machine an OVA (or .ovf) package describes and its files.",
    )
    parser.add_argument("package", metavar="PACKAGE", help=".ova file, or .ovf beside its files")
    parser.add_argument("--json", action="store_true", help="print JSON (the model's fields)")
    parser.set_defaults(func=run)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def run(args: argparse.Namespace) -> int:
    from ..ova import open_package

    package = open_package(args.package)
    vm = package.vm
    parsed = package.parsed
    if args.json:
        doc = {
            "path": package.path,
            "kind": package.kind,
            "ovfVersion": parsed.ovf_version,
            "hardwareVersion": parsed.hardware_version,
            "vm": dataclasses.asdict(vm),
            "members": [
                {"name": m.name, "offset": m.offset, "size": m.size} for m in package.members
            ],
            "files": [dataclasses.asdict(f) for f in parsed.files],
        }
        json.dump(doc, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    out = sys.stdout
    out.write(f"package:   {package.path} ({package.kind}, OVF {parsed.ovf_version})\n")
    out.write(f"name:      {vm.name}\n")
    if vm.description:
        out.write(f"about:     {vm.description}\n")
    out.write(f"guest:     {vm.guest_os.description} ({vm.guest_os.vmware_id}), "
              f"{vm.architecture}\n")
    out.write(f"cpu:       {vm.vcpus} vCPU ({vm.cores_per_socket} per socket)\n")
    out.write(f"memory:    {vm.memory_mib} MiB\n")
    out.write(f"firmware:  {vm.firmware.value}{' secure boot' if vm.secure_boot else ''}\n")
    out.write(f"hardware:  {parsed.hardware_version}\n")
    files = {d.disk_id: d for d in parsed.layout.disks}
    for disk in vm.disks:
        f = files.get(disk.id)
        where = f" <- {f.file.href}" if f is not None else ""
        ctrl = vm.controller(disk.controller)
        out.write(f"disk:      {disk.id} {_mib(disk.capacity or 0)} on {ctrl.type.value}"
                  f"{ctrl.bus_number}:{disk.unit}{where}\n")
    for cd in vm.cd_drives:
        iso = parsed.layout.iso_file(cd.id)
        out.write(f"cdrom:     {cd.id}{' <- ' + iso.href if iso is not None else ' (empty)'}\n")
    for nic in vm.nics:
        out.write(f"nic:       {nic.id} {nic.adapter.value} on {nic.network}"
                  f"{' ' + nic.mac if nic.mac else ''}\n")
    out.write("members:\n")
    for m in package.members:
        out.write(f"  {m.size:>14}  {m.name}\n")
    return 0
