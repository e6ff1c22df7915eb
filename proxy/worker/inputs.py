"""Validation of fal's FLUX.1 [dev] input JSON and ``image_size`` mapping.

Pure Python (no torch) so the proxy and tests can import it cheaply. Errors are collected
in FastAPI/pydantic's 422 shape (``{"detail": [{"loc", "msg", "type"}]}``), which is what
fal returns and what ``@fal-ai/client`` surfaces as a ``ValidationError``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from proxy.fal_sizes import DEFAULT_IMAGE_SIZE, IMAGE_SIZES

OutputFormat = Literal["jpeg", "png"]

#: FLUX needs multiples of 16 (VAE factor 8 x 2x2 latent patches).
SIZE_MULTIPLE = 16
MIN_SIDE = 16
MAX_STEPS = 50
MAX_IMAGES = 4
_SEED_MIN = -(2**63)
_SEED_MAX = 2**64 - 1


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: everything the pipeline needs, with defaults applied."""

    prompt: str
    width: int
    height: int
    num_inference_steps: int = 28
    seed: int = 0
    guidance_scale: float = 3.5
    num_images: int = 1
    output_format: OutputFormat = "jpeg"
    enable_safety_checker: bool = True


class InputValidationError(ValueError):
    """Raised with the fal/pydantic-shaped error list; rendered as a 422."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors

    @property
    def body(self) -> dict[str, Any]:
        """The JSON body of the 422 response."""
        return {"detail": self.errors}


def _err(loc: tuple[str | int, ...], msg: str, typ: str, **ctx: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"loc": ["body", *loc], "msg": msg, "type": typ}
    if ctx:
        e["ctx"] = ctx
    return e


def round_side(value: int, max_side: int) -> int:
    """Round a requested side to the nearest multiple of 16 inside [16, max_side]."""
    r = (value + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE
    top = max_side // SIZE_MULTIPLE * SIZE_MULTIPLE
    return max(MIN_SIDE, min(r, top))


def _as_int(value: Any) -> int | None:
    """Lax int coercion like pydantic: ints and integral floats; never bools."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int_field(
    body: dict[str, Any], name: str, default: int, lo: int, hi: int, errors: list[dict[str, Any]]
) -> int:
    if name not in body or body[name] is None:
        return default
    v = _as_int(body[name])
    if v is None:
        errors.append(_err((name,), "Input should be a valid integer", "int_type"))
        return default
    if v < lo:
        errors.append(
            _err(
                (name,),
                f"Input should be greater than or equal to {lo}",
                "greater_than_equal",
                ge=lo,
            )
        )
    elif v > hi:
        errors.append(
            _err((name,), f"Input should be less than or equal to {hi}", "less_than_equal", le=hi)
        )
    return v


def resolve_image_size(
    value: Any, max_side: int = 2048, errors: list[dict[str, Any]] | None = None
) -> tuple[int, int]:
    """Map fal's ``image_size`` (enum name or ``{"width","height"}``) to pixel (w, h).

    Custom sizes are rounded to multiples of 16; the caller reports the actual size.
    """
    errs: list[dict[str, Any]] = [] if errors is None else errors
    if value is None:
        return IMAGE_SIZES[DEFAULT_IMAGE_SIZE]
    if isinstance(value, str):
        if value in IMAGE_SIZES:
            return IMAGE_SIZES[value]
        names = ", ".join(f"'{n}'" for n in IMAGE_SIZES)
        errs.append(
            _err(
                ("image_size",),
                f"Input should be {names} or an object with width and height",
                "enum",
                expected=names,
            )
        )
    elif isinstance(value, dict):
        out: list[int] = []
        for key in ("width", "height"):
            raw = value.get(key, 512)  # fal's ImageSize defaults each side to 512
            v = _as_int(raw)
            if v is None:
                errs.append(
                    _err(("image_size", key), "Input should be a valid integer", "int_type")
                )
            elif v < MIN_SIDE:
                errs.append(
                    _err(
                        ("image_size", key),
                        f"Input should be greater than or equal to {MIN_SIDE}",
                        "greater_than_equal",
                        ge=MIN_SIDE,
                    )
                )
            elif v > max_side:
                errs.append(
                    _err(
                        ("image_size", key),
                        f"Input should be less than or equal to {max_side}",
                        "less_than_equal",
                        le=max_side,
                    )
                )
            else:
                out.append(round_side(v, max_side))
        if len(out) == 2:
            return out[0], out[1]
    else:
        errs.append(
            _err(
                ("image_size",),
                "Input should be a valid string or an object with width and height",
                "model_type",
            )
        )
    if errors is None:
        raise InputValidationError(errs)
    return IMAGE_SIZES[DEFAULT_IMAGE_SIZE]


def parse_request(body: Any, max_side: int = 2048) -> GenerationRequest:
    """Validate fal's FLUX.1 [dev] input JSON; unknown fields are ignored.

    Raises :class:`InputValidationError` listing every problem (not just the first).
    """
    if not isinstance(body, dict):
        raise InputValidationError(
            [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
        )
    errors: list[dict[str, Any]] = []

    prompt = body.get("prompt")
    if "prompt" not in body or prompt is None:
        errors.append(_err(("prompt",), "Field required", "missing"))
        prompt = ""
    elif not isinstance(prompt, str):
        errors.append(_err(("prompt",), "Input should be a valid string", "string_type"))
        prompt = ""

    width, height = resolve_image_size(body.get("image_size"), max_side, errors)
    steps = _int_field(body, "num_inference_steps", 28, 1, MAX_STEPS, errors)
    num_images = _int_field(body, "num_images", 1, 1, MAX_IMAGES, errors)

    seed_raw = body.get("seed")
    if seed_raw is None:
        seed = secrets.randbelow(2**32)
    else:
        s = _as_int(seed_raw)
        if s is None:
            errors.append(_err(("seed",), "Input should be a valid integer", "int_type"))
            seed = 0
        elif not _SEED_MIN <= s <= _SEED_MAX:
            errors.append(_err(("seed",), "Seed out of range", "value_error"))
            seed = 0
        else:
            seed = s

    guidance = 3.5
    if body.get("guidance_scale") is not None:
        g = _as_float(body["guidance_scale"])
        if g is None:
            errors.append(_err(("guidance_scale",), "Input should be a valid number", "float_type"))
        elif not 1.0 <= g <= 20.0:
            errors.append(
                _err(("guidance_scale",), "Input should be between 1 and 20", "value_error")
            )
        else:
            guidance = g

    fmt = body.get("output_format", "jpeg")
    if fmt is None:
        fmt = "jpeg"
    if fmt not in ("jpeg", "png"):
        errors.append(
            _err(
                ("output_format",),
                "Input should be 'jpeg' or 'png'",
                "enum",
                expected="'jpeg' or 'png'",
            )
        )
        fmt = "jpeg"

    safety = body.get("enable_safety_checker", True)
    if not isinstance(safety, bool):
        errors.append(
            _err(("enable_safety_checker",), "Input should be a valid boolean", "bool_type")
        )
        safety = True
    sync_mode = body.get("sync_mode", False)
    if sync_mode is not None and not isinstance(sync_mode, bool):
        errors.append(_err(("sync_mode",), "Input should be a valid boolean", "bool_type"))

    if errors:
        raise InputValidationError(errors)
    return GenerationRequest(
        prompt=prompt,
        width=width,
        height=height,
        num_inference_steps=steps,
        seed=seed,
        guidance_scale=guidance,
        num_images=num_images,
        output_format=fmt,
        enable_safety_checker=safety,
    )
