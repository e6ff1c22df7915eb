"""Shared pytest fixtures.

``fake_fal``: a started :class:`tests.fakes.fal_upstream.FakeFal` (fresh server per test,
start-up is a few ms). ``fake.base_url``, ``run_base``, ``queue_base``, ``rest_base`` are set.
"""

from __future__ import annotations

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
