"""The hostile cases, built from the repository's fixtures (nothing downloaded, nothing large
kept in git): each is bytes plus what every reader must answer.

``expect`` maps an entry point (``parse``, ``open``, ``verify``, ``extract``, ``inspect``,
``verify-cli``, ``zstack``, ``vm-add``, ``export``, ``descriptor``) to ``"CODE"`` (that ZStack
error code), ``"problem:TEXT"`` (verify lists a problem containing TEXT, exit status 1) or
``"ok"``.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VMWARE_OVF = REPO / "fixtures" / "ovf" / "vmware-ovftool.ovf"
INVENTORY = REPO / "fixtures" / "zstack" / "vm-inventory-example.json"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # descriptor | package | inventory
    data: bytes
    expect: dict[str, str] = field(default_factory=dict)


def vmware(old: bytes, new: bytes) -> bytes:
    """The VMware-shaped fixture with one substitution (which must apply)."""
    data = VMWARE_OVF.read_bytes()
    if old not in data:
        raise ValueError(f"{old!r} is not in {VMWARE_OVF.name}")
    return data.replace(old, new, 1)


_NIC_ITEM = (
    b"<Item><rasd:Connection>VM Network</rasd:Connection><rasd:InstanceID>%d</rasd:InstanceID>"
    b"<rasd:ResourceType>10</rasd:ResourceType></Item>"
)


def _nics(n: int) -> bytes:
    return vmware(b"<Item>", b"".join(_NIC_ITEM % (1000 + i) for i in range(n)) + b"<Item>")


_CONTROLLER_ITEM = (
    b"<Item><rasd:InstanceID>%d</rasd:InstanceID><rasd:ResourceSubType>lsilogic"
    b"</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>"
)


def _disks(n: int) -> bytes:
    """``n`` disks in the DiskSection and as many disk Items on the fixture's SCSI controller
    (InstanceID 3): the hardware cap must stop them, whatever their addresses."""
    section = b"".join(b'<Disk ovf:capacity="1" ovf:diskId="x%d"/>' % i for i in range(n))
    items = b"".join(
        b"<Item><rasd:AddressOnParent>%d</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/x%d"
        b"</rasd:HostResource><rasd:InstanceID>%d</rasd:InstanceID><rasd:Parent>3</rasd:Parent>"
        b"<rasd:ResourceType>17</rasd:ResourceType></Item>" % (i % 16, i, 2000 + i)
        for i in range(n))
    data = vmware(b"</DiskSection>", section + b"</DiskSection>")
    return data.replace(b"<Item>", items + b"<Item>", 1)


#: (id, descriptor bytes, message the OVF.1002 error must contain): numbers out of range
#: (issue 12 #2) and counts over the caps (#12). tests/test_ovf_reader.py runs them too.
NUMBER_CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("memory-10e400", lambda: vmware(b"<rasd:VirtualQuantity>2048<",
                                     b"<rasd:VirtualQuantity>1" + b"0" * 400 + b"<"),
     "out of range"),
    ("capacity-4000-nines", lambda: vmware(b'ovf:capacity="16"',
                                           b'ovf:capacity="' + b"9" * 4000 + b'"'),
     "out of range"),
    ("capacity-2e80-units", lambda: vmware(
        b'ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30"',
        b'ovf:capacity="' + b"9" * 30 + b'" ovf:capacityAllocationUnits="byte * 2^80"'),
     "out of range"),
    ("units-2e80", lambda: vmware(b'ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30"',
                                  b'ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^80"'),
     "out of range"),
    ("units-long-exponent", lambda: vmware(b"byte * 2^30", b"byte * 2^" + b"9" * 5000),
     "allocation units"),
    ("vcpus-1025", lambda: vmware(b"<rasd:VirtualQuantity>4<", b"<rasd:VirtualQuantity>1025<"),
     "out of range"),
    ("underscore", lambda: vmware(b"<rasd:VirtualQuantity>4<", b"<rasd:VirtualQuantity>1_000<"),
     "not an integer"),
    ("arabic-digit", lambda: vmware(b"<rasd:VirtualQuantity>4<",
                                    "<rasd:VirtualQuantity>\u0663<".encode()),
     "not an integer"),
    ("negative", lambda: vmware(b"<rasd:VirtualQuantity>2048<", b"<rasd:VirtualQuantity>-1<"),
     "negative"),
    ("zero-memory", lambda: vmware(b"<rasd:VirtualQuantity>2048<", b"<rasd:VirtualQuantity>0<"),
     "out of range"),
    ("file-size-25-digits", lambda: vmware(b'ovf:size="68608"', b'ovf:size="' + b"1" * 25 + b'"'),
     "out of range"),
    ("os-id-uint16", lambda: vmware(b'<OperatingSystemSection ovf:id="36"',
                                    b'<OperatingSystemSection ovf:id="70000"'),
     "out of range"),
    ("unit-4400-digits", lambda: vmware(b"<rasd:AddressOnParent>1<",
                                        b"<rasd:AddressOnParent>" + b"7" * 4400 + b"<"),
     "out of range"),
    ("name-256", lambda: vmware(b"<Name>photon-web</Name>", b"<Name>" + b"n" * 256 + b"</Name>"),
     "at most 255"),
    ("nics-65", lambda: _nics(65), "more than 64 NICs"),
    ("disks-257", lambda: _disks(257), "more than 256 disks"),
    ("disk-section-637", lambda: vmware(b"</DiskSection>", b"".join(
        b'<Disk ovf:capacity="1" ovf:diskId="x%d"/>' % i for i in range(637)) + b"</DiskSection>"),
     "more than 636 disks"),
    ("files-10001", lambda: vmware(b"</References>", b"".join(
        b'<File ovf:href="f%d" ovf:id="x%d"/>' % (i, i) for i in range(10_001)) + b"</References>"),
     "more than 10000 Files"),
    ("controllers-15", lambda: vmware(b"<Item>", b"".join(
        _CONTROLLER_ITEM % (1000 + i) for i in range(15)) + b"<Item>"),
     "more than 14 storage controllers"),
    ("networks-65", lambda: vmware(b"</NetworkSection>", b"".join(
        b'<Network ovf:name="n%d"/>' % i for i in range(65)) + b"</NetworkSection>"),
     "more than 64 networks"),
]

_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i else b"&lol;" * 10)
               for i in range(9))
    + b"]><Envelope>&lol8;</Envelope>"
)


def descriptors() -> Iterator[Case]:
    """Descriptor cases: what parse_descriptor and every package reader must refuse. Built one
    at a time (some are megabytes), so that the runner's peak RSS is the readers', not the
    corpus's."""
    deep = b"<a>" * 100_000 + b"</a>" * 100_000
    makers: list[tuple[str, Callable[[], bytes], dict[str, str]]] = [
        *((f"ovf-{i}", make, {"parse": "OVF.1002"}) for i, make, _ in NUMBER_CASES),
        ("ovf-nics-60000", lambda: _nics(60_000), {"parse": "OVF.1002"}),
        ("ovf-billion-laughs", lambda: _LAUGHS, {"parse": "OVF.1002"}),
        ("ovf-deep-nesting", lambda: vmware(b"</Envelope>", deep + b"</Envelope>"),
         {"parse": "OVF.1001"}),
        ("ovf-13-mib",
         lambda: vmware(b"</Envelope>", b"<!--" + b" " * (13 << 20) + b"--></Envelope>"),
         {"parse": "OVF.1002", "open": "SYS.1006"}),  # the package reader's own cap
        ("ovf-not-xml", lambda: b"\xff\xfe<Envelope", {"parse": "OVF.1001"}),
        # 12 MB of elements, under the size cap: the element cap bounds the parse's memory.
        ("ovf-3m-elements", lambda: vmware(b"</Envelope>", b"<x/>" * 3_000_000 + b"</Envelope>"),
         {"parse": "OVF.1002"}),
    ]
    for name, make, expect in makers:  # every package reader and command answers the same
        code = expect.setdefault("open", expect["parse"])
        expect.update({"extract": code, "inspect": code,
                       "verify": "problem:cannot open", "verify-cli": "problem"})
        yield Case(name, "descriptor", make(), expect)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def packages(good: bytes) -> Iterator[Case]:
    """Package cases: every descriptor case packed alone, and hostile variants of ``good`` (a
    valid OVA of one small disk, with a manifest)."""
    for c in descriptors():
        if len(c.data) < 12 << 20:
            yield Case(f"ova-{c.id.removeprefix('ovf-')}", "package",
                       _tar([(_file("vm.ovf"), c.data)]), dict(c.expect))
    with tarfile.open(fileobj=io.BytesIO(good)) as t:
        members = [(m, t.extractfile(m).read()) for m in t]  # type: ignore[union-attr]
    names = [m.name for m, _ in members]
    mf = names.index(next(n for n in names if n.endswith(".mf")))
    refuse = {"open": "SYS.1006", "extract": "SYS.1006", "inspect": "SYS.1006",
              "verify": "problem:cannot open", "verify-cli": "problem"}

    def problem(text: str) -> dict[str, str]:
        return {"open": "ok", "inspect": "ok", "verify": f"problem:{text}",
                "verify-cli": "problem"}

    odd_cert = _file(names[mf].replace(".mf", ".cert"))
    dir_disk = _special(names[-1] + ".d", tarfile.DIRTYPE)
    big_mf = (members[mf][0], b"x" * ((1 << 20) + 1))
    many = [(_file(f"f{i:05d}"), b"") for i in range(10_001)]
    with tarfile.open(fileobj=io.BytesIO(good)) as t:
        last = t.getmembers()[-1]
    cut = good[: last.offset_data + last.size // 2]  # the disk claims bytes the file lacks
    yield from [
        Case("ova-symlink", "package",
             _tar([*members, (_special("x.vmdk", tarfile.SYMTYPE, "/etc/shadow"), b"")]),
             refuse),
        Case("ova-hardlink", "package",
             _tar([*members, (_special("x.vmdk", tarfile.LNKTYPE, "/etc/shadow"), b"")]), refuse),
        Case("ova-traversal", "package", _tar([*members, (_file("../../escape"), b"x")]), refuse),
        Case("ova-absolute", "package", _tar([*members, (_file("/etc/cron.d/x"), b"x")]), refuse),
        Case("ova-past-end", "package", cut, refuse),
        Case("ova-10001-members", "package", _tar([*members, *many]), refuse),
        Case("ova-duplicate", "package", _tar([*members, members[-1]]), refuse),
        Case("ova-member-under-member", "package",
             _tar([*members, (_file("a"), b"1"), (_file("a/b"), b"2")]),
             {**problem("not listed in References"), "extract": "SYS.1006"}),
        Case("ova-dir-like-disk", "package", _tar([*members, (dir_disk, b"")]),
             {**problem("directory named like a package file"), "extract": "ok"}),
        Case("ova-oversized-mf", "package",
             _tar([*members[:mf], big_mf, *members[mf + 1:]]),
             {**problem("more than the 1048576 bytes a manifest may have"), "extract": "ok"}),
        Case("ova-2000-chunks", "package",
             _tar([members[0], *((_file(f"{names[-1]}.{i:09d}"), b"") for i in range(2000))]),
             {**problem("is chunked but declares no ovf:chunkSize"), "extract": "ok"}),
        Case("ova-odd-hex-cert", "package",
             _tar([*members[: mf + 1], (odd_cert, b"SHA256(x.mf)= abc\n"), *members[mf + 1:]]),
             {**problem("odd number of hex digits"), "extract": "ok"}),
    ]


def _example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(INVENTORY.read_text())
    return doc


def _inventory(change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = _example()
    change(doc["inventories"][0])
    return json.dumps(doc).encode()


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(vm: dict[str, Any]) -> None:
        vm[key] = value
    return change


def _nic(i: int) -> dict[str, Any]:
    return {"l3NetworkUuid": f"{i:032x}", "deviceId": i, "driverType": "virtio",
            "mac": f"fa:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01"}


def inventories() -> Iterator[Case]:
    """Inventory cases: vm_from_zstack and the commands that read an inventory refuse each with
    SYS.1007."""
    raw: list[tuple[str, bytes]] = [
        ("nested-arrays-200000", b"[" * 200_000),
        ("nested-objects-200000", b'{"a":' * 200_000),
        ("nics-60000", _inventory(_set("vmNics", [_nic(i) for i in range(60_000)]))),
        ("nics-65", _inventory(_set("vmNics", [_nic(i) for i in range(65)]))),
        ("cpu-5000-digits", _inventory(_set("cpuNum", 0)).replace(
            b'"cpuNum": 0', b'"cpuNum": ' + b"9" * 5000)),
        ("cpu-1e30", _inventory(_set("cpuNum", 10**30))),
        ("cpu-1025", _inventory(_set("cpuNum", 1025))),
        ("memory-2e62", _inventory(_set("memorySize", 1 << 62))),
        ("memory-1e400-float", _inventory(_set("memorySize", 0)).replace(
            b'"memorySize": 0', b'"memorySize": 1e400')),
        ("nan", _inventory(_set("cpuNum", 0)).replace(b'"cpuNum": 0', b'"cpuNum": NaN')),
        ("description-2049", _inventory(_set("description", "d" * 2049))),
        # (A NUL or lone surrogate in the VM's name becomes U+FFFD: names are kept.)
        ("path-nul", _inventory(lambda vm: vm["allVolumes"][0].update(installPath="/a\x00b"))),
        ("lone-surrogate", _inventory(_set("description", "\ud800"))),
        ("utf16", json.dumps(_example()).encode("utf-16")),
        ("huge-whitespace", b" " * ((4 << 20) + 1)),
    ]
    expect = {"zstack": "SYS.1007", "vm-add": "SYS.1007", "export": "SYS.1007",
              "descriptor": "SYS.1007"}
    for name, data in raw:
        yield Case(f"inv-{name}", "inventory", data, dict(expect))
