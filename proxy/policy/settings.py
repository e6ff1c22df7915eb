"""The `[policy]` settings section: which endpoints, which inputs, which origins, which tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CorsSettings", "InputPolicy", "PolicySettings", "TokenSettings"]

DEFAULT_ENDPOINT = "fal-ai/flux/dev"


@dataclass(frozen=True, slots=True)
class InputPolicy:
    """Caps and rules for one endpoint's input, checked before anything is sent upstream."""

    max_num_images: int = 4
    max_pixels: int = 1024 * 1024  # width x height; `square_hd` is the largest preset
    max_side: int = 2048  # pixels, for a custom {width, height}
    max_steps: int = 50  # num_inference_steps
    max_prompt_chars: int = 2000
    output_formats: tuple[str, ...] = ("jpeg", "png")
    force_safety_checker: bool = True  # the upstream always gets enable_safety_checker=true
    allow_sync_mode: bool = False  # sync_mode returns the image inline instead of a CDN URL
    clamp: bool = False  # over a cap: lower num_images/steps to the cap instead of refusing
    defaults: dict[str, Any] = field(default_factory=dict)  # set when the caller omits them
    # `fal_webhook` passes only when it starts with one of these; otherwise it is removed.
    webhook_prefixes: tuple[str, ...] = ()

    def validate(self, key: str) -> None:
        from ..settings import ConfigError  # proxy.settings imports this module

        for name in ("max_num_images", "max_pixels", "max_side", "max_steps",
                     "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}", "must be at least 1")
        for i, prefix in enumerate(self.webhook_prefixes):
            parts = urlsplit(prefix)
            if parts.scheme != "https" or not parts.hostname or not parts.path.startswith("/"):
                raise ConfigError(
                    f"{key}.webhook_prefixes[{i}]",
                    "must be an https URL with a path, e.g. 'https://app.example.com/hooks/' "
                    "(a bare host would also match app.example.com.evil.net)",
                )


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """Browsers on these exact origins may call the proxy cross-origin. Empty: same-origin."""

    origins: tuple[str, ...] = ()
    allow_credentials: bool = False  # let cross-origin pages send cookies (the anon cookie)
    max_age: int = 600  # seconds a browser caches a preflight answer

    def validate(self, key: str) -> None:
        from ..settings import ConfigError  # proxy.settings imports this module

        for i, origin in enumerate(self.origins):
            parts = urlsplit(origin)
            if (
                origin == "*" or parts.scheme not in ("http", "https") or not parts.hostname
                or parts.path or parts.query or parts.fragment or origin.endswith("/")
            ):
                raise ConfigError(
                    f"{key}.origins[{i}]",
                    f"{origin!r} is not an exact origin like 'https://app.example.com' "
                    "('*' is never accepted)",
                )


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """Temporary fal tokens (`rest.fal.ai/tokens/`): the browser then talks to fal directly."""

    enabled: bool = False
    max_expiration: int = 120  # seconds; longer requests are lowered to this

    def validate(self, key: str) -> None:
        from ..settings import ConfigError  # proxy.settings imports this module

        if not 1 <= self.max_expiration <= 3600:
            raise ConfigError(f"{key}.max_expiration", "must be between 1 and 3600 seconds")


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """What identified callers may do."""

    # Glob patterns over endpoint ids (`*` also crosses '/'); applies to every operation.
    allow: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    allow_uploads: bool = False  # storage initiate (the fal client's auto-upload of Blobs)
    # Bind request ids to their submitter (signed ids). Turn off only where every caller may
    # see every request (one trusted tenant, load tests that replay fixed ids).
    ownership: bool = True
    # Input rules by endpoint id or glob: an exact key wins, else the first matching glob;
    # endpoints matching none get the defaults.
    inputs: dict[str, InputPolicy] = field(
        default_factory=lambda: {DEFAULT_ENDPOINT: InputPolicy()}
    )
    cors: CorsSettings = field(default_factory=CorsSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)

    def validate(self, key: str) -> None:
        from ..settings import ConfigError  # proxy.settings imports this module

        for i, pattern in enumerate(self.allow):
            if not pattern or pattern != pattern.strip() or pattern.startswith("/"):
                raise ConfigError(f"{key}.allow[{i}]", f"{pattern!r} is not an endpoint glob")
