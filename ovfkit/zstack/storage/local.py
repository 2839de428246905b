"""The local backup storage: a folder on this machine (the embedded default).

exportUrl is the service's download URL when a base URL is configured (``ovfkit serve`` serves
the folder, with HTTP Range, to whoever has the URL and its token), else a ``file://`` URL of
the package.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
from pathlib import Path

from ...errors import OvfkitIOError
from ...progress import CancelToken, ProgressCallback, check_cancel
from ..config import LocalStorageConfig
from .base import PART_SUFFIX, check_package_name, fsync_dir

__all__ = ["LocalBackupStorage", "package_download_path"]


def package_download_path(package_uuid: str, token: str) -> str:
    """The path, under the service's base URL, where ``ovfkit serve`` offers a local package:
    ``/ova-packages/{token}/{uuid}.ova``. The token (the record's download token) makes it a
    capability URL; the file name stays ``{uuid}.ova`` for tools that name what they fetch
    after the URL's last segment."""
    return f"/ova-packages/{token}/{package_uuid}.ova"


class _LocalUpload:
    """The OVA writer given a path writes it atomically itself (a temporary
    ``.<name>.<random>.part`` beside it, renamed over ``name`` when complete), so the upload
    only names the final path; abort() removes the final file and any such leftover."""

    def __init__(self, storage: LocalBackupStorage, name: str) -> None:
        self._storage = storage
        self._name = name
        self._final = storage.folder / name

    @property
    def local_path(self) -> Path:
        return self._final

    def upload_from(
        self,
        path: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        part = self._final.with_name(self._name + PART_SUFFIX)
        check_cancel(cancel, "the upload")
        try:
            shutil.copyfile(path, part)
        except OSError as exc:
            raise OvfkitIOError(f"cannot copy {path} to {part}: {exc.strerror}") from None

    def commit(self) -> None:
        part = self._final.with_name(self._name + PART_SUFFIX)
        try:
            if part.exists():  # written through upload_from()
                with open(part, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(part, self._final)
            if not self._final.is_file():
                raise OvfkitIOError(f"package {self._final} was not written")
            fsync_dir(self._storage.folder)
        except OSError as exc:
            raise OvfkitIOError(f"cannot publish {self._final}: {exc.strerror}") from None

    def abort(self) -> None:
        self._storage.remove(self._name)


class LocalBackupStorage:
    def __init__(self, config: LocalStorageConfig, base_url: str | None = None) -> None:
        self.uuid = config.uuid
        self.remote = False
        self.folder = Path(config.path)
        self.base_url = base_url
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OvfkitIOError(
                f"backup storage[uuid: {self.uuid}]: cannot create {self.folder}: {exc.strerror}"
            ) from None

    def available_capacity(self) -> int:
        try:
            st = os.statvfs(self.folder)
        except OSError as exc:
            raise OvfkitIOError(f"cannot stat {self.folder}: {exc.strerror}") from None
        return st.f_bavail * st.f_frsize

    def begin(self, name: str) -> _LocalUpload:
        return _LocalUpload(self, check_package_name(name))

    def remove(self, name: str) -> None:
        """Remove ``name``, ``name.part`` and the OVA writer's ``.name.*.part`` temporaries."""
        name = check_package_name(name)
        leftovers = [p for p in self.folder.glob(f".{glob.escape(name)}.*{PART_SUFFIX}")]
        for p in (self.folder / name, self.folder / (name + PART_SUFFIX), *leftovers):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise OvfkitIOError(f"cannot remove {p}: {exc.strerror}") from None

    def size_of(self, name: str) -> int | None:
        try:
            return (self.folder / check_package_name(name)).stat().st_size
        except FileNotFoundError:
            return None

    def export_url(self, name: str, package_uuid: str, token: str | None = None) -> str:
        if self.base_url and token is not None:
            return self.base_url.rstrip("/") + package_download_path(package_uuid, token)
        return (self.folder / check_package_name(name)).resolve().as_uri()

    def local_file(self, name: str) -> Path:
        return self.folder / check_package_name(name)

    def close(self) -> None:
        pass
