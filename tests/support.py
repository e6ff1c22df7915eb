"""Start the real proxy app on a real port, pointed at the fake fal upstream."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from proxy.app import create_app
from proxy.settings import Settings, settings_from_dict
from tests.fakes.fal_upstream import FakeFal
from tests.fakes.server import ServerHandle

FAKE_KEY = "test-fal-key"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def proxy_settings(fake: FakeFal | None, **sections: Any) -> Settings:
    """Settings for a proxy in front of `fake`, plus any section overrides."""
    data: dict[str, Any] = {"fal": {"key": FAKE_KEY}}
    if fake is not None:
        data["upstream"] = {"run": fake.run_base, "queue": fake.queue_base, "rest": fake.rest_base}
    return settings_from_dict(_merge(data, sections))


@contextmanager
def running_proxy(settings: Settings) -> Iterator[ServerHandle]:
    """The standalone app under uvicorn on 127.0.0.1, stopped on exit."""
    with ServerHandle(create_app(settings)) as server:
        yield server


def proxy_url(server: ServerHandle, settings: Settings | None = None) -> str:
    route = settings.server.route if settings else "/api/fal/proxy"
    return f"{server.url}{route}"
