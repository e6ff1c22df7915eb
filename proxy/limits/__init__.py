"""Per-caller budgets (submit rate, cost quota, polling, concurrency) and a global cost cap."""

from .. import settings as _settings  # noqa: F401  (load order: proxy.settings first)
