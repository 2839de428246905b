"""``ovfkit inventory INPUT | --schema``: ovfkit's neutral VM JSON of any input ``export`` reads
(a ZStack inventory, an .ovf, the neutral JSON itself), or the JSON Schema of that format."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InvalidArgumentError
from ._input import add_input_arguments, add_zstack_arguments, load_vm

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "inventory",
        help="print a VM as ovfkit's neutral VM JSON, or that format's JSON Schema",
        description=(
            "Print the neutral VM JSON (format ovfkit.vm/1) of INPUT: a ZStack inventory, an "
            "OVF descriptor (disk and ISO paths set to the files beside it) or the neutral "
            "JSON itself. The output is an INPUT for export and descriptor; edit it to change "
            "the VM. --schema prints the JSON Schema (draft 2020-12) of the format."
        ),
    )
    add_input_arguments(parser, required=False)
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema instead")
    add_zstack_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model_json import vm_json_schema, vm_to_json

    if args.schema:
        if args.input is not None:
            raise InvalidArgumentError("--schema takes no INPUT")
        doc = vm_json_schema()
    else:
        if args.input is None:
            raise InvalidArgumentError("give an INPUT (or --schema)")
        doc = vm_to_json(load_vm(args.input, args.input_kind,
                                 system_tags=tuple(args.system_tag)).vm)
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
