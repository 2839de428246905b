"""Property tests: model -> descriptor -> model, for OVF 1.0 and 2.0, with schema validation.

The round trip is ``parse_descriptor(build_descriptor(vm, o, layout)) == descriptor_view(vm, o,
layout)``; descriptor_view's docstring lists what a descriptor carries and what it renames.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ovf_helpers import assert_rasd_order, assert_schema_valid
from strategies import virtual_machines

from ovfkit.model import Disk, Firmware, VirtualMachine
from ovfkit.ovf import (
    DescriptorOptions,
    build_descriptor,
    descriptor_view,
    parse_descriptor,
    parse_package_descriptor,
    plan_layout,
    validate_descriptor,
)

options = st.builds(
    DescriptorOptions,
    ovf_version=st.sampled_from(["1.0", "2.0"]),
    include_iso=st.booleans(),
    ovf_env=st.booleans(),
)
slow = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@slow
@given(vm=virtual_machines(), opts=options, sized=st.booleans())
def test_round_trip_and_schema_valid(
    vm: VirtualMachine, opts: DescriptorOptions, sized: bool
) -> None:
    layout = plan_layout(vm, opts)
    if sized:
        layout = layout.with_sizes(
            {f.id: 512 * (i + 1) for i, f in enumerate(layout.files)},
            {d.id: d.capacity // 2 for d in vm.disks},
        )
    data = build_descriptor(vm, opts, layout)
    assert_schema_valid(data)  # lxml and strict xmlschema, from ../shared/schemas
    validate_descriptor(data, strict=True)  # ovfkit's own validator agrees
    assert_rasd_order(data)
    parsed = parse_package_descriptor(data)
    assert parsed.vm == descriptor_view(vm, opts, layout)
    # the package facts come back too: files with sizes, disk -> file, populated sizes
    assert parsed.files == layout.files
    assert [(d.file, d.populated_size) for d in parsed.layout.disks] == [
        (d.file, d.populated_size) for d in layout.disks
    ]
    assert dict(parsed.capacities) == {f"vmdisk{n}": d.capacity for n, d in enumerate(vm.disks, 1)}
    assert parsed.transport == (("iso",) if opts.ovf_env else ())


@settings(max_examples=80, deadline=None)
@given(vm=virtual_machines(), opts=options)
def test_view_is_a_fixed_point(vm: VirtualMachine, opts: DescriptorOptions) -> None:
    """Writing what was read gives the same descriptor bytes: nothing drifts on a re-write."""
    plain = replace(opts, ovf_env=False)
    once = build_descriptor(vm, plain)
    again = parse_descriptor(once)
    assert build_descriptor(again, plain) == build_descriptor(descriptor_view(vm, plain), plain)
    assert parse_descriptor(build_descriptor(again, plain)) == again


@settings(max_examples=40, deadline=None)
@given(vm=virtual_machines(), opts=options)
def test_deterministic(vm: VirtualMachine, opts: DescriptorOptions) -> None:
    assert build_descriptor(vm, opts) == build_descriptor(vm, opts)


def test_deterministic_across_processes() -> None:
    """Same bytes whatever the hash seed (no set/dict-order dependence)."""
    code = (
        "import sys, hashlib\n"
        "from ovfkit.model import *\n"
        "from ovfkit.ovf import build_descriptor, DescriptorOptions\n"
        "vm = VirtualMachine('seed-vm', controllers=(Controller('a', ControllerType.SCSI),"
        " Controller('b', ControllerType.IDE)), disks=(Disk('x', 1 << 30, 'a', 0, boot_order=1),"
        " Disk('y', 1 << 20, 'a', 1)), cd_drives=(CdDrive('c', 'b', 0, '/i.iso', 2),),"
        " nics=(Nic('n', NicType.E1000, 'net a'), Nic('m', NicType.VMXNET3, 'net b')),"
        " products=(Product('p', properties=(Property('k', value='v'),)),))\n"
        "for v in ('1.0', '2.0'):\n"
        "    o = DescriptorOptions(ovf_version=v, include_iso=True, ovf_env=True)\n"
        "    sys.stdout.write(hashlib.sha256(build_descriptor(vm, o)).hexdigest())\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("0", "1", "12345")
    }
    assert len(outs) == 1


def test_boot_order_only_in_ovf2() -> None:
    from ovfkit.model import Controller, ControllerType

    vm = VirtualMachine(
        "boot",
        controllers=(Controller("s", ControllerType.SCSI),),
        disks=(Disk("a", 1, "s", 0, boot_order=5), Disk("b", 1, "s", 1, boot_order=2)),
        firmware=Firmware.EFI,
    )
    v2 = parse_descriptor(build_descriptor(vm, DescriptorOptions(ovf_version="2.0")))
    assert [d.boot_order for d in v2.disks] == [2, 1]
    v1 = parse_descriptor(build_descriptor(vm))
    assert [d.boot_order for d in v1.disks] == [None, None]


def _vendor_config(ovf_ns: str, key: str, value: str) -> str:
    """A vmw:Config as a reader keeps it (canonical prefixes, see ovfkit.ovf._xml)."""
    from lxml import etree

    from ovfkit.ovf._xml import raw_from_element

    el = etree.Element("{http://www.vmware.com/schema/ovf}Config")
    el.set(f"{{{ovf_ns}}}required", "false")
    el.set("{http://www.vmware.com/schema/ovf}key", key)
    el.set("{http://www.vmware.com/schema/ovf}value", value)
    return raw_from_element(el, "x", ovf_ns).xml


@settings(max_examples=40, deadline=None)
@given(
    vm=virtual_machines(max_disks=6, max_nics=3),
    version=st.sampled_from(["1.0", "2.0"]),
    data=st.data(),
)
def test_round_trip_with_kept_vendor_parts(
    vm: VirtualMachine, version: str, data: st.DataObject
) -> None:
    """RawXml extras (hardware-level and per-Item vendor children) come back, in place."""
    from ovfkit.model import RawXml

    ovf_ns = f"http://schemas.dmtf.org/ovf/envelope/{version[0]}"
    targets = [
        "hardware",
        "item:cpu",
        "item:memory",
        *(f"item:controller:{c.id}" for c in vm.controllers),
        *(f"item:disk:{d.id}" for d in vm.disks),
        *(f"item:cd:{c.id}" for c in vm.cd_drives),
        *(f"item:nic:{n.id}" for n in vm.nics),
    ]
    picks = data.draw(st.lists(st.sampled_from(targets), max_size=6))
    extra = tuple(
        RawXml(where, _vendor_config(ovf_ns, f"key{i}", data.draw(st.sampled_from(["a", "b ✓"]))))
        for i, where in enumerate(picks)
    )
    vm = replace(vm, extra=extra)
    opts = DescriptorOptions(ovf_version=version)  # type: ignore[arg-type]
    out = build_descriptor(vm, opts)
    assert_schema_valid(out)
    assert parse_descriptor(out) == descriptor_view(vm, opts)
