"""Shared pytest fixtures.

``fake_fal``: a started :class:`tests.fakes.fal_upstream.FakeFal` (fresh server per test,
start-up is a few ms). ``fake.base_url``, ``run_base``, ``queue_base``, ``rest_base`` are set.
"""

from __future__ import annotations

import time
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


@pytest.fixture(autouse=True)
def _clear_of_a_minute_boundary(request: pytest.FixtureRequest) -> None:
    """Rate-limit tests count hits in real per-minute (and longer) windows. A sliding-window
    counter whose minute turns in the middle of a test weighs the earlier hits as the
    previous count, floored (`limits`' algorithm), so a test's exact remaining counts would
    be off by one when it straddles a boundary. Start such tests clear of one (every hour
    and day boundary is a minute boundary too)."""
    if not request.module.__name__.split(".")[-1].startswith("test_limits"):
        return
    into_minute = time.time() % 60
    if into_minute > 55:
        time.sleep(60.05 - into_minute)
