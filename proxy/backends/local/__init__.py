"""The local queue backend: the proxy is fal's queue in front of self-hosted workers."""

from ... import settings as _settings  # noqa: F401  (load order: proxy.settings first)
