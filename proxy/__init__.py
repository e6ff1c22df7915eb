"""flux-proxy: a secure, fast server-side proxy for fal's JavaScript client."""

__version__ = "0.1.0"
