"""The VM catalog (folder of inventories, `ovfkit vm`) and the storage-root confinement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ovfkit.cli import main as cli_main
from ovfkit.errors import InvalidArgumentError, NotFoundError
from ovfkit.model import CdDrive, Controller, ControllerType, Disk, DiskSource, VirtualMachine
from ovfkit.zstack.catalog import FolderCatalog, confine_paths, unwrap_vm_inventory
from ovfkit.zstack.config import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "zstack" / "vm-inventory-example.json"
VM = "6efab7159c6942429c6b0e7e0b64b660"


def example() -> dict[str, object]:
    doc: dict[str, object] = json.loads(EXAMPLE.read_text())["inventories"][0]
    return doc


def test_add_list_remove(tmp_path: Path) -> None:
    cat = FolderCatalog(tmp_path)
    assert cat(VM) is None and cat.list() == []
    assert cat.add({"inventories": [example()]}) == VM
    got = cat(VM)
    assert got is not None and got["name"] == example()["name"]
    assert [v["uuid"] for v in cat.list()] == [VM]
    # Replacing keeps one entry; text input works too.
    changed = {**example(), "name": "renamed"}
    cat.add(json.dumps({"inventory": changed}))
    got = cat(VM)
    assert got is not None and got["name"] == "renamed" and len(cat.list()) == 1
    cat.remove(VM)
    assert cat(VM) is None
    with pytest.raises(NotFoundError):
        cat.remove(VM)


@pytest.mark.parametrize(
    "doc",
    [[], {"inventories": []}, {"inventories": [{}, {}]}, {"uuid": "../../etc/passwd"}, {"uuid": 1}],
)
def test_bad_inventories_are_refused(doc: object) -> None:
    with pytest.raises(InvalidArgumentError):
        unwrap_vm_inventory(doc)


def test_resolver_never_touches_paths_from_a_crafted_uuid(tmp_path: Path) -> None:
    cat = FolderCatalog(tmp_path)
    (tmp_path / "secret.json").write_text(json.dumps({"uuid": VM}))
    assert cat("../secret") is None


def vm_with(disk_path: str, iso: str | None = None) -> VirtualMachine:
    return VirtualMachine(
        name="v",
        controllers=(
            Controller("scsi0", ControllerType.SCSI),
            Controller("ide0", ControllerType.IDE),
        ),
        disks=(Disk("d1", 1 << 20, "scsi0", 0, DiskSource(disk_path, "qcow2")),),
        cd_drives=(CdDrive("cd0", "ide0", 0, iso),),
    )


def test_confine_paths(tmp_path: Path) -> None:
    root = tmp_path / "ps"
    (root / "vol").mkdir(parents=True)
    disk = root / "vol" / "d.qcow2"
    disk.write_bytes(b"")
    outside = tmp_path / "outside.iso"
    outside.write_bytes(b"")
    ok = confine_paths(vm_with(str(disk)), [str(root)])
    assert ok.disks[0].source is not None and ok.disks[0].source.path == str(disk)

    cases = [
        (str(outside), None),  # plainly outside
        (str(root / ".." / "outside.iso"), None),  # dot-dot
        (str(disk), str(outside)),  # the ISO outside
        ("relative/d.qcow2", None),
        (str(tmp_path / "ps-sibling" / "d.qcow2"), None),  # shares the root's prefix only
    ]
    link = root / "vol" / "escape.qcow2"
    os.symlink(outside, link)
    cases.append((str(link), None))  # a symlink inside a root pointing out
    for disk_path, iso in cases:
        with pytest.raises(InvalidArgumentError) as info:
            confine_paths(vm_with(disk_path, iso), [str(root)])
        assert info.value.code == "SYS.1007"
    with pytest.raises(InvalidArgumentError, match="none configured"):
        confine_paths(vm_with(str(disk)), [])


def test_symlink_inside_roots_resolves_to_target(tmp_path: Path) -> None:
    root = tmp_path / "ps"
    root.mkdir()
    real = root / "real.qcow2"
    real.write_bytes(b"")
    link = root / "link.qcow2"
    os.symlink(real, link)
    vm = confine_paths(vm_with(str(link)), [str(root)])
    assert vm.disks[0].source is not None and vm.disks[0].source.path == str(real)


def test_cli_vm_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({"inventories": [example()]}))
    data = tmp_path / "data"
    assert cli_main(["vm", "add", str(inv), "--data-dir", str(data),
                     "--storage-root", str(tmp_path / "ps")]) == 0
    assert capsys.readouterr().out.strip() == VM
    assert load_config(data).storage_roots == (str((tmp_path / "ps").resolve()),)
    assert cli_main(["vm", "list", "--data-dir", str(data)]) == 0
    assert VM in capsys.readouterr().out
    assert cli_main(["vm", "list", "--json", "--data-dir", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["inventories"][0]["uuid"] == VM
    assert cli_main(["vm", "remove", VM, "--data-dir", str(data)]) == 0
    assert cli_main(["vm", "remove", VM, "--data-dir", str(data)]) == 2
    assert "SYS.1003" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**example(), "cpuNum": "two"}))
    assert cli_main(["vm", "add", str(bad), "--data-dir", str(data)]) == 2
    assert "SYS.1007" in capsys.readouterr().err
    assert FolderCatalog(data).list() == []
