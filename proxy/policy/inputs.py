"""Input policy: the caller's JSON is checked (and perhaps adjusted) before it is sent.

Violations are answered 422 in fal's validation shape, `{"detail": [{"loc", "msg", "type"}]}`,
so the fal client raises `ValidationError` with field errors; a body that is not JSON is 415.
Nothing reaches the upstream in either case. Adjustments (the forced safety checker, clamps,
defaults) set `json_dirty`, so the backend re-encodes the body; an untouched body is forwarded
byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from ..context import ProxyRequest
from ..errors import ProxyError
from ..fal_sizes import IMAGE_SIZES
from ..target import Operation
from .settings import InputPolicy

__all__ = ["IMAGE_SIZES", "InputPolice", "parse_json_body"]

_JSON_OPS = frozenset({Operation.RUN, Operation.STREAM, Operation.SUBMIT, Operation.TOKEN,
                       Operation.STORAGE_INITIATE, Operation.STORAGE_INITIATE_MULTIPART})
_MODEL_OPS = frozenset({Operation.RUN, Operation.STREAM, Operation.SUBMIT})

Problem = dict[str, Any]


def _problem(field: str, msg: str, kind: str, **ctx: Any) -> Problem:
    out: Problem = {"loc": ["body", field], "msg": msg, "type": kind}
    if ctx:
        out["ctx"] = ctx
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json_body(request: ProxyRequest) -> dict[str, Any]:
    """`request.json` as an object, parsed once; 415 for non-JSON, 422 for a non-object."""
    if isinstance(request.json, dict):
        return request.json
    ctype = (request.header(b"content-type") or "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise ProxyError(415, f"request body must be JSON (application/json), not {ctype!r}")
    if not request.body.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(request.body, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as exc:
            # We check one value and forward the bytes: the upstream must not read another.
            raise ProxyError(422, [{"loc": ["body", exc.key], "msg": "duplicate key in JSON",
                                    "type": "value_error"}]) from None
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ProxyError(415, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProxyError(422, [{"loc": ["body"], "msg": "Input should be a valid dictionary",
                                "type": "dict_type"}])
    request.json = data
    return data


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class InputPolice:
    """The police stage for model inputs, webhooks and JSON bodies."""

    def __init__(self, rules: Mapping[str, InputPolicy]) -> None:
        self._rules = list(rules.items())
        self._exact = dict(rules)
        self._default = InputPolicy()

    def policy_for(self, endpoint_id: str) -> InputPolicy:
        """The entry named exactly for this endpoint, else the first glob that matches."""
        exact = self._exact.get(endpoint_id)
        if exact is not None:
            return exact
        for pattern, policy in self._rules:
            if fnmatchcase(endpoint_id, pattern):
                return policy
        return self._default

    def __call__(self, request: ProxyRequest) -> None:
        op = request.target.operation
        if op not in _JSON_OPS:
            return
        data = parse_json_body(request)
        if op not in _MODEL_OPS:
            return
        policy = self.policy_for(request.target.endpoint_id or "")
        problems = self.check(policy, data, request)
        if problems:
            raise ProxyError(422, problems)
        if op is Operation.SUBMIT:
            _police_webhook(policy, request)

    def check(self, p: InputPolicy, data: dict[str, Any], request: ProxyRequest) -> list[Problem]:
        """Every violation at once (like fal), after applying defaults and clamps."""
        problems: list[Problem] = []

        def set_value(key: str, value: Any) -> None:
            data[key] = value
            request.json_dirty = True

        for key, value in p.defaults.items():
            if key not in data:
                set_value(key, value)
        for key, cap in (("num_images", p.max_num_images), ("num_inference_steps", p.max_steps)):
            if key not in data:
                continue
            value = data[key]
            if not _int(value) or value < 1:
                problems.append(_problem(key, "Input should be a positive integer", "int_type"))
            elif value > cap:
                if p.clamp:
                    set_value(key, cap)
                else:
                    problems.append(_problem(
                        key, f"Input should be less than or equal to {cap}", "less_than_equal",
                        le=cap))
        problems += _check_size(p, data.get("image_size"))
        prompt = data.get("prompt")
        if isinstance(prompt, str) and len(prompt) > p.max_prompt_chars:
            problems.append(_problem(
                "prompt", f"String should have at most {p.max_prompt_chars} characters",
                "string_too_long", max_length=p.max_prompt_chars))
        if "output_format" in data and data["output_format"] not in p.output_formats:
            choices = " or ".join(repr(f) for f in p.output_formats)
            problems.append(_problem("output_format", f"Input should be {choices}",
                                     "literal_error", expected=choices))
        if "sync_mode" in data and data["sync_mode"] not in (False, None) \
                and not p.allow_sync_mode:
            problems.append(_problem("sync_mode", "sync_mode is not allowed on this proxy",
                                     "value_error"))
        if p.force_safety_checker and "enable_safety_checker" in data \
                and data["enable_safety_checker"] is not True:
            set_value("enable_safety_checker", True)
        return problems


def _check_size(p: InputPolicy, size: Any) -> list[Problem]:
    if size is None:
        return []
    if isinstance(size, str):
        if size not in IMAGE_SIZES:
            return [_problem("image_size", "Input should be one of "
                             + ", ".join(repr(s) for s in IMAGE_SIZES), "enum")]
        width, height = IMAGE_SIZES[size]
    elif isinstance(size, dict) and _int(size.get("width")) and _int(size.get("height")):
        width, height = size["width"], size["height"]
        if not (1 <= width <= p.max_side and 1 <= height <= p.max_side):
            return [_problem("image_size", f"width and height should be between 1 and "
                             f"{p.max_side}", "less_than_equal", le=p.max_side)]
    else:
        return [_problem("image_size", "Input should be a size name or {width, height} "
                         "integers", "model_type")]
    if width * height > p.max_pixels:
        return [_problem("image_size", f"Image should have at most {p.max_pixels} pixels "
                         f"(got {width}x{height})", "less_than_equal", le=p.max_pixels)]
    return []


def _police_webhook(p: InputPolicy, request: ProxyRequest) -> None:
    """Drop `fal_webhook` unless it starts with a configured prefix."""
    target = request.target
    kept = tuple(
        (name, value) for name, value in target.query
        if name != "fal_webhook" or value.startswith(p.webhook_prefixes or ("\0",))
    )
    if kept != target.query:
        request.target = dataclasses.replace(target, query=kept)
        request.notes["webhook_stripped"] = True
