"""ZStack tags of image packages: which system tags are accepted (pure) and the tag rows.

ZStack keeps two kinds of tag on any resource (header/tag: SystemTagVO, UserTagVO): *system*
tags, ``key::value`` strings that some module registered a pattern for and acts on, and *user*
tags, free text for people. An API message that creates a resource (APICreateMessage, such as
APIExportVmOvaPackageMsg) carries both lists; TagManagerImpl.intercept checks each system tag
before the API runs and creates both kinds on the new resource afterwards (createTags):

- duplicates are removed (``removeDuplicateFromList``);
- ``ephemeral::...`` tags are never checked nor stored (TagConstant.isEphemeralTag);
- a tag no registered pattern matches is refused: SYS.1007 ``no system tag matches <tag>``;
- a pattern's own validator may refuse the value, e.g. the boot-mode validator of VmInstance /
  Image: ``[<mode>] specified in system tag [<tag>] is not a valid boot mode`` and ``only one
  bootMode system tag is allowed, but <n> got``.

The patterns known here are the VM system tags ovfkit acts on when it exports
(:mod:`ovfkit.zstack.adapter`): ``bootMode::{bootMode}`` and ``bootOrder::{bootOrder}``. A tag
of another ZStack module is refused as a ZStack without that module refuses it.

Matching follows ZStack's TagUtils: the format and the tag are split on ``::`` (Java's
String.split, which drops trailing empty strings); the pieces must be as many, and every piece
that is not a ``{token}`` must be equal.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import InvalidArgumentError
from .inventory import format_zstack_time

__all__ = [
    "RESOURCE_TYPE",
    "SYSTEM",
    "TAG_QUERY_FIELDS",
    "USER",
    "PatternedSystemTag",
    "TagRecord",
    "check_system_tags",
    "check_user_tags",
]

# ResourceVO class name ZStack records as a tag's resourceType (ovf module: ImagePackageVO).
RESOURCE_TYPE = "ImagePackageVO"
# TagInventory.type of the two kinds (header/tag/TagType: System and Simple).
SYSTEM = "System"
USER = "Simple"

EPHEMERAL_PREFIX = "ephemeral::"

# Fields of TagInventory (and SystemTagInventory's ``inherent``) that GET /user-tags and
# /system-tags accept in ``q=`` conditions: JSON name -> column of the ``tags`` table.
TAG_QUERY_FIELDS: Mapping[str, str] = {
    "uuid": "uuid",
    "resourceUuid": "resource_uuid",
    "resourceType": "resource_type",
    "tag": "tag",
    "type": "type",
    "createDate": "create_date",
    "lastOpDate": "last_op_date",
}


def _java_split(text: str) -> list[str]:
    """``text.split("::")`` as Java does it: trailing empty strings removed."""
    parts = text.split("::")
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def _is_token(piece: str) -> bool:
    return len(piece) > 2 and piece.startswith("{") and piece.endswith("}")


@dataclass(frozen=True)
class PatternedSystemTag:
    """A system tag format such as ``bootMode::{bootMode}`` (ZStack's PatternedSystemTag)."""

    format: str

    def matches(self, tag: str) -> bool:
        fs, ts = _java_split(self.format), _java_split(tag)
        if len(fs) != len(ts):
            return False
        return all(_is_token(f) or f == t for f, t in zip(fs, ts, strict=True))

    def token(self, tag: str, name: str) -> str:
        """The value of ``{name}`` in a matching ``tag``."""
        for f, t in zip(_java_split(self.format), _java_split(tag), strict=True):
            if f == "{" + name + "}":
                return t
        raise KeyError(name)


BOOT_MODE = PatternedSystemTag("bootMode::{bootMode}")
BOOT_ORDER = PatternedSystemTag("bootOrder::{bootOrder}")
KNOWN_SYSTEM_TAGS = (BOOT_MODE, BOOT_ORDER)
# header/image/ImageBootMode; the validator compares names ignoring case.
BOOT_MODES = ("Legacy", "UEFI", "UEFI_WITH_CSM")


def check_system_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """The system tags to store for a new package: duplicates removed, ``ephemeral::`` tags
    left out; SYS.1007 with ZStack's text for a tag no known pattern matches or a bad value."""
    unique = list(dict.fromkeys(tags))
    boot_modes = 0
    for tag in unique:
        if tag.startswith(EPHEMERAL_PREFIX):
            continue
        if not any(p.matches(tag) for p in KNOWN_SYSTEM_TAGS):
            raise InvalidArgumentError(f"no system tag matches {tag}")
        if BOOT_MODE.matches(tag):
            boot_modes += 1
            if boot_modes > 1:
                raise InvalidArgumentError(
                    f"only one bootMode system tag is allowed, but {boot_modes} got"
                )
            mode = BOOT_MODE.token(tag, "bootMode")
            if not any(mode.lower() == m.lower() for m in BOOT_MODES):
                raise InvalidArgumentError(
                    f"[{mode}] specified in system tag [{tag}] is not a valid boot mode"
                )
    return tuple(t for t in unique if not t.startswith(EPHEMERAL_PREFIX))


def check_user_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """User tags are free text; duplicates are stored once."""
    return tuple(dict.fromkeys(tags))


def new_tag_uuid() -> str:
    return uuidlib.uuid4().hex


@dataclass(frozen=True)
class TagRecord:
    """A tag row: ZStack's UserTagInventory / SystemTagInventory."""

    uuid: str
    resource_uuid: str
    resource_type: str
    tag: str
    type: str
    create_date: datetime | None = None
    last_op_date: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "resourceUuid": self.resource_uuid,
            "resourceType": self.resource_type,
            "tag": self.tag,
            "type": self.type,
        }
        if self.type == SYSTEM:
            # Tags given in an API call are never inherent (createNonInherentSystemTag).
            out["inherent"] = False
        if self.create_date is not None:
            out["createDate"] = format_zstack_time(self.create_date)
        if self.last_op_date is not None:
            out["lastOpDate"] = format_zstack_time(self.last_op_date)
        return out


def tag_rows(
    resource_uuid: str, system_tags: Sequence[str], user_tags: Sequence[str]
) -> list[tuple[str, str, str, str, str]]:
    """(uuid, resource_uuid, resource_type, tag, type) rows for a new package's tags."""
    return [
        (new_tag_uuid(), resource_uuid, RESOURCE_TYPE, tag, kind)
        for kind, tags in ((SYSTEM, system_tags), (USER, user_tags))
        for tag in tags
    ]
