"""The one exception hierarchy of ovfkit.

Every error carries a ZStack-style ``code`` (see ZStack ``conf/errorCodes/sys.xml`` and the OVF
module's codes), a one-line ``description`` shared by all errors of that code, and ``details``
that a user can act on (the offending field, path or value). :meth:`OvfkitError.to_error_code`
gives ZStack's ErrorCode JSON shape, with the cause chain nested.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "CancelledError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidOvfError",
    "IoError",
    "MissingExtraError",
    "NotFoundError",
    "NotReadyError",
    "OperationCancelledError",
    "OperationFailedError",
    "OperationTimeoutError",
    "OvfParseError",
    "OvfkitError",
    "OvfkitIOError",
    "ToolMissingError",
    "UnimplementedError",
    "VmdkFormatError",
]


class OvfkitError(Exception):
    """Base of every error ovfkit raises on purpose."""

    code: ClassVar[str] = "SYS.1006"
    description: ClassVar[str] = "An operation failed"

    def __init__(
        self,
        details: str,
        *,
        cause: OvfkitError | None = None,
        elaboration: str | None = None,
        opaque: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(details)
        self.details = details
        self.cause = cause
        self.elaboration = elaboration
        self.opaque = dict(opaque) if opaque is not None else None

    def __str__(self) -> str:
        return f"{self.code}: {self.details}"

    def to_error_code(self) -> dict[str, Any]:
        """ZStack's ErrorCode object; null fields are left out, as ZStack's JSON does."""
        out: dict[str, Any] = {
            "code": self.code,
            "description": self.description,
            "details": self.details,
        }
        if self.elaboration is not None:
            out["elaboration"] = self.elaboration
        if self.opaque is not None:
            out["opaque"] = self.opaque
        cause = self.cause
        if cause is None and isinstance(self.__cause__, OvfkitError):
            cause = self.__cause__
        if cause is not None:
            out["cause"] = cause.to_error_code()
        return out


class InternalError(OvfkitError):
    code = "SYS.1000"
    description = "An internal error happened"


class OperationTimeoutError(OvfkitError):
    code = "SYS.1001"
    description = "An operation timed out"


class NotFoundError(OvfkitError):
    code = "SYS.1003"
    description = "Resource not found"


class OperationFailedError(OvfkitError):
    code = "SYS.1006"
    description = "An operation failed"


class InvalidArgumentError(OvfkitError):
    code = "SYS.1007"
    description = "One or more API argument is invalid"


class NotReadyError(OvfkitError):
    code = "SYS.1010"
    description = "The resource is not ready"


class UnimplementedError(OvfkitError):
    code = "SYS.1014"
    description = "The operation is not implemented"


class OvfkitIOError(OvfkitError):
    """Reading or writing a file, a disk, a pipe or a backup storage failed. Not named
    ``IoError``: that read too much like the builtin ``IOError`` (an alias of OSError)."""

    code = "SYS.1016"
    description = "An I/O error happened"


class OperationCancelledError(OvfkitError):
    """A ``cancel`` token was set. Not named ``CancelledError``, which asyncio and
    concurrent.futures already use for their own cancellations."""

    code = "SYS.1017"
    description = "The operation was cancelled"


class ToolMissingError(NotFoundError):
    """An external program (qemu-img, ...) is not installed; details name the Debian package."""


class MissingExtraError(ToolMissingError, ImportError):
    """A feature needs an optional dependency group (``pip install 'ovfkit[sign]'``) that is not
    installed; details name the extra. Also an ImportError, for code that probes features."""

    def __init__(self, extra: str, feature: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the {extra!r} extra: pip install 'ovfkit[{extra}]'"
            f" ({module} is not installed)"
        )
        self.extra = extra


class VmdkFormatError(OperationFailedError):
    """A VMDK file breaks the streamOptimized rules; ``fault`` names the rule."""

    def __init__(self, fault: str, details: str, **kwargs: Any) -> None:
        super().__init__(f"{fault}: {details}", **kwargs)
        self.fault = fault


class OvfParseError(OvfkitError):
    code = "OVF.1001"
    description = "Failed to parse OVF XML"


class InvalidOvfError(OvfkitError):
    code = "OVF.1002"
    description = "Invalid OVF XML"


# The names before 0.2, kept as aliases for one release (removed in 0.3).
IoError = OvfkitIOError
CancelledError = OperationCancelledError
