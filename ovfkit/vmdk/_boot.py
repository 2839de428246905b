"""The ``python -I -S -c`` program that starts a worker process of ovfkit.vmdk (the writer's
grain makers, the verifier's checkers).

Isolated mode (-I -S) keeps the parent's environment and site-packages scan out; the worker's
sys.path gets only the directories of ovfkit and isal, and ovfkit's packages are entered as bare
stubs so that importing ``ovfkit.vmdk.<module>`` runs no ``__init__`` (a worker stays at ~10 MiB
RSS: ARCHITECTURE.md, "The native writer's pipeline")."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["boot_code"]


def boot_code(call: str, packages: tuple[str, ...] = ()) -> str:
    """The program that runs ``call`` (e.g. ``main(int(sys.argv[1]))`` of
    ``ovfkit.vmdk.worker``, given as ``"worker:main(int(sys.argv[1]))"``), with ovfkit,
    ovfkit.vmdk and the subpackages named in ``packages`` (e.g. "disk") as stubs."""
    module, _, expression = call.partition(":")
    here = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.dirname(here)
    paths = [os.path.dirname(pkg)]
    spec = importlib.util.find_spec("isal")
    if spec is not None and spec.origin is not None:
        paths.append(os.path.dirname(os.path.dirname(spec.origin)))
    stubs = {"ovfkit": pkg, "ovfkit.vmdk": here}
    stubs.update({f"ovfkit.{name}": os.path.join(pkg, name) for name in packages})
    function = expression.partition("(")[0]
    return (
        "import sys\n"
        f"sys.path[:0] = {paths!r}\n"
        f"for n, p in {stubs!r}.items():\n"
        "    m = type(sys)(n)\n"
        "    m.__path__ = [p]\n"
        "    sys.modules[n] = m\n"
        f"from ovfkit.vmdk.{module} import {function}\n"
        f"{expression}\n"
    )
