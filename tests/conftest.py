"""Shared pytest fixtures.

``fake_fal``: a started :class:`tests.fakes.fal_upstream.FakeFal` (fresh server per test,
start-up is a few ms). ``fake.base_url``, ``run_base``, ``queue_base``, ``rest_base`` are set.

FLUX_PROXY_PURE_PYTHON=1 runs the tests on the sources of the modules setup.py compiles,
even where the compiled ones are built beside them (scripts/test.sh does both).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.pure_python import SourcesFirst, stale_compiled

if os.environ.get("FLUX_PROXY_PURE_PYTHON") == "1":  # before anything imports proxy
    sys.meta_path.insert(0, SourcesFirst())
elif stale := stale_compiled(Path(__file__).resolve().parents[1] / "proxy"):
    raise SystemExit(
        f"compiled modules are older than their sources ({', '.join(stale)}): rebuild them "
        "with `python setup.py build_ext --inplace` (or `pip install -e .`), or test the "
        "sources with FLUX_PROXY_PURE_PYTHON=1")

from collections.abc import Iterator

import pytest

from tests.fakes.fal_upstream import FakeFal
from tests.fakes.redis_server import RedisServer, redis_available

FAKE_FAL_KEY = "test-fal-key"


@pytest.fixture
def fake_fal() -> Iterator[FakeFal]:
    fake = FakeFal(key=FAKE_FAL_KEY)
    with fake:
        yield fake


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real `redis-server` for the session; tests keep apart with their own key prefix."""
    if not redis_available():
        pytest.fail("redis-server is not installed (scripts/apt-packages.txt lists it)")
    with RedisServer() as server:
        yield server
