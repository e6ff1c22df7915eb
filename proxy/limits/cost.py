"""What a request costs, in units: one 1024x1024 FLUX image at 28 steps is 1 unit.

A cost function reads the parsed input and returns units (a float >= 0). Malformed
cost-relevant fields are refused with fal's own 422 shape before anything is sent, so a
caller cannot dodge the quota with `"num_images": "9"`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from ..errors import ProxyError
from ..fal_sizes import DEFAULT_IMAGE_SIZE, IMAGE_SIZES

__all__ = ["CostFunction", "flux_cost", "images_cost", "parse_input", "request_cost",
           "requested_images", "resolve_cost_function"]

CostFunction = Callable[[Any], float]

DEFAULT_SIZE = DEFAULT_IMAGE_SIZE
DEFAULT_STEPS = 28
_MEGAPIXEL = 1024 * 1024
_MEGAPIXELS = {name: width * height / _MEGAPIXEL for name, (width, height) in IMAGE_SIZES.items()}


def _invalid(field: str, msg: str, value: Any) -> ProxyError:
    return ProxyError(422, [{"loc": ["body", field], "msg": msg, "type": "value_error",
                             "input": value}])


def _positive_int(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(name, "Input should be a positive integer", value)
    return value


def _pixels(data: dict[str, Any]) -> int:
    size = data.get("image_size", DEFAULT_SIZE)
    if size is None:
        size = DEFAULT_SIZE
    if isinstance(size, str):
        if size not in IMAGE_SIZES:
            raise _invalid("image_size", f"Input should be one of {', '.join(IMAGE_SIZES)}"
                           " or {width, height}", size)
        width, height = IMAGE_SIZES[size]
        return width * height
    if isinstance(size, dict):
        return _positive_int(size, "width", 1024) * _positive_int(size, "height", 768)
    raise _invalid("image_size", "Input should be a size name or {width, height}", size)


def flux_cost(data: Any) -> float:
    """num_images x megapixels x steps / 28 (defaults: 1 image, landscape_4_3, 28 steps)."""
    if not isinstance(data, dict):
        return 1.0  # not an input object: the upstream refuses it (and refusals are free)
    # Runs for every billed request: plain values are read inline; anything else (absent
    # sizes, None, malformed values) goes through the checks that explain a refusal.
    images = data.get("num_images", 1)
    if type(images) is not int or images < 1:
        images = _positive_int(data, "num_images", 1)
    steps = data.get("num_inference_steps", DEFAULT_STEPS)
    if type(steps) is not int or steps < 1:
        steps = _positive_int(data, "num_inference_steps", DEFAULT_STEPS)
    size = data.get("image_size", DEFAULT_SIZE)
    megapixels = _MEGAPIXELS.get(size) if type(size) is str else None
    if megapixels is None:
        megapixels = _pixels(data) / _MEGAPIXEL
    return images * megapixels * (steps / DEFAULT_STEPS)


def images_cost(data: Any) -> float:
    """One unit per requested image."""
    return float(_positive_int(data, "num_images", 1)) if isinstance(data, dict) else 1.0


def request_cost(data: Any) -> float:
    """One unit per request, whatever it asks for."""
    return 1.0


_BUILTIN: dict[str, CostFunction] = {
    "flux": flux_cost, "images": images_cost, "request": request_cost,
}


def resolve_cost_function(name: str) -> CostFunction:
    """A built-in name, or `package.module:function` imported once at start-up."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    module_name, _, attr = name.partition(":")
    function = getattr(importlib.import_module(module_name), attr)
    if not callable(function):
        raise TypeError(f"cost function {name!r} is not callable")
    resolved: CostFunction = function
    return resolved


def parse_input(body: bytes) -> Any:
    """The parsed JSON body, or None when it is not JSON (the upstream will refuse it)."""
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def requested_images(data: Any) -> int:
    """How many images the input asks for (1 when unsaid)."""
    if isinstance(data, dict):
        value = data.get("num_images", 1)
        if type(value) is int and value > 0:  # (not a bool)
            return value
    return 1
