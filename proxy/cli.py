"""`flux-proxy serve | check-config | token issue | usage | worker`: the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .settings import ConfigError, Settings, load_settings

__all__ = ["app_factory", "main"]


def _load(config: str | None) -> Settings:
    return load_settings(config)


def _serving(settings: Settings) -> Settings:
    """`settings` as `flux-proxy serve` runs them: it owns the process's logging (stderr, as
    `_configure_logging` sets it up), so access lines skip the logging module there."""
    if settings.log.access_output != "auto":
        return settings
    return dataclasses.replace(
        settings, log=dataclasses.replace(settings.log, access_output="stderr"))


def _configure_logging(settings: Settings) -> None:
    # The logging HOWTO's "Optimization" switches: the access log writes a line per request
    # and needs no caller frame, thread or process names (saves a few µs per line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(
        level=settings.log.level.upper(), stream=sys.stderr, format="%(name)s %(message)s"
    )


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections on the request path.

    Everything imported and built at start-up lives for the whole process: `gc.freeze()` moves
    it out of the collector's sight, and a larger first-generation threshold runs collections
    less often (a proxied request allocates many short-lived objects, few of them cyclic).
    Opt out with FLUX_PROXY_GC_TUNING=0. No `gc.collect()` first: at this point it finds no
    garbage (0 objects in hosted mode) yet walks every object, ~15-20 ms of cold start here.
    """
    if os.environ.get("FLUX_PROXY_GC_TUNING", "1") == "0":
        return
    import gc

    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def app_factory() -> object:
    """uvicorn factory for multi-worker serving: settings come from FLUX_PROXY_CONFIG + env."""
    from .app import create_app

    settings = _serving(load_settings())
    _configure_logging(settings)
    app = create_app(settings)
    _tune_gc()
    return app


def _describe_mode(settings: Settings) -> str:
    from .backends.router import serving_mode

    mode = serving_mode(settings)
    if mode == "hosted":
        return f"hosted fal API via {settings.upstream.queue}"
    workers = settings.local.worker_list()
    local = settings.local
    jobs = f"Redis at {local.redis_url}" if local.store == "redis" else local.data_dir
    if mode == "demo":
        return (f"DEMO MODE: local queue with the demo worker (placeholder images, no GPU, no "
                f"fal key); jobs in {jobs}")
    names = ", ".join(f"{w.name} ({w.kind})" for w in workers)
    return f"local queue with workers {names}; jobs in {jobs}"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.config:
        os.environ["FLUX_PROXY_CONFIG"] = str(args.config)  # for worker processes
    settings = _serving(_load(args.config))
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers or settings.server.workers
    _configure_logging(settings)
    from .app import create_app

    app = create_app(settings)  # validates the whole set-up before binding the port
    mode = _describe_mode(settings)
    print(
        f"flux-proxy {__version__} listening on http://{host}:{port} "
        f"(proxy route {settings.server.route}, {mode})",
        file=sys.stderr, flush=True,
    )
    from .http_protocol import http_protocol

    # ws="none": nothing here speaks websockets, and uvicorn's "auto" imports the websockets
    # package (~15 ms of cold start) just in case.
    common = dict(
        host=host, port=port, loop="auto", http=http_protocol(settings.server), ws="none",
        access_log=False, log_level=settings.log.level, server_header=False, proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    _tune_gc()
    if workers > 1:
        uvicorn.run("proxy.cli:app_factory", factory=True, workers=workers, **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(app, **common)  # type: ignore[arg-type]
    return 0


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    from .assemble import build_pipeline

    build_pipeline(settings)  # same checks as start-up (e.g. a key for hosted mode)
    print(json.dumps(settings.public_dict(), indent=2))
    return 0


def _token_issue(args: argparse.Namespace) -> int:
    from .identity.tokens import issue_token, parse_ttl

    settings = _load(args.config)
    if not settings.identity.secrets:
        raise ConfigError("identity.secrets", "set a signing secret to issue tokens")
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        print(f"flux-proxy: {exc}", file=sys.stderr)
        return 2
    if ttl > settings.identity.max_token_ttl:
        raise ConfigError("identity.max_token_ttl",
                          f"--ttl {args.ttl} is longer than the proxy accepts")
    print(issue_token(args.user, ttl, settings))
    return 0


def _usage(args: argparse.Namespace) -> int:
    from .limits.usage_report import print_usage

    return print_usage(_load(args.config), user=args.user, days=args.days,
                       as_json=args.json)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; the worker's flags only when `command` is "worker".

    Wiring them imports the worker's settings, which `serve` (and its cold start) need not pay.
    """
    parser = argparse.ArgumentParser(
        prog="flux-proxy", description="A secure, fast proxy for fal's @fal-ai/client."
    )
    parser.add_argument("--version", action="version", version=f"flux-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy server")
    serve.add_argument("--host", default=None, help="bind address (default from config)")
    serve.add_argument("--port", type=int, default=None, help="port (default from config)")
    serve.add_argument("--config", default=None, help="TOML config file (or FLUX_PROXY_CONFIG)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes")
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate and print the effective settings")
    check.add_argument("--config", default=None, help="TOML config file (or FLUX_PROXY_CONFIG)")
    check.set_defaults(func=_check_config)

    token = sub.add_parser("token", help="bearer tokens for your users")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    issue = token_sub.add_parser("issue", help="print a signed bearer token for a user")
    issue.add_argument("--user", required=True, help="the user id the token stands for")
    issue.add_argument("--ttl", default="1h", help="lifetime: 3600, 15m, 1h, 7d (default 1h)")
    issue.add_argument("--config", default=None, help="TOML config file (or FLUX_PROXY_CONFIG)")
    issue.set_defaults(func=_token_issue)

    usage = sub.add_parser("usage", help="requests, images and cost units per caller and day")
    usage.add_argument("--user", default=None, help="one caller id (e.g. ip:203.0.113.7)")
    usage.add_argument("--days", type=int, default=1, help="how many days back (default 1)")
    usage.add_argument("--json", action="store_true", help="one JSON object per line")
    usage.add_argument("--config", default=None, help="TOML config file (or FLUX_PROXY_CONFIG)")
    usage.set_defaults(func=_usage)

    worker = sub.add_parser(
        "worker", help="run a local FLUX.1 [dev] GPU worker (needs the 'gpu' extra)",
        description="Serve FLUX.1 [dev] from a local diffusers-format directory over the "
                    "fal-style worker contract; point the proxy's [[local.workers]] at it. "
                    "Guide and contract: docs/worker.md.",
    )
    if command == "worker":
        from .worker import cli as worker_cli  # argument wiring only; torch loads in run()

        worker_cli.add_arguments(worker)
        worker.set_defaults(func=worker_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # No global option takes a value, so the first word is the sub-command (or an option).
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"flux-proxy: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
