"""ZStack's SftpBackupStorage kind: packages kept in a folder of an SSH host, written over SFTP.

Transport: paramiko (SSH-2 and SFTP v3). The OVA writer needs a seekable target (it writes each
tar header after the member it precedes, once the member's size is known); SFTP writes carry an
explicit offset (draft-ietf-secsh-filexfer-02 section 6.4), so the ``.part`` file on the server is
written in place with pipelined requests and renamed with ``posix-rename@openssh.com`` at the
end: no local spool, no second pass over the data.

Capacity is read with OpenSSH's ``statvfs@openssh.com`` extension (OpenSSH PROTOCOL, section 4.4),
sent through paramiko's request channel the same way paramiko sends ``posix-rename@openssh.com``.
Host keys must be known; an unknown or changed host key is refused (RejectPolicy).
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import stat as stat_module
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import quote

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from ...errors import IoError, OperationFailedError
from ..config import SftpStorageConfig
from .base import PART_SUFFIX, check_package_name

__all__ = ["SftpBackupStorage"]

_CONNECT_TIMEOUT = 30.0
_WRITE_BUFFER = 1 << 20


def _io_error(what: str, exc: BaseException) -> IoError:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return IoError(f"{what}: {text}")


class _SftpUpload:
    def __init__(self, storage: SftpBackupStorage, name: str) -> None:
        self._storage = storage
        self._final = storage.remote_path(name)
        self._part = self._final + PART_SUFFIX
        self._file: paramiko.SFTPFile | None = None

    @property
    def local_path(self) -> None:
        return None

    def open(self) -> BinaryIO:
        try:
            f = self._storage.sftp.open(self._part, "w+b", bufsize=_WRITE_BUFFER)
        except (OSError, paramiko.SSHException) as exc:
            raise _io_error(f"cannot create {self._storage.url_of(self._part)}", exc) from None
        # Pipelined: writes are not acknowledged one by one; errors surface at flush/close.
        f.set_pipelined(True)
        self._file = f
        return cast(BinaryIO, f)

    def commit(self) -> None:
        sftp = self._storage.sftp
        try:
            if self._file is not None:
                self._file.close()  # waits for every pending write's status
            sftp.posix_rename(self._part, self._final)
        except (OSError, paramiko.SSHException) as exc:
            raise _io_error(f"cannot publish {self._storage.url_of(self._final)}", exc) from None

    def abort(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError, paramiko.SSHException):
                self._file.close()
        self._storage.remove_path(self._part)
        self._storage.remove_path(self._final)


class SftpBackupStorage:
    def __init__(self, config: SftpStorageConfig) -> None:
        self.uuid = config.uuid
        self.config = config
        self.client = paramiko.SSHClient()
        try:
            if config.known_hosts_file is not None:
                self.client.load_host_keys(config.known_hosts_file)
            else:
                self.client.load_system_host_keys()
        except OSError as exc:
            what = f"backup storage[uuid: {self.uuid}]: cannot read known hosts"
            raise _io_error(what, exc) from None
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self.client.connect(
                config.hostname,
                port=config.port,
                username=config.username,
                key_filename=config.key_file,
                password=config.password,
                look_for_keys=False,
                allow_agent=False,
                timeout=_CONNECT_TIMEOUT,
                banner_timeout=_CONNECT_TIMEOUT,
                auth_timeout=_CONNECT_TIMEOUT,
            )
            self.sftp = self.client.open_sftp()
        except (OSError, paramiko.SSHException) as exc:
            self.client.close()
            raise OperationFailedError(
                f"cannot connect to backup storage[uuid: {self.uuid}] at "
                f"{config.username}@{config.hostname}:{config.port}: {exc}"
            ) from None
        self._ensure_folder()

    def _ensure_folder(self) -> None:
        parts = [p for p in self.config.path.split("/") if p]
        path = "/" if self.config.path.startswith("/") else ""
        for part in parts:
            path = posixpath.join(path, part) if path else part
            try:
                st = self.sftp.stat(path)
            except FileNotFoundError:
                try:
                    self.sftp.mkdir(path, 0o755)
                except (OSError, paramiko.SSHException) as exc:
                    raise _io_error(f"cannot create {self.url_of(path)}", exc) from None
                continue
            except (OSError, paramiko.SSHException) as exc:
                raise _io_error(f"cannot stat {self.url_of(path)}", exc) from None
            if st.st_mode is not None and not stat_module.S_ISDIR(st.st_mode):
                raise IoError(f"{self.url_of(path)} is not a directory")

    def remote_path(self, name: str) -> str:
        return posixpath.join(self.config.path, check_package_name(name))

    def url_of(self, remote_path: str) -> str:
        c = self.config
        host = c.url_host or c.hostname
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = "" if c.port == 22 else f":{c.port}"
        path = remote_path if remote_path.startswith("/") else "/~/" + remote_path
        return f"sftp://{quote(c.username, safe='')}@{host}{port}{quote(path)}"

    def available_capacity(self) -> int:
        """f_bavail * f_frsize from ``statvfs@openssh.com``."""
        try:
            request: Any = self.sftp._request  # type: ignore[attr-defined]
            t, msg = request(CMD_EXTENDED, "statvfs@openssh.com", self.config.path)
        except (OSError, paramiko.SSHException) as exc:
            raise _io_error(
                f"backup storage[uuid: {self.uuid}]: statvfs@openssh.com failed", exc
            ) from None
        if t != CMD_EXTENDED_REPLY or msg is None:
            raise IoError(f"backup storage[uuid: {self.uuid}]: unexpected statvfs reply")
        # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, ... (all uint64)
        _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
        return int(bavail) * int(frsize)

    def begin(self, name: str) -> _SftpUpload:
        return _SftpUpload(self, check_package_name(name))

    def remove_path(self, remote_path: str) -> None:
        try:
            self.sftp.remove(remote_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise _io_error(f"cannot remove {self.url_of(remote_path)}", exc) from None
        except paramiko.SSHException as exc:
            raise _io_error(f"cannot remove {self.url_of(remote_path)}", exc) from None

    def remove(self, name: str) -> None:
        final = self.remote_path(name)
        self.remove_path(final + PART_SUFFIX)
        self.remove_path(final)

    def size_of(self, name: str) -> int | None:
        try:
            return self.sftp.stat(self.remote_path(name)).st_size
        except FileNotFoundError:
            return None
        except (OSError, paramiko.SSHException) as exc:
            raise _io_error(f"cannot stat {self.url_of(self.remote_path(name))}", exc) from None

    def export_url(self, name: str, package_uuid: str) -> str:
        return self.url_of(self.remote_path(name))

    def local_file(self, name: str) -> Path | None:
        return None

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()
