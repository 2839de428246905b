"""Backup storages: where finished packages are kept (a local folder, or an SFTP host)."""

from __future__ import annotations

from ..._extras import needs_extra
from ..config import BackupStorageConfig, LocalStorageConfig
from .base import BackupStorage, PackageUpload
from .local import LocalBackupStorage, package_download_path

__all__ = [
    "BackupStorage",
    "LocalBackupStorage",
    "PackageUpload",
    "open_backup_storage",
    "package_download_path",
]


def open_backup_storage(config: BackupStorageConfig, base_url: str | None = None) -> BackupStorage:
    """Connect to a configured backup storage (SFTP: one SSH connection, closed by close())."""
    if isinstance(config, LocalStorageConfig):
        return LocalBackupStorage(config, base_url)
    with needs_extra("sftp", "an SFTP backup storage"):  # paramiko: only for SFTP storages
        from .sftp import SftpBackupStorage

    return SftpBackupStorage(config)
