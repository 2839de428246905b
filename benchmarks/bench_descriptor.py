"""Descriptor speed: ZStack inventory → model, model → OVF descriptor, descriptor → model.

Two VMs: the example inventory (2 disks, 2 NICs, a CD-ROM) and a large one built the same way
(60 disks over 4 SCSI controllers, 10 NICs on 5 networks). For each: inventories adapted per
second, descriptors built per second, descriptors parsed per second, schema validations per
second. Baseline, measured in the same run: lxml itself on the same document (``etree.tostring``
of the parsed tree for building, ``etree.fromstring`` for parsing), i.e. the floor any lxml-based
writer or reader pays; the ratio says what fraction of that floor's speed ovfkit reaches.

    .venv/bin/python -m benchmarks.bench_descriptor [--min-time 0.2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from lxml import etree

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import Report, time_call
from ovfkit.ovf import DescriptorOptions, build_descriptor, parse_descriptor, validate_descriptor
from ovfkit.zstack import vm_from_zstack

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fixtures" / "zstack" / "vm-inventory-example.json"


def large_inventory(disks: int = 60, nics: int = 10, networks: int = 5) -> dict[str, Any]:
    """The example VM grown to ``disks`` volumes and ``nics`` NICs."""
    doc = json.loads(EXAMPLE.read_text())
    vm = doc["inventories"][0]
    root, data = vm["allVolumes"][0], vm["allVolumes"][1]
    vm["allVolumes"] = [root]
    for i in range(1, disks):
        vol = copy.deepcopy(data)
        vol.update(
            uuid=f"{i:032x}",
            name=f"DATA-{i}-for-web-01",
            deviceId=i,
            installPath=f"/zstack_ps/dataVolumes/vol-{i:032x}/{i:032x}.qcow2",
            size=(i % 7 + 1) * (10 << 30),
        )
        vm["allVolumes"].append(vol)
    template = vm["vmNics"][0]
    vm["vmNics"] = []
    for i in range(nics):
        nic = copy.deepcopy(template)
        nic.update(
            uuid=f"{i:032x}",
            deviceId=i,
            mac=f"fa:16:3e:00:00:{i:02x}",
            l3NetworkUuid=f"{i % networks:032x}",
            driverType=("virtio", "e1000")[i % 2],
        )
        vm["vmNics"].append(nic)
    result: dict[str, Any] = doc
    return result


def bench(name: str, inventory: str, report: Report, *, repeat: int, min_time: float) -> None:
    options = DescriptorOptions()
    vm = vm_from_zstack(inventory)
    xml = build_descriptor(vm, options)
    tree = etree.fromstring(xml)

    def timed(label: str, fn: Any) -> float:
        return time_call(fn, repeat=repeat, min_time=min_time).per_second()

    adapt = timed("adapt", lambda: vm_from_zstack(inventory))
    build = timed("build", lambda: build_descriptor(vm, options))
    build_floor = timed("floor", lambda: etree.tostring(tree, xml_declaration=True))
    parse = timed("parse", lambda: parse_descriptor(xml))
    parse_floor = timed("parse floor", lambda: etree.fromstring(xml))
    validate = timed("validate", lambda: validate_descriptor(xml))

    report.info.setdefault("descriptor_bytes", {})[name] = len(xml)
    report.add(f"{name}: inventories adapted", adapt, "/s")
    report.add(f"{name}: descriptors built", build, "/s", f"{len(xml)} bytes")
    report.add(f"{name}: lxml tostring floor", build_floor, "/s")
    report.ratio(f"{name}: build vs floor", build, build_floor, "fraction of lxml's speed")
    report.add(f"{name}: descriptors parsed", parse, "/s", f"{len(xml) * parse / 1e6:.1f} MB/s")
    report.add(f"{name}: lxml fromstring floor", parse_floor, "/s")
    report.ratio(f"{name}: parse vs floor", parse, parse_floor, "fraction of lxml's speed")
    report.add(f"{name}: schema validations", validate, "/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (best)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed run")
    args = parser.parse_args(argv)
    report = Report("descriptor")
    report.info["vms"] = {
        "example": "fixtures/zstack/vm-inventory-example.json (2 disks, 2 NICs, 1 CD-ROM)",
        "large": "example grown to 60 disks (4 SCSI controllers) and 10 NICs on 5 networks",
    }
    for name, inventory in (
        ("example", EXAMPLE.read_text()),
        ("large", json.dumps(large_inventory())),
    ):
        bench(name, inventory, report, repeat=args.repeat, min_time=args.min_time)
    report.emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
