"""``flux-proxy worker``: argument wiring and process entry (torch only imported in ``run``).

The project's main CLI (``proxy/cli.py``) calls :func:`add_arguments` on its ``worker``
sub-parser and :func:`run` with the parsed namespace.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import cast

from proxy.worker.settings import DEFAULT_ENDPOINT, NsfwChecker, WorkerSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the worker's flags on ``parser``."""
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="DIR",
        help="FLUX.1 [dev] pipeline directory in diffusers format (loaded offline)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8010, help="bind port (default 8010)")
    parser.add_argument(
        "--endpoint",
        action="append",
        dest="endpoints",
        metavar="ID",
        help=f"endpoint id to serve, repeatable (default {DEFAULT_ENDPOINT})",
    )
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32"],
        default=None,
        help="weights/activations dtype (default bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer; compiled during the start-up warm-up",
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch default)",
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        help="torchao float8 dynamic quantisation of the transformer (needs SM >= 8.9)",
    )
    parser.add_argument(
        "--fuse-qkv", action="store_true", help="fuse attention q/k/v projections (speed)"
    )
    parser.add_argument(
        "--offload",
        choices=["none", "model", "sequential"],
        default="none",
        help="CPU offload for smaller GPUs: model (moderate) or sequential (least VRAM, slow)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the start-up generation (not recommended with --compile)",
    )
    parser.add_argument(
        "--warmup-size",
        default="landscape_4_3",
        help='fal image_size for warm-up: a name or JSON like {"width":1024,"height":1024}',
    )
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=2048, help="largest width/height")
    parser.add_argument(
        "--nsfw-checker",
        default=None,
        metavar="MODULE:FUNC",
        help="import path of a function(list[PIL.Image]) -> list[bool]",
    )
    parser.add_argument("--log-level", default="info")


def _load_checker(spec: str) -> NsfwChecker:
    mod_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--nsfw-checker must look like module:function, got {spec!r}")
    return cast(NsfwChecker, getattr(importlib.import_module(mod_name), attr))


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    """Translate parsed flags into :class:`WorkerSettings`."""
    warmup_size: str | dict[str, int] = args.warmup_size
    if isinstance(warmup_size, str) and warmup_size.lstrip().startswith("{"):
        warmup_size = json.loads(warmup_size)
    return WorkerSettings(
        model_dir=args.model,
        host=args.host,
        port=args.port,
        endpoints=tuple(args.endpoints or [DEFAULT_ENDPOINT]),
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        compile_mode=args.compile_mode,
        fp8=args.fp8,
        fuse_qkv=args.fuse_qkv,
        offload=args.offload,
        warmup=args.warmup,
        warmup_image_size=warmup_size,
        warmup_steps=args.warmup_steps,
        max_side=args.max_side,
        nsfw_checker=_load_checker(args.nsfw_checker) if args.nsfw_checker else None,
        log_level=args.log_level,
        exit_on_load_failure=True,
    )


def run(args: argparse.Namespace) -> int:
    """Validate, then serve until interrupted. Returns the process exit code."""
    from proxy.worker.pipeline import ModelDirError, UnsupportedOption, check_model_dir, preflight

    try:
        settings = settings_from_args(args)
        check_model_dir(settings.model_dir)  # cheap, before the slow torch import
    except (ModelDirError, ValueError, ImportError, AttributeError) as exc:
        return _fail(str(exc))
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return _fail(f"{exc}. Install the GPU extra: pip install 'flux-proxy[gpu]'")
    try:
        preflight(settings)
    except UnsupportedOption as exc:
        return _fail(str(exc))
    import uvicorn

    from proxy.worker.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    state = app.state.worker
    if state.error:
        print(f"flux-proxy worker: error: {state.error}", file=sys.stderr)
        return 1
    return 0


def _fail(message: str) -> int:
    print(f"flux-proxy worker: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m proxy.worker.cli``) until the main CLI wires it in."""
    parser = argparse.ArgumentParser(prog="flux-proxy worker", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
