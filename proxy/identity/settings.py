"""The `[identity]` settings section: how callers are identified and what signs our tokens."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

__all__ = ["RESOLVERS", "IdentitySettings", "ResolverName"]

ResolverName = Literal["host_user", "bearer", "cookie", "address"]
RESOLVERS: tuple[str, ...] = ("host_user", "bearer", "cookie", "address")


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """The resolver chain (first answer wins) and the signing secrets.

    `cookie` and `address` identify *anonymous* callers: listing either is how anonymous
    access is enabled. Without them, a caller no resolver knows gets 401.
    """

    resolvers: tuple[ResolverName, ...] = ("host_user", "bearer")
    # Oldest first, newest last: the newest signs, every one verifies (key rotation).
    secrets: tuple[str, ...] = ()
    max_token_ttl: float = 30 * 86400.0  # seconds; longer-lived bearer tokens are refused
    request_id_ttl: float = 86400.0  # seconds a signed request id stays valid
    cookie_name: str = "flux_anon"
    cookie_max_age: int = 30 * 86400
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    # Addresses (or CIDR networks) of reverse proxies whose X-Forwarded-For/Forwarded we believe.
    trusted_proxies: tuple[str, ...] = ()
    # Host-app users usually log in with a session cookie: check Origin on their writes too.
    csrf_host_user: bool = True
    # In demo mode (local queue, demo worker only: nothing costs money) callers no resolver
    # knows are identified by address, so the first run works with no config at all.
    demo_anonymous: bool = True

    def validate(self, key: str) -> None:
        # Imported here: proxy.settings imports this module to build `Settings`.
        from ..settings import ConfigError, Secret

        object.__setattr__(self, "secrets", tuple(Secret(s) for s in self.secrets))
        if not self.resolvers:
            raise ConfigError(f"{key}.resolvers", "must name at least one resolver")
        if len(set(self.resolvers)) != len(self.resolvers):
            raise ConfigError(f"{key}.resolvers", "lists a resolver twice")
        for i, secret in enumerate(self.secrets):
            if len(secret) < 16:
                raise ConfigError(f"{key}.secrets[{i}]", "must be at least 16 characters")
        if not self.secrets and "cookie" in self.resolvers:
            raise ConfigError(
                f"{key}.secrets",
                "the cookie resolver needs a signing secret: set identity.secrets "
                "(e.g. FLUX_PROXY__IDENTITY__SECRETS='[\"<random 32+ chars>\"]')",
            )
        for name in ("max_token_ttl", "request_id_ttl"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{key}.{name}", "must be a positive number of seconds")
        if not self.cookie_name.isidentifier():
            raise ConfigError(f"{key}.cookie_name", "must be a plain name (letters, digits, _)")
        for i, net in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{key}.trusted_proxies[{i}]", f"{net!r} is not an IP address or network"
                ) from None
