"""Local FLUX.1 [dev] GPU worker speaking the fal-style worker contract (see docs/worker.md).

Only pure-Python pieces are imported here so ``import proxy.worker`` works without torch.
"""

from __future__ import annotations

from proxy.worker.settings import WorkerSettings

__all__ = ["WorkerSettings"]
