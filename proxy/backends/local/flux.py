"""FLUX.1 [dev] input: validated and completed before a job is queued (fal's 422 shape)."""

from __future__ import annotations

import secrets
from typing import Any

from ...fal_sizes import IMAGE_SIZES

__all__ = ["IMAGE_SIZES", "InputError", "image_size", "normalize_input"]

_MAX_SIDE = 2048


class InputError(Exception):
    """Invalid input; `detail` is fal's list of field errors."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["msg"])
        self.detail = detail


def _err(field: str, msg: str, kind: str, value: Any = None) -> InputError:
    return InputError([{"loc": ["body", field], "msg": msg, "type": kind, "input": value}])


def _int(inp: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = inp.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(name, "Input should be a valid integer", "int_type", value)
    if not lo <= value <= hi:
        raise _err(name, f"Input should be between {lo} and {hi}", "range", value)
    return value


def image_size(value: Any) -> tuple[int, int]:
    """(width, height) of fal's `image_size`: a preset name or {width, height}."""
    if isinstance(value, str):
        if value not in IMAGE_SIZES:
            raise _err("image_size", f"Input should be one of {', '.join(IMAGE_SIZES)}",
                       "enum", value)
        return IMAGE_SIZES[value]
    if isinstance(value, dict):
        w, h = value.get("width"), value.get("height")
        if (isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool)
                and not isinstance(h, bool) and 64 <= w <= _MAX_SIDE and 64 <= h <= _MAX_SIDE):
            return w, h
        raise _err("image_size", f"width and height must be integers from 64 to {_MAX_SIDE}",
                   "value_error", value)
    raise _err("image_size", "Input should be a preset name or {width, height}", "type", value)


def normalize_input(raw: Any, default_steps: int) -> dict[str, Any]:
    """The input with defaults filled in (including a fixed seed), or `InputError`."""
    if not isinstance(raw, dict):
        raise InputError([{"loc": ["body"], "msg": "Input should be a JSON object",
                           "type": "dict_type"}])
    prompt = raw.get("prompt")
    if prompt is None:
        raise _err("prompt", "Field required", "missing")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _err("prompt", "Input should be a non-empty string", "string_type", prompt)
    inp = dict(raw)
    width, height = image_size(raw.get("image_size", "landscape_4_3"))
    inp["image_size"] = {"width": width, "height": height}
    inp["num_inference_steps"] = _int(raw, "num_inference_steps", default_steps, 1, 50)
    inp["num_images"] = _int(raw, "num_images", 1, 1, 4)
    seed = raw.get("seed")
    inp["seed"] = secrets.randbelow(2**31) if seed is None else _int(raw, "seed", 0, 0, 2**63)
    guidance = raw.get("guidance_scale", 3.5)
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not (
            1 <= guidance <= 20):
        raise _err("guidance_scale", "Input should be a number between 1 and 20", "range",
                   guidance)
    inp["guidance_scale"] = guidance
    fmt = raw.get("output_format", "jpeg")
    if fmt not in ("jpeg", "png"):
        raise _err("output_format", "Input should be 'jpeg' or 'png'", "enum", fmt)
    inp["output_format"] = fmt
    for flag in ("sync_mode", "enable_safety_checker"):
        value = raw.get(flag, flag == "enable_safety_checker")
        if not isinstance(value, bool):
            raise _err(flag, "Input should be a valid boolean", "bool_type", value)
        inp[flag] = value
    return inp
