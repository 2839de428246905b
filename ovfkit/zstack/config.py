"""The data folder: its layout and its config file (storage roots, backup storages by uuid).

Layout of a data folder ``D``::

    D/config.json      storage roots, backup storages, optional base URL (this module)
    D/vms/<uuid>.json  the embedded VM catalog: one VmInstanceInventory per file (catalog.py)
    D/packages.db      the image-package records, SQLite in WAL mode (records.py)
    D/auth.sqlite      accounts and sessions (auth.py)
    D/locks/           one lock file per running export, held with flock (records.py)
    D/packages/        the default local backup storage's folder, if configured so

``D`` is kept 0700 and its secrets (config.json, packages.db, auth.sqlite and their SQLite
companions) 0600, fixed when an older folder is opened (private.py).

``config.json``::

    {
      "storageRoots": ["/zstack_ps", "/var/lib/zstack/iso"],
      "baseUrl": "http://127.0.0.1:8080",
      "backupStorages": {
        "<uuid>": {"type": "local", "name": "bs-local", "path": "/srv/ova"},
        "<uuid>": {"type": "sftp", "name": "bs-sftp", "hostname": "10.0.0.2", "port": 22,
                   "username": "root", "path": "/zstack_bs", "keyFile": "/root/.ssh/id_ed25519",
                   "knownHostsFile": "/root/.ssh/known_hosts"}
      },
      "webHooks": {"allowedHosts": ["localhost", "127.0.0.0/8", "::1", "hooks.example.com"]}
    }

``webHooks.allowedHosts`` lists where ``ovfkit serve`` may POST job results (``X-Web-Hook``): host
names and IP networks; the default is the loopback only (see :mod:`ovfkit.server.webhook`).

Relative paths in the file are relative to the data folder. Volume and ISO paths of a VM must lie
under one of ``storageRoots`` (checked after resolving symlinks) or the export is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, OvfkitIOError
from .inventory import is_zstack_uuid
from .private import private_folder

__all__ = [
    "CONFIG_NAME",
    "DATA_DIR_ENV",
    "BackupStorageConfig",
    "Config",
    "LocalStorageConfig",
    "SftpStorageConfig",
    "default_data_dir",
    "ensure_default_storage",
    "load_config",
    "save_config",
]

CONFIG_NAME = "config.json"
DEFAULT_WEBHOOK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.0/8", "::1")
DATA_DIR_ENV = "OVFKIT_DATA_DIR"


def default_data_dir() -> Path:
    """``$OVFKIT_DATA_DIR``, else ``ovfkit-data`` in the current directory."""
    return Path(os.environ.get(DATA_DIR_ENV) or "ovfkit-data")


@dataclass(frozen=True)
class LocalStorageConfig:
    """A folder on this machine; its packages are served by ``ovfkit serve`` over HTTP."""

    uuid: str
    path: str
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": "local", "name": self.name, "path": self.path}


@dataclass(frozen=True)
class SftpStorageConfig:
    """ZStack's SftpBackupStorage: a folder on an SSH host, written over SFTP.

    The host key must be known (``knownHostsFile``, else the user's ~/.ssh/known_hosts); an
    unknown host is refused, never trusted on first use. Authentication by ``keyFile`` or
    ``password``. ``urlHost`` overrides the host name put in exportUrl.
    """

    uuid: str
    hostname: str
    path: str
    username: str = "root"
    port: int = 22
    key_file: str | None = None
    password: str | None = None
    known_hosts_file: str | None = None
    url_host: str | None = None
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "sftp",
            "name": self.name,
            "hostname": self.hostname,
            "port": self.port,
            "username": self.username,
            "path": self.path,
            "keyFile": self.key_file,
            "password": self.password,
            "knownHostsFile": self.known_hosts_file,
            "urlHost": self.url_host,
        }
        return {k: v for k, v in out.items() if v is not None}


BackupStorageConfig = LocalStorageConfig | SftpStorageConfig


@dataclass(frozen=True)
class Config:
    storage_roots: tuple[str, ...] = ()
    backup_storages: Mapping[str, BackupStorageConfig] = field(default_factory=dict)
    base_url: str | None = None
    webhook_hosts: tuple[str, ...] = DEFAULT_WEBHOOK_HOSTS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "storageRoots": list(self.storage_roots),
            "backupStorages": {u: bs.to_json() for u, bs in self.backup_storages.items()},
        }
        if self.base_url is not None:
            out["baseUrl"] = self.base_url
        if self.webhook_hosts != DEFAULT_WEBHOOK_HOSTS:
            out["webHooks"] = {"allowedHosts": list(self.webhook_hosts)}
        return out

    def with_backup_storage(self, storage: BackupStorageConfig) -> Config:
        return replace(self, backup_storages={**self.backup_storages, storage.uuid: storage})

    def with_storage_root(self, root: str) -> Config:
        roots = self.storage_roots if root in self.storage_roots else (*self.storage_roots, root)
        return replace(self, storage_roots=roots)


def _abs(data_dir: Path, value: str) -> str:
    return str(data_dir / value) if not os.path.isabs(value) else value


def _str(entry: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{where}: field {key!r} must be a non-empty string")
    return value


def _opt_str(entry: Mapping[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidArgumentError(f"{where}: field {key!r} must be a string")
    return value


def parse_config(data: Mapping[str, Any], data_dir: Path) -> Config:
    where = str(data_dir / CONFIG_NAME)
    roots = data.get("storageRoots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
        raise InvalidArgumentError(f"{where}: storageRoots must be a list of paths")
    storages: dict[str, BackupStorageConfig] = {}
    raw = data.get("backupStorages", {})
    if not isinstance(raw, Mapping):
        raise InvalidArgumentError(f"{where}: backupStorages must be an object keyed by uuid")
    for uuid, entry in raw.items():
        here = f"{where}: backupStorages[{uuid}]"
        if not is_zstack_uuid(uuid):
            raise InvalidArgumentError(f"{here}: the key is not a ZStack uuid")
        if not isinstance(entry, Mapping):
            raise InvalidArgumentError(f"{here} must be an object")
        kind = entry.get("type", "local")
        name = _opt_str(entry, "name", here) or ""
        if kind == "local":
            storages[uuid] = LocalStorageConfig(
                uuid, _abs(data_dir, _str(entry, "path", here)), name
            )
        elif kind == "sftp":
            port = entry.get("port", 22)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise InvalidArgumentError(f"{here}: port must be an integer 1-65535")
            key_file = _opt_str(entry, "keyFile", here)
            known = _opt_str(entry, "knownHostsFile", here)
            storages[uuid] = SftpStorageConfig(
                uuid=uuid,
                hostname=_str(entry, "hostname", here),
                path=_str(entry, "path", here),
                username=_str(entry, "username", here, "root"),
                port=port,
                key_file=None if key_file is None else _abs(data_dir, key_file),
                password=_opt_str(entry, "password", here),
                known_hosts_file=None if known is None else _abs(data_dir, known),
                url_host=_opt_str(entry, "urlHost", here),
                name=name,
            )
        else:
            raise InvalidArgumentError(f"{here}: type must be 'local' or 'sftp', not {kind!r}")
    base_url = _opt_str(data, "baseUrl", where)
    hooks = data.get("webHooks", {})
    hosts = hooks.get("allowedHosts", list(DEFAULT_WEBHOOK_HOSTS)) if isinstance(
        hooks, Mapping
    ) else None
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise InvalidArgumentError(
            f"{where}: webHooks must be an object whose allowedHosts is a list of host names "
            "or IP networks"
        )
    return Config(
        tuple(_abs(data_dir, r) for r in roots),
        storages,
        None if base_url is None else base_url.rstrip("/"),
        tuple(hosts),
    )


def load_config(data_dir: str | os.PathLike[str]) -> Config:
    """Read ``config.json`` of a data folder; a missing file is an empty config."""
    path = Path(data_dir) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise OvfkitIOError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(f"{path} must hold a JSON object")
    return parse_config(data, Path(data_dir))


def save_config(data_dir: str | os.PathLike[str], config: Config) -> None:
    """Write ``config.json`` atomically (temp file + rename), mode 0600: it may hold passwords."""
    folder = private_folder(data_dir)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(config.to_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, folder / CONFIG_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


DEFAULT_STORAGE_FOLDER = "packages"


def ensure_default_storage(data_dir: str | os.PathLike[str]) -> Config:
    """The embedded default: a data folder whose config names no backup storage gets a local
    one, ``<data>/packages`` under a fresh uuid, written to the config file (so the uuid stays
    the same across restarts). A config that names any backup storage is left as it is."""
    from .inventory import new_zstack_uuid

    config = load_config(data_dir)
    if config.backup_storages:
        return config
    folder = Path(data_dir).resolve() / DEFAULT_STORAGE_FOLDER
    config = config.with_backup_storage(
        LocalStorageConfig(new_zstack_uuid(), str(folder), "default local backup storage")
    )
    save_config(data_dir, config)
    return config
