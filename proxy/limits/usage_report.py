"""`flux-proxy usage`: read the usage accounting from the shared store and print it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from ..settings import Settings
from .store import DayUsage, open_backing, recent_days

__all__ = ["print_usage", "read_usage"]


async def read_usage(settings: Settings, user: str | None, days: int) -> list[DayUsage]:
    backing = open_backing(settings.limits)
    try:
        return await backing.usage.read(recent_days(days), user)
    finally:
        await backing.aclose()


def print_usage(settings: Settings, *, user: str | None, days: int, as_json: bool) -> int:
    """Exit 0 with a table (or JSON lines); 1 when usage cannot be read from here."""
    if not settings.limits.uses_redis:
        print("flux-proxy: usage is kept in the serving process's memory (limits.storage = "
              "memory://); configure limits.storage = redis://... to read it from here",
              file=sys.stderr)
        return 1
    try:
        rows = asyncio.run(read_usage(settings, user, max(1, days)))
    except Exception as exc:  # the store's errors (redis-py's among them): report, exit 1
        print(f"flux-proxy: cannot read usage from {settings.limits.storage}: {exc}",
              file=sys.stderr)
        return 1
    if as_json:
        for row in rows:
            print(json.dumps(dataclasses.asdict(row)))
        return 0
    print(f"{'day':<10}  {'caller':<40}  {'requests':>8}  {'images':>6}  {'cost':>9}")
    for row in rows:
        print(f"{row.day:<10}  {row.caller:<40}  {row.requests:>8}  {row.images:>6}  "
              f"{row.cost:>9.2f}")
    return 0
