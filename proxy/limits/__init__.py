"""Per-caller budgets (submit rate, cost quota, polling, concurrency) and a global cost cap."""

from .. import settings as _settings  # noqa: F401  (load order: proxy.settings first)


def compiled() -> bool:
    """Whether the guards run as the modules setup.py compiles with mypyc (about half the
    CPU per guarded request), not from their sources: pure Python where no compiler was."""
    from . import guard

    return not (guard.__file__ or "").endswith(".py")
