"""The guards run compiled where the build compiled them, from their sources otherwise.

setup.py compiles the guards' hot modules with mypyc when it can; a machine without a C
compiler gets pure Python, with the same behaviour (scripts/test.sh runs the guards' tests
both ways). CI sets FLUX_PROXY_REQUIRE_COMPILED=1, so a build that silently fell back to
pure Python fails there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from proxy.limits import compiled
from proxy.limits import guard as guard_module

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ["proxy/limits/guard.py", "proxy/limits/engine.py", "proxy/limits/local_windows.py",
            "proxy/identity/resolvers.py"]


def _built() -> bool:
    return all(any(ROOT.joinpath(p).parent.glob(Path(p).stem + ".*.so")) for p in COMPILED)


def test_the_guards_run_compiled_or_pure_as_asked() -> None:
    pure = os.environ.get("FLUX_PROXY_PURE_PYTHON") == "1"
    if os.environ.get("FLUX_PROXY_REQUIRE_COMPILED") == "1" and not pure:
        assert _built(), "setup.py did not compile the guards (see its warning in the install)"
    expected = _built() and not pure
    assert compiled() is expected
    assert guard_module.__file__ is not None
    assert guard_module.__file__.endswith(".py") is not expected


def test_the_server_says_how_its_guards_run() -> None:
    # (a new process loads what is built, whatever this one imports)
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "check-config"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "FAL_KEY": "test-key"})
    assert out.returncode == 0, out.stderr
    assert ("guards: compiled" if _built() else "guards: pure Python") in out.stdout + out.stderr
