"""What an identified caller may do: allowlist, ownership, input policy, CORS, CSRF, tokens."""

from .settings import CorsSettings, InputPolicy, PolicySettings, TokenSettings

__all__ = ["CorsSettings", "InputPolicy", "PolicySettings", "TokenSettings"]
