"""flux-proxy's build: pure Python, with the guards' hot modules compiled by mypyc where it can.

The per-request work of the limits (budget windows, concurrency slots, settlement) is plain
typed Python; compiled with mypyc it costs the proxy about half the CPU (README "Compiled
guards"). The same source runs either way: without a C compiler, with FLUX_PROXY_COMPILE=0,
or when compiling fails, the package installs as pure Python.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The guards' request path in memory and in Redis. Each must stay mypyc-compatible (it is
# checked by CI, which builds them); tests/conftest.py can run the suite on the sources.
COMPILED = [
    "proxy/limits/budgets.py",
    "proxy/limits/cost.py",
    "proxy/limits/engine.py",
    "proxy/limits/guard.py",
    "proxy/limits/local_windows.py",
    "proxy/limits/store.py",
    "proxy/limits/redis_engine.py",
    "proxy/limits/resp.py",
    "proxy/identity/resolvers.py",
]


class OptionalBuildExt(build_ext):
    """A failed compilation leaves the pure-Python modules in place, with a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # (no compiler, no Python headers, ...)
            _skipped(exc)
            return
        # A build that found nothing to recompile still marks the libraries as built now:
        # tests/conftest.py compares their age with the sources'.
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.utime(path)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _skipped(exc)


def _skipped(exc: BaseException) -> None:
    print(f"flux-proxy: the compiled guards were not built ({exc}); installing pure Python",
          file=sys.stderr)


def _extensions() -> list[Any]:
    if os.environ.get("FLUX_PROXY_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        _skipped(exc)
        return []
    try:
        # Third-party packages may be missing in an isolated build: their types are Any here
        # (the project's own strict mypy run checks them).
        return mypycify(["--config-file=", "--ignore-missing-imports", "--follow-imports=skip",
                         *COMPILED],
                        group_name="proxy.limits._compiled")
    except BaseException as exc:  # mypyc exits (SystemExit) on a type error
        _skipped(exc)
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
