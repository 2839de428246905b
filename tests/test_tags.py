"""Tags of image packages: the system-tag checks (ZStack's texts), the tag rows that go with a
package, ``__userTag__``/``__systemTag__`` and ``is null``/``not null`` conditions, groupBy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_records import BS, exporting

from ovfkit.errors import InvalidArgumentError
from ovfkit.zstack.inventory import Condition, parse_condition
from ovfkit.zstack.records import PackageRecords
from ovfkit.zstack.tags import (
    BOOT_MODE,
    RESOURCE_TYPE,
    SYSTEM,
    TAG_QUERY_FIELDS,
    USER,
    PatternedSystemTag,
    check_system_tags,
    check_user_tags,
)


def test_known_system_tags_pass_deduplicated_and_ephemeral_ones_are_not_stored() -> None:
    assert check_system_tags(
        ["bootMode::UEFI", "bootOrder::CdRom,HardDisk", "bootMode::UEFI", "ephemeral::x"]
    ) == ("bootMode::UEFI", "bootOrder::CdRom,HardDisk")
    # ImageBootMode names compare ignoring case.
    assert check_system_tags(["bootMode::legacy"]) == ("bootMode::legacy",)
    assert check_user_tags(["a", "b", "a"]) == ("a", "b")


@pytest.mark.parametrize(
    ("tags", "text"),
    [
        (["a::b"], "no system tag matches a::b"),
        (["<systemTags>"], "no system tag matches <systemTags>"),
        (["bootMode::"], "no system tag matches bootMode::"),
        (["bootMode::UEFI::x"], "no system tag matches bootMode::UEFI::x"),
        (["bootMode::Bogus"], "[Bogus] specified in system tag [bootMode::Bogus] is not a valid "
                              "boot mode"),
        (["bootMode::UEFI", "bootMode::Legacy"], "only one bootMode system tag is allowed, but "
                                                 "2 got"),
    ],
)
def test_unknown_and_malformed_system_tags_get_zstacks_error(tags: list[str], text: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_system_tags(tags)
    assert info.value.code == "SYS.1007" and info.value.details == text


def test_pattern_matching_splits_like_java() -> None:
    # Java's String.split drops trailing empty strings: "bootMode::" is one piece.
    assert BOOT_MODE.matches("bootMode::UEFI") and not BOOT_MODE.matches("bootMode::")
    assert BOOT_MODE.token("bootMode::UEFI", "bootMode") == "UEFI"
    assert PatternedSystemTag("a::{x}::b").matches("a::1::b")
    assert not PatternedSystemTag("a::{x}::b").matches("a::1::c")


@given(st.lists(st.text(max_size=30), max_size=5))
def test_check_system_tags_never_fails_otherwise(tags: list[str]) -> None:
    try:
        kept = check_system_tags(tags)
    except InvalidArgumentError:
        return
    assert set(kept) <= set(tags)


def _package(db: PackageRecords, name: str, system: tuple[str, ...], user: tuple[str, ...]) -> str:
    inv = exporting(name=name)
    db.create_exporting(inv, f"{inv.uuid}.ova", system_tags=system, user_tags=user)
    return inv.uuid


def test_tags_are_stored_queried_and_go_with_their_package(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    a = _package(db, "a", ("bootMode::UEFI",), ("blue", "red"))
    b = _package(db, "b", (), ("blue",))
    _package(db, "c", (), ())
    tags = db.tags_of(a)
    assert {(t.tag, t.type, t.resource_type) for t in tags} == {
        ("bootMode::UEFI", SYSTEM, RESOURCE_TYPE), ("blue", USER, RESOURCE_TYPE),
        ("red", USER, RESOURCE_TYPE),
    }
    system = [t.to_json() for t in db.query_tags(SYSTEM, [Condition("resourceUuid", "=", a)])]
    (system_tag,) = [t for t in tags if t.type == SYSTEM]
    assert system == [{
        "uuid": system_tag.uuid,
        "resourceUuid": a, "resourceType": "ImagePackageVO", "tag": "bootMode::UEFI",
        "type": "System", "inherent": False, "createDate": system[0]["createDate"],
        "lastOpDate": system[0]["lastOpDate"],
    }]
    user = db.query_tags(USER, [parse_condition("tag=blue", TAG_QUERY_FIELDS, "TagInventory")])
    assert {t.resource_uuid for t in user} == {a, b}
    assert db.count_tags(USER, []) == 3 and db.count_tags(SYSTEM, []) == 1
    # DeleteImagePackage takes the package's tags with it (TagManagerImpl.postDelete).
    db.delete(a)
    assert db.tags_of(a) == [] and db.count_tags(USER, []) == 1


def test_tag_and_null_conditions_as_zstack_reads_them(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    _package(db, "a", ("bootMode::UEFI",), ("blue", "red"))
    _package(db, "b", (), ("blue",))
    _package(db, "c", (), ())

    def q(*conds: str) -> set[str]:
        return {r.inventory.name for r in db.query([parse_condition(x) for x in conds])}

    # MysqlQueryBuilderImpl3.TagSqlBuilder: positive ops select packages having such a tag,
    # negative ones (the op reversed in the sub-query) packages having none.
    assert q("__userTag__=blue") == {"a", "b"}
    assert q("__userTag__!=blue") == {"c"}
    assert q("__userTag__?=red,green") == {"a"}
    assert q("__userTag__!?=red,green") == {"b", "c"}
    assert q("__userTag__~=r%") == {"a"}
    assert q("__userTag__!~=r%") == {"b", "c"}
    assert q("__userTag__ not null") == {"a", "b"}
    assert q("__userTag__ is null") == {"c"}
    assert q("__systemTag__=bootMode::UEFI") == {"a"}
    assert q("__systemTag__ is null") == {"b", "c"}
    assert q("__userTag__=blue", "__systemTag__ is null") == {"b"}
    # Plain fields: "is null" / "not null" (RestServer's QUERY_OP_MAPPING, tried last).
    assert q("exportUrl is null") == {"a", "b", "c"}
    assert q("exportUrl not null") == set()
    assert q("name=a is null") == set()  # "=" comes first: name equals "a is null"
    with pytest.raises(InvalidArgumentError):
        parse_condition("__tag__=x")


def test_group_by_keeps_one_package_per_value(tmp_path: Path) -> None:
    db = PackageRecords(tmp_path)
    for name in ("same", "same", "other"):
        inv = exporting(name=name)
        db.create_exporting(inv, f"{inv.uuid}.ova")
    grouped = db.query([], group_by="name", sort_by="name")
    assert [r.inventory.name for r in grouped] == ["other", "same"]
    assert db.count([], group_by="name") == 2 and db.count([]) == 3
    assert len(db.query([], group_by="backupStorageUuid")) == 1
    assert {r.inventory.backup_storage_uuid for r in db.query([], group_by="state")} == {BS}
    with pytest.raises(InvalidArgumentError, match="groupBy"):
        db.query([], group_by="install_path")
