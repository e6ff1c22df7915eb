"""Backends: where a proxied request is finally answered (fal's hosted API, or our own queue)."""

from .base import Backend, BufferedResponse, UpstreamError, UpstreamResponse

__all__ = ["Backend", "BufferedResponse", "UpstreamError", "UpstreamResponse"]
