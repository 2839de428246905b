"""Optional dependency groups (pyproject ``[project.optional-dependencies]``).

The core (``pip install ovfkit``) writes, reads and verifies packages with lxml, xxhash, isal
and pycdlib. Features that need more name their extra: importing them without it raises
MissingExtraError (an OvfkitError and an ImportError), whose one line says what to install.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import MissingExtraError

__all__ = ["EXTRAS", "extra_of", "needs_extra"]

#: extra -> the top-level modules it installs (kept equal to pyproject.toml by a test)
EXTRAS: dict[str, tuple[str, ...]] = {
    "sign": ("cryptography",),
    "sftp": ("paramiko",),
    "server": ("starlette", "uvicorn", "h11", "anyio", "sqlalchemy", "alembic"),
    "cluster": ("celery", "kombu", "redis", "psycopg"),
}


def extra_of(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the module ``exc`` could not find, if one does."""
    top = (exc.name or "").partition(".")[0]
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)


@contextlib.contextmanager
def needs_extra(extra: str, feature: str) -> Iterator[None]:
    """Imports in this block belong to ``extra``: a missing module of it becomes
    MissingExtraError naming the extra; any other ImportError passes unchanged."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in EXTRAS[extra]:
            raise
        raise MissingExtraError(extra, feature, top) from None
