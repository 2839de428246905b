"""``ovfkit descriptor INPUT [-o OUT.ovf] [--ovf-version 1.0|2.0]``: the OVF descriptor of a VM
(neutral VM JSON, an .ovf or a ZStack inventory), printed or written atomically (a finished file
or none, never half)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._files import MAX_INVENTORY_BYTES, read_input, write_atomic
from ._input import add_input_arguments, add_zstack_arguments, load_vm
from ._texts import OVF_VERSION_HELP

# read_input and write_atomic live in ._files; other commands import them from here too.
__all__ = ["MAX_INVENTORY_BYTES", "read_input", "register", "run", "write_atomic"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "descriptor",
        help="print the OVF descriptor of a VM (neutral JSON, .ovf or ZStack inventory)",
        description=(
            "Build the OVF descriptor of a VM: ovfkit's neutral VM JSON (every disk's "
            "capacity given), an OVF descriptor, or a ZStack VmInstanceInventory (a "
            "QueryVmInstance reply or a bare inventory). Disk files are named but their sizes "
            "are left out: only a package knows them."
        ),
    )
    add_input_arguments(parser)
    parser.add_argument("-o", "--output", metavar="OUT.ovf", help="write here instead of stdout")
    parser.add_argument(
        "--ovf-version",
        choices=("1.0", "2.0"),
        default="1.0",
        help=OVF_VERSION_HELP,
    )
    add_zstack_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ovf import DescriptorOptions, build_descriptor

    vm = load_vm(args.input, args.input_kind, system_tags=tuple(args.system_tag)).vm
    xml = build_descriptor(vm, DescriptorOptions(ovf_version=args.ovf_version))
    if args.output:
        write_atomic(args.output, xml)
    else:
        sys.stdout.buffer.write(xml)
        sys.stdout.buffer.flush()
    return 0
