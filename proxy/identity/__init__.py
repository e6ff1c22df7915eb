"""Who is calling: a chain of resolvers (host user, signed bearer, anonymous cookie, address)."""

from .resolvers import build_identify
from .settings import IdentitySettings
from .tokens import TokenError, issue_token, verify_token

__all__ = ["IdentitySettings", "TokenError", "build_identify", "issue_token", "verify_token"]
