"""Start the real proxy app on a real port, pointed at the fake fal upstream."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from proxy.app import create_app
from proxy.http_protocol import http_protocol
from proxy.identity.tokens import SALT_REQUEST_ID, serializer
from proxy.policy.ownership import Ownership
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


TEST_SECRET = "test-signing-secret-0123456789"

# The deployed defaults refuse unidentified callers and allow only fal-ai/flux/dev. Tests of
# the proxy route itself opt in to a permissive set-up: anonymous callers known by address,
# the fake's special endpoints, uploads, webhooks to example.com, and no limits.
PERMISSIVE: dict[str, Any] = {
    "identity": {"resolvers": ["address"], "secrets": [TEST_SECRET]},
    # Limits are on by default; their own tests turn them on with explicit budgets.
    "limits": {"enabled": False},
    "policy": {
        "allow": ["fal-ai/flux/*", "fal-ai/fake/*"],
        "allow_uploads": True,
        "inputs": {"*": {"webhook_prefixes": ["https://example.com/"]}},
    },
}


def proxy_settings(fake: FakeFal | None, *, strict: bool = False, **sections: Any) -> Settings:
    """Settings for a proxy in front of `fake`, plus any section overrides.

    Permissive identity and policy (see PERMISSIVE) unless `strict`: then the shipped defaults.
    """
    data: dict[str, Any] = {"fal": {"key": FAKE_KEY}}
    if not strict:
        data = _merge(data, PERMISSIVE)
    if fake is not None:
        data["upstream"] = {"run": fake.run_base, "queue": fake.queue_base, "rest": fake.rest_base}
    return settings_from_dict(_merge(data, sections))


def signed_id(fal_id: str, caller_id: str = "ip:127.0.0.1", app: str = "fal-ai/flux",
              secret: str = TEST_SECRET) -> str:
    """A request id as the proxy hands it out (for tests that start from a fal id)."""
    return Ownership([secret], 86400).sign(fal_id, caller_id, app)


def fal_id(signed: str, secret: str = TEST_SECRET) -> str:
    """fal's own id inside a signed request id (what the fake upstream knows it by)."""
    data = serializer([secret], SALT_REQUEST_ID).loads(signed)
    return str(data[0])


@contextmanager
def running_proxy(settings: Settings) -> Iterator[ServerHandle]:
    """The standalone app under uvicorn on 127.0.0.1, as `flux-proxy serve` runs it (its HTTP
    protocol included), stopped on exit."""
    with ServerHandle(create_app(settings), http=http_protocol(settings.server)) as server:
        yield server


def proxy_url(server: ServerHandle, settings: Settings | None = None) -> str:
    route = settings.server.route if settings else "/api/fal/proxy"
    return f"{server.url}{route}"
