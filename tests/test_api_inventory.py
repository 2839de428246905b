"""ZStack wire shapes: timestamps, ImagePackageInventory, Reply, request parsing, q= conditions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovfkit.errors import InvalidArgumentError, NotFoundError
from ovfkit.zstack.inventory import (
    Condition,
    ExportVmOvaPackageRequest,
    ImagePackageInventory,
    ImagePackageState,
    Reply,
    format_zstack_time,
    is_zstack_uuid,
    new_zstack_uuid,
    parse_condition,
    parse_zstack_time,
)


def local(year: int, month: int, day: int, h: int = 0, m: int = 0, s: int = 0) -> datetime:
    return datetime(year, month, day, h, m, s).astimezone()


def test_timestamp_matches_reference_page() -> None:
    assert format_zstack_time(local(2022, 5, 10, 5, 24, 3)) == "May 10, 2022 5:24:03 AM"


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        ((2022, 1, 2, 0, 5, 9), "Jan 2, 2022 12:05:09 AM"),  # midnight is 12 AM, day unpadded
        ((2022, 12, 31, 12, 0, 0), "Dec 31, 2022 12:00:00 PM"),  # noon is 12 PM
        ((2023, 7, 4, 13, 7, 59), "Jul 4, 2023 1:07:59 PM"),
        ((2023, 7, 4, 23, 59, 59), "Jul 4, 2023 11:59:59 PM"),
    ],
)
def test_timestamp_edges(moment: tuple[int, int, int, int, int, int], text: str) -> None:
    assert format_zstack_time(local(*moment)) == text
    assert parse_zstack_time(text) == local(*moment)


def test_timestamp_is_local_time_of_aware_datetime() -> None:
    moment = datetime(2022, 5, 10, 5, 24, 3, tzinfo=UTC)
    assert format_zstack_time(moment) == format_zstack_time(moment.astimezone())


@given(st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(9998, 12, 30)))
def test_timestamp_round_trip(naive: datetime) -> None:
    moment = naive.replace(microsecond=0).astimezone()
    assert parse_zstack_time(format_zstack_time(moment)) == moment


@pytest.mark.parametrize(
    "text", ["", "May 10 2022 5:24:03 AM", "Foo 10, 2022 5:24:03 AM", "May 32, 2022 5:24:03 AM",
             "May 10, 2022 13:24:03 PM", "May 10, 2022 0:24:03 AM", "2022-05-10T05:24:03"],
)
def test_timestamp_rejects(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_zstack_time(text)


def test_narrow_nbsp_before_am_pm_is_accepted() -> None:
    # JDK 20+ (CLDR 42) writes U+202F before AM/PM.
    assert parse_zstack_time("May 10, 2022 5:24:03\u202fAM") == local(2022, 5, 10, 5, 24, 3)


def test_uuid_rule() -> None:
    assert is_zstack_uuid("9f77f8d79ee138bfac21290c02fc2cb6")
    assert not is_zstack_uuid("9f77f8d7-9ee1-38bf-ac21-290c02fc2cb6")
    assert not is_zstack_uuid("9F77F8D79EE138BFAC21290C02FC2CB6")
    assert not is_zstack_uuid("9f77f8d79ee108bfac21290c02fc2cb6")  # version 0
    assert not is_zstack_uuid("9f77f8d79ee138bf0c21290c02fc2cb6")  # variant 0
    assert not is_zstack_uuid(None)
    assert all(is_zstack_uuid(new_zstack_uuid()) for _ in range(50))


def inventory(**kw: object) -> ImagePackageInventory:
    base: dict[str, object] = dict(
        uuid="9f77f8d79ee138bfac21290c02fc2cb6",
        name="ova",
        description="description",
        vm_uuid="43d306a42cdf38c48458d061e40b810a",
        backup_storage_uuid="22f7145dba4f3da6af7ff8f0e02af6e3",
        state=ImagePackageState.EXPORTED,
        export_url="http://bs-host-name/path/to/ova.ova",
        md5_sum="sampleMd5Sum",
        size=10737418240,
        create_date=local(2022, 5, 10, 5, 24, 3),
        last_op_date=local(2022, 5, 10, 5, 24, 3),
    )
    base.update(kw)
    return ImagePackageInventory(**base)  # type: ignore[arg-type]


def test_inventory_json_is_reference_shape() -> None:
    doc = Reply.ok(inventory()).to_json()
    assert doc == {
        "inventory": {
            "uuid": "9f77f8d79ee138bfac21290c02fc2cb6",
            "name": "ova",
            "description": "description",
            "vmUuid": "43d306a42cdf38c48458d061e40b810a",
            "backupStorageUuid": "22f7145dba4f3da6af7ff8f0e02af6e3",
            "state": "Exported",
            "exportUrl": "http://bs-host-name/path/to/ova.ova",
            "md5Sum": "sampleMd5Sum",
            "format": "OVA",
            "size": 10737418240,
            "createDate": "May 10, 2022 5:24:03 AM",
            "lastOpDate": "May 10, 2022 5:24:03 AM",
        }
    }
    # An integer on the wire (the reference page's 1.073741824E10 is Gson's double rendering).
    assert '"size": 10737418240' in json.dumps(doc)
    assert ImagePackageInventory.from_json(doc["inventory"]) == inventory()


def test_null_fields_are_left_out() -> None:
    inv = inventory(
        state=ImagePackageState.EXPORTING, export_url=None, md5_sum=None, size=None,
        description=None,
    )
    doc = inv.to_json()
    assert "exportUrl" not in doc and "md5Sum" not in doc and "size" not in doc
    assert "description" not in doc
    assert doc["state"] == "Exporting"


def test_failure_reply_is_error_code() -> None:
    err = NotFoundError("invalid field[vmUuid], resource[uuid:x, type:VmInstanceVO] not found")
    reply = Reply.failure(err)
    assert not reply.success
    assert reply.to_json() == {
        "error": {
            "code": "SYS.1003",
            "description": "Resource not found",
            "details": "invalid field[vmUuid], resource[uuid:x, type:VmInstanceVO] not found",
        }
    }
    assert reply.to_sdk_json()["success"] is False
    assert Reply.ok(inventory()).to_sdk_json()["success"] is True


VM = "6efab7159c6942429c6b0e7e0b64b660"
BS = "22f7145dba4f3da6af7ff8f0e02af6e3"


def test_request_params_form() -> None:
    body = {
        "params": {"vmUuid": VM, "backupStorageUuid": BS, "name": "n", "tagUuids": [BS]},
        "systemTags": ["bootMode::UEFI"],
        "userTags": ["u"],
    }
    req = ExportVmOvaPackageRequest.from_json(json.dumps(body))
    assert req == ExportVmOvaPackageRequest(
        vm_uuid=VM, backup_storage_uuid=BS, name="n", tag_uuids=(BS,),
        system_tags=("bootMode::UEFI",), user_tags=("u",),
    )
    assert ExportVmOvaPackageRequest.from_json(req.to_json()) == req


def test_request_flat_form_of_curl_example() -> None:
    body = (
        '{"name":"<name>","description":"<description>","vmUuid":"<vmUuid>",'
        '"backupStorageUuid":"<backupStorageUuid>","resourceUuid":"<resourceUuid>",'
        '"tagUuids":["<tagUuids>"],"systemTags":["<systemTags>"],"userTags":["<userTags>"]}'
    )
    req = ExportVmOvaPackageRequest.from_json(body.encode())
    assert req.vm_uuid == "<vmUuid>" and req.resource_uuid == "<resourceUuid>"
    assert req.system_tags == ("<systemTags>",) and req.tag_uuids == ("<tagUuids>",)


@pytest.mark.parametrize(
    "body",
    [
        "[]",
        "not json",
        '{"params": []}',
        '{"vmUuid": 5}',
        '{"params": {"name": ["x"]}}',
        '{"systemTags": "bootMode::UEFI"}',
        '{"userTags": [1]}',
        '{"params": {"tagUuids": {"a": 1}}}',
    ],
)
def test_request_wrong_types_are_sys_1007(body: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        ExportVmOvaPackageRequest.from_json(body)
    assert info.value.code == "SYS.1007"


@pytest.mark.parametrize(
    ("text", "cond"),
    [
        ("name=web", Condition("name", "=", "web")),
        ("name!=web", Condition("name", "!=", "web")),
        ("name~=web%", Condition("name", "~=", "web%")),
        ("name!~=web%", Condition("name", "!~=", "web%")),
        ("size>=10", Condition("size", ">=", "10")),
        ("size<10", Condition("size", "<", "10")),
        ("uuid?=a,b", Condition("uuid", "?=", "a,b")),
        ("uuid!?=a,b", Condition("uuid", "!?=", "a,b")),
        ("description=a=b", Condition("description", "=", "a=b")),
        ("name=", Condition("name", "=", "")),
    ],
)
def test_parse_condition(text: str, cond: Condition) -> None:
    assert parse_condition(text) == cond


@pytest.mark.parametrize("text", ["name", "=x", "nosuch=1", "size", ""])
def test_parse_condition_rejects(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_condition(text)




_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_uuids = st.uuids().map(lambda u: u.hex)
_moments = st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(9998, 12, 30)).map(
    lambda d: d.replace(microsecond=0).astimezone()
)


@given(
    st.builds(
        ExportVmOvaPackageRequest,
        vm_uuid=st.none() | _uuids,
        backup_storage_uuid=st.none() | _uuids,
        name=st.none() | _text,
        description=st.none() | _text,
        resource_uuid=st.none() | _uuids,
        tag_uuids=st.lists(_uuids, max_size=3).map(tuple),
        system_tags=st.lists(_text, max_size=3).map(tuple),
        user_tags=st.lists(_text, max_size=3).map(tuple),
    )
)
def test_request_round_trip(req: ExportVmOvaPackageRequest) -> None:
    assert ExportVmOvaPackageRequest.from_json(json.dumps(req.to_json())) == req


@given(
    st.builds(
        ImagePackageInventory,
        uuid=_uuids,
        name=_text,
        description=st.none() | _text,
        vm_uuid=_uuids,
        backup_storage_uuid=_uuids,
        state=st.sampled_from(ImagePackageState),
        export_url=st.none() | _text,
        md5_sum=st.none() | st.text("0123456789abcdef", min_size=32, max_size=32),
        size=st.none() | st.integers(0, 2**63 - 1),
        create_date=st.none() | _moments,
        last_op_date=st.none() | _moments,
    )
)
def test_inventory_round_trip(inv: ImagePackageInventory) -> None:
    doc = json.loads(json.dumps(inv.to_json()))
    assert None not in doc.values()
    assert ImagePackageInventory.from_json(doc) == inv
