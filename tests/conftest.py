"""Shared pytest fixtures.

``fake_fal``: a started :class:`tests.fakes.fal_upstream.FakeFal` (fresh server per test,
start-up is a few ms). ``fake.base_url``, ``run_base``, ``queue_base``, ``rest_base`` are set.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.fal_upstream import FakeFal

FAKE_FAL_KEY = "test-fal-key"


@pytest.fixture
def fake_fal() -> Iterator[FakeFal]:
    fake = FakeFal(key=FAKE_FAL_KEY)
    with fake:
        yield fake
