"""Run the real ``@fal-ai/client`` (tests/js/flows.mjs) from Python tests.

    from tests.js_client import run_flow
    out = run_flow("subscribe-polling", proxy.url + "/api/fal/proxy", logs=True)
    assert out["ok"], out

Output shape (one JSON object):
    {"ok": True, "result": ..., "requestId": ..., "updates": [...], "events": [...]}
    {"ok": False, "error": {"name", "status", "body", "message", "requestId", "timeoutType"},
     "requestId": ..., "updates": [...], "events": [...]}

The client retries 429/502/503/504 (status polls: also 500) with 1 s, 2 s, 4 s ... back-off,
so flows that hit those take several seconds; pass a larger ``timeout`` there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["JS_DIR", "FlowError", "js_harness_available", "run_flow"]

JS_DIR = Path(__file__).resolve().parent / "js"
FLOWS_MJS = JS_DIR / "flows.mjs"


class FlowError(RuntimeError):
    """The harness itself failed (no JSON line, non-zero exit, timeout)."""


def js_harness_available() -> bool:
    """True when node is on PATH and tests/js/node_modules holds @fal-ai/client."""
    return (
        shutil.which("node") is not None
        and (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir()
    )


def _check_harness() -> str:
    node = shutil.which("node")
    if node is None:
        raise FlowError("node is not on PATH; the JS harness needs Node >= 18")
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        raise FlowError(
            f"{JS_DIR / 'node_modules'} is missing: run `npm ci --prefix tests/js` first"
        )
    return node


def run_flow(
    flow: str,
    proxy_url: str,
    *,
    timeout: float = 30,
    endpoint: str | None = None,
    input: Any = None,
    credentials: str | None = None,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    request_id: str | None = None,
    logs: bool = False,
    poll_interval: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run one flow of tests/js/flows.mjs against ``proxy_url`` and return its JSON output.

    ``input`` is JSON-encoded (dict) or passed verbatim (str). ``headers`` are added to every
    proxied request through the client's ``requestMiddleware``. FAL_KEY* env vars are removed.
    Raises :class:`FlowError` when the harness fails (not when the flow reports ``ok: false``).
    """
    node = _check_harness()
    args: list[str] = [node, str(FLOWS_MJS), flow, "--proxy", proxy_url]
    if endpoint is not None:
        args += ["--endpoint", endpoint]
    if input is not None:
        args += ["--input", input if isinstance(input, str) else json.dumps(input)]
    if credentials is not None:
        args += ["--credentials", credentials]
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    for name, value in items:
        args += ["--header", f"{name}={value}"]
    if request_id is not None:
        args += ["--request-id", request_id]
    if logs:
        args.append("--logs")
    if poll_interval is not None:
        args += ["--poll-interval", str(poll_interval)]

    proc_env = {
        k: v for k, v in os.environ.items() if k not in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET")
    }
    proc_env.setdefault("NODE_NO_WARNINGS", "1")
    if env:
        proc_env.update(env)
    try:
        proc = subprocess.run(
            args, cwd=JS_DIR, env=proc_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise FlowError(
            f"flow {flow!r} timed out after {timeout}s\n"
            f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}"
        ) from exc
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise FlowError(
            f"flow {flow!r} failed (exit {proc.returncode})\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    try:
        out: dict[str, Any] = json.loads(lines[-1])
    except ValueError as exc:
        raise FlowError(
            f"flow {flow!r}: bad JSON line {lines[-1]!r}\nstderr: {proc.stderr}"
        ) from exc
    out.setdefault("stderr", proc.stderr)
    return out
