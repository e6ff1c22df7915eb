"""Fixtures for the worker tests (helpers live in ``helpers.py`` so tests can import them)."""

from __future__ import annotations

from .helpers import idle_worker, tiny_model_dir, worker

__all__ = ["idle_worker", "tiny_model_dir", "worker"]
