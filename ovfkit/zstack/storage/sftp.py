"""ZStack's SftpBackupStorage kind: packages kept in a folder of an SSH host, written over SFTP.

Transport: paramiko (SSH-2 and SFTP v3). The OVA writer's seekable mode needs a local file
descriptor (pwrite for the headers, mmap for the whole-package MD5), and its streaming mode
writes chunked disks that virt-v2v and VirtualBox cannot import; so the package is written to a
local spool file and sent with pipelined SFTP writes into ``<name>.part``, then renamed with
``posix-rename@openssh.com`` (atomic on the server). The spool costs local space for one package
and one sequential read, from the page cache when memory allows.

Capacity is read with OpenSSH's ``statvfs@openssh.com`` extension (OpenSSH PROTOCOL, section 4.4),
sent through paramiko's request channel the same way paramiko sends ``posix-rename@openssh.com``.
Host keys must be known; an unknown or changed host key is refused (RejectPolicy).
"""

from __future__ import annotations

import errno
import posixpath
import stat as stat_module
from pathlib import Path
from typing import Any
from urllib.parse import quote

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from ...errors import OperationFailedError, OvfkitError, OvfkitIOError
from ...progress import CancelToken, Progress, ProgressCallback, check_cancel
from ..config import SftpStorageConfig
from .base import PART_SUFFIX, check_package_name

__all__ = ["SftpBackupStorage"]

_CONNECT_TIMEOUT = 30.0
_KEEPALIVE = 30


def _io_error(what: str, exc: BaseException) -> OvfkitIOError:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return OvfkitIOError(f"{what}: {text}")


class _SftpUpload:
    def __init__(self, storage: SftpBackupStorage, name: str) -> None:
        self._storage = storage
        self._final = storage.remote_path(name)
        self._part = self._final + PART_SUFFIX

    @property
    def local_path(self) -> None:
        return None

    def upload_from(
        self,
        path: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        """Pipelined SFTP writes of the spooled package (paramiko's put), then a size check."""
        total = path.stat().st_size
        stage = f"upload {self._storage.url_of(self._final)}"

        def report(done: int, _size: int) -> None:
            check_cancel(cancel, "the upload")
            if progress is not None:
                progress(Progress(stage, done, total))

        try:
            attrs = self._storage.sftp.put(str(path), self._part, callback=report, confirm=True)
        except OvfkitError:
            raise
        except (OSError, paramiko.SSHException) as exc:
            raise _io_error(f"cannot write {self._storage.url_of(self._part)}", exc) from None
        if attrs.st_size != total:
            raise OvfkitIOError(
                f"{self._storage.url_of(self._part)} has {attrs.st_size} bytes after the upload, "
                f"{total} were sent"
            )

    def commit(self) -> None:
        try:
            self._storage.sftp.posix_rename(self._part, self._final)
        except (OSError, paramiko.SSHException) as exc:
            raise _io_error(f"cannot publish {self._storage.url_of(self._final)}", exc) from None

    def abort(self) -> None:
        self._storage.remove_path(self._part)
        self._storage.remove_path(self._final)


class SftpBackupStorage:
    def __init__(self, config: SftpStorageConfig) -> None:
        self.uuid = config.uuid
        self.remote = True
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
            transport = self.client.get_transport()
            if transport is not None:
                # The connection idles while the package is written to the spool.
                transport.set_keepalive(_KEEPALIVE)
        except (OSError, paramiko.SSHException) as exc:
            self.client.close()
            raise OperationFailedError(
                f"cannot connect to backup storage[uuid: {self.uuid}] at "
                f"{config.username}@{config.hostname}:{config.port}: {exc}"
            ) from None
        try:
            self._ensure_folder()
        except BaseException:
            self.close()
            raise

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
                raise OvfkitIOError(f"{self.url_of(path)} is not a directory")

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
            raise OvfkitIOError(f"backup storage[uuid: {self.uuid}]: unexpected statvfs reply")
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

    def export_url(self, name: str, package_uuid: str, token: str | None = None) -> str:
        return self.url_of(self.remote_path(name))

    def local_file(self, name: str) -> Path | None:
        return None

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()
