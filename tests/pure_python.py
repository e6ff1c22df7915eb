"""Imports proxy's modules from their sources where mypyc-compiled ones sit beside them.

Python prefers an extension module to a `.py` file of the same name; setup.py builds the
guards' modules in place (editable installs), so without this the sources never run here.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType


class SourcesFirst(MetaPathFinder):
    """For `proxy.*` modules found compiled: the `.py` next to them instead."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if not fullname.startswith("proxy.") or path is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or spec.origin.endswith(".py"):
            return None
        source = Path(spec.origin).parent / (fullname.rpartition(".")[2] + ".py")
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def stale_compiled(package: Path) -> list[str]:
    """Sources edited after their compiled module was built (an editable checkout runs the
    compiled one until it is rebuilt)."""
    # The code is in the group's library (setup.py: one for all); a module's own library is a
    # shim that a rebuild leaves alone when it did not change.
    groups = [g.stat().st_mtime for g in package.rglob("*__mypyc.*.so")]
    stale = []
    for built in package.rglob("*.so"):
        source = built.parent / (built.name.split(".", 1)[0] + ".py")
        built_at = min(groups) if groups else built.stat().st_mtime
        if source.is_file() and source.stat().st_mtime > built_at:
            stale.append(str(source.relative_to(package.parent)))
    return sorted(stale)
