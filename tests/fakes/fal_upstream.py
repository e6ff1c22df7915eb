"""An offline fake of fal's hosted API (fal.run, queue.fal.run, rest.fal.ai) for tests.

Follows /work/shared/fal-wire-protocol.md (§3, §4, §5, §7, checklist §10).

All three fal hosts are served by ONE raw ASGI app on one port, under path prefixes::

    http://127.0.0.1:PORT/fal.run/...        (sync run + SSE stream)
    http://127.0.0.1:PORT/queue.fal.run/...  (queue)
    http://127.0.0.1:PORT/rest.fal.ai/...    (storage initiate, tokens)

plus "direct" routes that clients hit without the proxy: ``/_upload/{token}``,
``/_mp/{token}/{n}``, ``/_mp/{token}/complete``, ``/files/...``.

Usage::

    fake = FakeFal()
    with fake:                       # or fake.start() / fake.stop()
        fake.queue_base              # -> "http://127.0.0.1:PORT/queue.fal.run"
        ...
        fake.requests(host="queue.fal.run", method="POST")

``FakeFal`` is itself an ASGI app, so it can also be mounted/served by other means; then
set ``fake.base_url`` yourself (otherwise it is derived from the request's Host header).

Jobs progress by wall-clock time (no background tasks): IN_QUEUE for ``queue_seconds``,
IN_PROGRESS for ``run_seconds`` (emitting step logs), then COMPLETED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

__all__ = ["FLUX_IMAGE_SIZES", "FakeFal", "Job", "Recorded"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

FAL_HOSTS = ("fal.run", "queue.fal.run", "rest.fal.ai")

FLUX_IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_IMAGE_SIZE = "landscape_4_3"

PROMPT_MISSING = {
    "detail": [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]
}
INVALID_JSON = {
    "detail": [
        {"loc": ["body"], "msg": "Input should be a valid JSON object", "type": "json_invalid"}
    ]
}

DEFAULTS: dict[str, Any] = {
    "queue_seconds": 0.15,
    "run_seconds": 0.3,
    "log_steps": 4,
    "keepalive_seconds": 15.0,
    "stream_events": 3,
    "stream_delay": 0.05,
    "slow_seconds": 5.0,
}

# 1x1 placeholders served for generated image URLs
_PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000050001"
    "0d0a2db40000000049454e44ae426082"
)
_JPEG_STUB = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")

def _generated_image(name: str) -> tuple[bytes, str]:
    """A real image of the size named in the URL (`<digest>-<W>x<H>.<ext>`), so a browser
    renders it at the size the output claims."""
    import io

    from PIL import Image

    stem, _, ext = name.rpartition(".")
    fmt, ctype = ("PNG", "image/png") if ext == "png" else ("JPEG", "image/jpeg")
    m = re.search(r"-(\d{1,4})x(\d{1,4})$", stem)
    if not m:
        return (_PNG_1X1, "image/png") if ext == "png" else (_JPEG_STUB, "image/jpeg")
    buf = io.BytesIO()
    Image.new("RGB", (int(m.group(1)), int(m.group(2))), (200, 90, 40)).save(buf, fmt)
    return buf.getvalue(), ctype


_REQ_RE = re.compile(
    r"^/(?P<app>.+?)/requests/(?P<id>[^/]+)"
    r"(?P<op>/status/stream|/status|/cancel)?/?$"
)


@dataclass
class Recorded:
    """One request as the fake received it (recorded before any auth check)."""

    method: str
    host: str  # "fal.run" | "queue.fal.run" | "rest.fal.ai" | "direct"
    path: str  # without the host prefix, e.g. "/fal-ai/flux/dev"
    query: str  # raw query string
    headers: dict[str, str]  # lower-case keys, repeated headers joined with ", "
    body: bytes
    time: float = field(default_factory=time.monotonic, repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Job:
    request_id: str
    app_id: str  # owner/alias (or ns/owner/alias)
    endpoint_id: str  # full id as submitted, e.g. fal-ai/flux/dev
    input: Any
    headers: dict[str, str]
    webhook: str | None
    created: float
    queue_seconds: float
    run_seconds: float
    log_steps: int
    # result once computed: (status_code, body, extra headers)
    error_result: tuple[int, Any, dict[str, str]] | None = None
    error: str | None = None
    error_type: str | None = None
    cancelled_at: float | None = None
    created_wall: float = field(default_factory=time.time)

    @property
    def started_at(self) -> float:
        return self.created + self.queue_seconds

    @property
    def completed_at(self) -> float:
        if self.cancelled_at is not None:
            return min(self.cancelled_at, self.created + self.queue_seconds + self.run_seconds)
        return self.created + self.queue_seconds + self.run_seconds

    def state(self, now: float) -> str:
        if now >= self.completed_at:
            return "COMPLETED"
        if now >= self.started_at:
            return "IN_PROGRESS"
        return "IN_QUEUE"

    def logs(self, now: float) -> list[dict[str, Any]]:
        if now < self.started_at:
            return []
        n = self.log_steps
        if n <= 0:
            return []
        end = self.completed_at
        if now >= end:
            # on cancel only the steps that ran before cancellation
            if self.cancelled_at is not None and self.cancelled_at < self.started_at:
                return []
            done = n if self.cancelled_at is None else self._steps_at(end)
        else:
            done = self._steps_at(now)
        start_wall = self.created_wall + self.queue_seconds
        step = self.run_seconds / n
        return [
            {
                "message": f"step {i + 1}/{n}",
                "level": "INFO",
                "source": "USER",
                "timestamp": datetime.fromtimestamp(start_wall + i * step, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
            }
            for i in range(done)
        ]

    def _steps_at(self, t: float) -> int:
        if self.run_seconds <= 0:
            return self.log_steps
        frac = (t - self.started_at) / self.run_seconds
        return max(0, min(self.log_steps, int(frac * self.log_steps) + 1))


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _app_id(endpoint_id: str) -> str | None:
    parts = [p for p in endpoint_id.split("/") if p]
    if not parts:
        return None
    n = 3 if parts[0] in ("workflows", "comfy") else 2
    if len(parts) < n:
        return None
    return "/".join(parts[:n])


def _logs_flag(query: dict[str, list[str]]) -> bool:
    v = (query.get("logs") or ["0"])[-1].strip().lower()
    return v in ("1", "true", "yes", "on")


class _Resp:
    """Minimal response value: status, headers (list), body bytes."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ):
        self.status = status
        self.body = body
        self.headers = headers or []


class FakeFal:
    """Fake fal upstream. See module docstring.

    Knobs (plain attributes, reset by ``reset()``): ``queue_seconds``, ``run_seconds``,
    ``log_steps``, ``keepalive_seconds``, ``stream_events``, ``stream_delay``, ``slow_seconds``.
    Observation: ``records``, ``jobs``, ``uploads``, ``streams_open``, ``stream_disconnects``,
    ``slow_disconnects``.
    """

    def __init__(self, key: str = "test-fal-key") -> None:
        self.key = key
        self.base_url: str | None = None
        self._server: Any = None
        self._lock = threading.Lock()
        self.records: list[Recorded] = []
        self.jobs: dict[str, Job] = {}
        self.uploads: dict[str, tuple[str, bytes]] = {}
        self.upload_tokens: dict[str, str] = {}  # token -> file_name
        self.multipart: dict[str, dict[int, bytes]] = {}
        self.streams_open = 0
        self.stream_disconnects = 0
        self.slow_disconnects = 0
        self.queue_seconds: float = DEFAULTS["queue_seconds"]
        self.run_seconds: float = DEFAULTS["run_seconds"]
        self.log_steps: int = DEFAULTS["log_steps"]
        self.keepalive_seconds: float = DEFAULTS["keepalive_seconds"]
        self.stream_events: int = DEFAULTS["stream_events"]
        self.stream_delay: float = DEFAULTS["stream_delay"]
        self.slow_seconds: float = DEFAULTS["slow_seconds"]

    # ------------------------------------------------------------------ lifecycle
    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeFal:
        from tests.fakes.server import ServerHandle

        self._server = ServerHandle(self, host, port, lifespan="off", timeout_graceful_shutdown=1.0)
        self._server.start()
        self.base_url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeFal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port if self._server is not None else 0

    @property
    def run_base(self) -> str:
        return f"{self.base_url}/fal.run"

    @property
    def queue_base(self) -> str:
        return f"{self.base_url}/queue.fal.run"

    @property
    def rest_base(self) -> str:
        return f"{self.base_url}/rest.fal.ai"

    @property
    def host_map(self) -> dict[str, str]:
        """Real fal host -> prefixed base URL on this fake."""
        return {
            "fal.run": self.run_base,
            "queue.fal.run": self.queue_base,
            "rest.fal.ai": self.rest_base,
        }

    # ------------------------------------------------------------------ helpers for tests
    def clear(self) -> None:
        """Forget recorded requests (jobs, uploads and counters stay)."""
        with self._lock:
            self.records.clear()

    def reset(self) -> None:
        """Clear records, jobs, uploads, counters and restore every knob to its default."""
        with self._lock:
            self.records.clear()
        self.jobs.clear()
        self.uploads.clear()
        self.upload_tokens.clear()
        self.multipart.clear()
        self.stream_disconnects = 0
        self.slow_disconnects = 0
        for k, v in DEFAULTS.items():
            setattr(self, k, v)

    def requests(
        self, host: str | None = None, method: str | None = None, path_prefix: str | None = None
    ) -> list[Recorded]:
        with self._lock:
            recs = list(self.records)
        return [
            r
            for r in recs
            if (host is None or r.host == host)
            and (method is None or r.method == method.upper())
            and (path_prefix is None or r.path.startswith(path_prefix))
        ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` (from a sync test) until true; raise AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            time.sleep(0.01)
        return True

    async def wait_for_async(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.01)
        return True

    def flux_output(self, inp: dict[str, Any], base_url: str | None = None) -> dict[str, Any]:
        """The deterministic FLUX output the fake produces for ``inp``."""
        base = base_url or self.base_url or ""
        size = inp.get("image_size", DEFAULT_IMAGE_SIZE)
        if isinstance(size, dict):
            w, h = int(size.get("width", 1024)), int(size.get("height", 768))
        else:
            w, h = FLUX_IMAGE_SIZES.get(str(size), FLUX_IMAGE_SIZES[DEFAULT_IMAGE_SIZE])
        fmt = inp.get("output_format", "jpeg")
        ext, ctype = ("png", "image/png") if fmt == "png" else ("jpeg", "image/jpeg")
        n = inp.get("num_images", 1)
        n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        digest = hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()[:16]
        image = {
            "url": f"{base}/files/gen/{digest}-{w}x{h}.{ext}",
            "width": w,
            "height": h,
            "content_type": ctype,
        }
        return {
            "images": [dict(image) for _ in range(n)],
            "timings": {"inference": 0.01},
            "seed": inp.get("seed", 1234),
            "has_nsfw_concepts": [False] * n,
            "prompt": inp["prompt"],
        }

    # ------------------------------------------------------------------ ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return

        body = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break

        full_path: str = scope["path"]
        host = "direct"
        path = full_path
        for h in FAL_HOSTS:
            prefix = "/" + h
            if full_path == prefix or full_path.startswith(prefix + "/"):
                host, path = h, full_path[len(prefix) :] or "/"
                break
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            name = k.decode("latin-1").lower()
            val = v.decode("latin-1")
            headers[name] = f"{headers[name]}, {val}" if name in headers else val
        rec = Recorded(
            method=scope["method"].upper(),
            host=host,
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
        )
        with self._lock:
            self.records.append(rec)

        base = self.base_url or self._derive_base(scope, headers)
        ctx = _Ctx(self, scope, receive, send, rec, base)
        try:
            resp = await ctx.dispatch()
        except _ClientGone:
            return
        if resp is not None:
            await ctx.send_response(resp)

    @staticmethod
    def _derive_base(scope: Scope, headers: dict[str, str]) -> str:
        if "host" in headers:
            return f"{scope.get('scheme', 'http')}://{headers['host']}"
        server = scope.get("server") or ("127.0.0.1", 80)
        return f"http://{server[0]}:{server[1]}"


class _ClientGone(Exception):
    pass


class _Ctx:
    """Per-request handling."""

    def __init__(
        self, fake: FakeFal, scope: Scope, receive: Receive, send: Send, rec: Recorded, base: str
    ) -> None:
        self.fake = fake
        self.scope = scope
        self.receive = receive
        self.send = send
        self.rec = rec
        self.base = base
        self.query = parse_qs(rec.query, keep_blank_values=True)

    # ----------------------------------------------------------- response helpers
    def json(
        self,
        status: int,
        obj: Any,
        request_id: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> _Resp:
        hdrs = [
            ("content-type", "application/json"),
            ("x-fal-request-id", request_id or str(uuid.uuid4())),
        ]
        if self.rec.host == "direct":
            hdrs += self._cors()
        return _Resp(status, _json_bytes(obj), hdrs + (headers or []))

    @staticmethod
    def _cors() -> list[tuple[str, str]]:
        return [
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "PUT, POST, GET, OPTIONS"),
            ("access-control-allow-headers", "content-type"),
            ("access-control-expose-headers", "etag, x-fal-request-id"),
            ("access-control-max-age", "600"),
        ]

    def not_found(self) -> _Resp:
        return self.json(404, {"detail": "Not found"})

    async def send_response(self, resp: _Resp) -> None:
        headers = [(k.encode(), v.encode()) for k, v in resp.headers]
        headers.append((b"content-length", str(len(resp.body)).encode()))
        try:
            await self.send(
                {"type": "http.response.start", "status": resp.status, "headers": headers}
            )
            await self.send({"type": "http.response.body", "body": resp.body})
        except OSError:
            pass

    def _authorized(self) -> bool:
        auth = self.rec.headers.get("authorization", "")
        if auth == f"Key {self.fake.key}":
            return True
        # client-mode streaming (§4.3): token in the query instead of Authorization
        return (self.query.get("fal_jwt_token") or [""])[
            -1
        ] == "fake.jwt.token" and self.rec.host in ("fal.run", "queue.fal.run")

    def _parse_input(self) -> tuple[Any, _Resp | None]:
        """Parse the JSON body; return (input, None) or (None, 422 response)."""
        try:
            inp = json.loads(self.rec.body) if self.rec.body.strip() else None
        except (ValueError, UnicodeDecodeError):
            return None, self.json(422, INVALID_JSON)
        if not isinstance(inp, dict):
            return None, self.json(422, INVALID_JSON if inp is not None else PROMPT_MISSING)
        return inp, None

    @staticmethod
    def _validate(inp: Any) -> dict[str, Any] | None:
        if not isinstance(inp, dict) or not isinstance(inp.get("prompt"), str):
            return PROMPT_MISSING
        return None

    async def _wait_or_disconnect(self, seconds: float) -> bool:
        """Sleep ``seconds``; return False early if the client disconnects."""
        watcher = asyncio.ensure_future(self._wait_disconnect())
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
        if watcher in done:
            return False
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        return True

    async def _wait_disconnect(self) -> None:
        while True:
            msg = await self.receive()
            if msg["type"] == "http.disconnect":
                return

    # ----------------------------------------------------------- dispatch
    async def dispatch(self) -> _Resp | None:
        rec = self.rec
        if rec.host == "direct":
            return await self.direct()
        if not self._authorized():
            return self.json(401, {"detail": "Invalid API key"})
        if rec.host == "fal.run":
            return await self.run_host()
        if rec.host == "queue.fal.run":
            return await self.queue_host()
        return await self.rest_host()

    async def _special(self, endpoint_id: str) -> _Resp | None:
        """Special error-test endpoints; returns a response or None for normal handling."""
        ep = endpoint_id.strip("/")
        if ep.startswith("fal-ai/fake/slow"):
            if not await self._wait_or_disconnect(self.fake.slow_seconds):
                self.fake.slow_disconnects += 1
                raise _ClientGone
            return None
        if ep.startswith("fal-ai/fake/error500"):
            return self.json(500, {"detail": "boom"})
        if ep.startswith("fal-ai/fake/timeout-user"):
            return self.json(
                504,
                {"detail": "Request timed out", "error_type": "request_timeout"},
                headers=[
                    ("x-fal-request-timeout-type", "user"),
                    ("x-fal-error-type", "request_timeout"),
                ],
            )
        return None

    # ----------------------------------------------------------- fal.run
    async def run_host(self) -> _Resp | None:
        rec = self.rec
        endpoint = rec.path.strip("/")
        if rec.method != "POST" or _app_id(endpoint) is None:
            return self.not_found()
        is_stream = endpoint.endswith("/stream")
        if is_stream:
            endpoint = endpoint[: -len("/stream")]
            if _app_id(endpoint) is None:
                return self.not_found()
        special = await self._special(endpoint)
        if special is not None:
            return special
        inp, err = self._parse_input()
        if err is not None:
            return err
        invalid = self._validate(inp)
        if invalid is not None:
            return self.json(422, invalid)
        output = self.fake.flux_output(inp, self.base)
        if not is_stream:
            return self.json(200, output)
        await self.stream_run(output)
        return None

    async def stream_run(self, output: dict[str, Any]) -> None:
        fake = self.fake
        n, delay = fake.stream_events, fake.stream_delay

        async def produce(emit: Callable[[bytes], Awaitable[None]]) -> None:
            for i in range(n):
                await emit(_sse({"partial": i, "step": i + 1, "total": n, "images": []}))
                await asyncio.sleep(delay)
            await emit(_sse(output))

        await self._sse_response(produce, str(uuid.uuid4()))

    async def _sse_response(
        self,
        produce: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]],
        request_id: str,
    ) -> None:
        """Send an SSE response driven by ``produce``; count opens and client disconnects."""
        fake = self.fake
        fake.streams_open += 1
        gone = False
        try:
            await self.send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-fal-request-id", request_id.encode()),
                    ],
                }
            )

            async def emit(chunk: bytes) -> None:
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

            producer = asyncio.ensure_future(produce(emit))
            watcher = asyncio.ensure_future(self._wait_disconnect())
            done, _ = await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if producer in done:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
                exc = producer.exception()
                if exc is not None:
                    if isinstance(exc, OSError):
                        gone = True
                    else:
                        raise exc
            else:
                gone = True
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producer
            if not gone:
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            gone = True
        finally:
            if gone:
                fake.stream_disconnects += 1
            fake.streams_open -= 1

    # ----------------------------------------------------------- queue.fal.run
    def _urls(self, job: Job) -> dict[str, str]:
        resp_url = f"{self.base}/queue.fal.run/{job.app_id}/requests/{job.request_id}"
        return {
            "request_id": job.request_id,
            "response_url": resp_url,
            "status_url": f"{resp_url}/status",
            "cancel_url": f"{resp_url}/cancel",
        }

    async def queue_host(self) -> _Resp | None:
        rec = self.rec
        m = _REQ_RE.match(rec.path)
        if m is not None and _app_id(m["app"]) == m["app"]:
            op = m["op"] or ""
            expected = "PUT" if op == "/cancel" else "GET"
            if rec.method != expected:
                return self.json(405, {"detail": "Method Not Allowed"})
            job = self.fake.jobs.get(m["id"])
            if job is not None and job.app_id != m["app"]:
                job = None
            if op == "/cancel":
                return self.cancel(job, m["id"])
            if job is None:
                return self.json(404, {"detail": "Request not found"}, m["id"])
            if op == "/status":
                return self.status(job)
            if op == "/status/stream":
                await self.status_stream(job)
                return None
            return self.result(job)
        if rec.method == "POST":
            return await self.submit()
        return self.not_found()

    async def submit(self) -> _Resp | None:
        endpoint = self.rec.path.strip("/")
        app_id = _app_id(endpoint)
        if app_id is None:
            return self.not_found()
        special = await self._special(endpoint)
        if special is not None:
            return special
        fake = self.fake
        inp, err = self._parse_input()
        if err is not None:
            return err
        job = Job(
            request_id=str(uuid.uuid4()),
            app_id=app_id,
            endpoint_id=endpoint,
            input=inp,
            headers=dict(self.rec.headers),
            webhook=(self.query.get("fal_webhook") or [None])[-1],
            created=time.monotonic(),
            queue_seconds=fake.queue_seconds,
            run_seconds=fake.run_seconds,
            log_steps=fake.log_steps,
        )
        invalid = self._validate(inp)
        if invalid is not None:
            job.error_result = (422, invalid, {})
            job.error = "Unprocessable Entity"
            job.error_type = "validation_error"
        fake.jobs[job.request_id] = job
        return self.json(
            200, {"status": "IN_QUEUE", **self._urls(job), "queue_position": 0}, job.request_id
        )

    def _status_body(self, job: Job, now: float, with_logs: bool) -> dict[str, Any]:
        state = job.state(now)
        body: dict[str, Any] = {"status": state}
        if state == "IN_QUEUE":
            body["queue_position"] = 0
        else:
            body["logs"] = job.logs(now) if with_logs else None
        if state == "COMPLETED":
            elapsed = max(0.0, job.completed_at - job.started_at)
            body["metrics"] = {"inference_time": round(elapsed, 4)}
            if job.error is not None:
                body["error"] = job.error
                body["error_type"] = job.error_type
        body.update(self._urls(job))
        return body

    def status(self, job: Job) -> _Resp:
        body = self._status_body(job, time.monotonic(), _logs_flag(self.query))
        return self.json(200 if body["status"] == "COMPLETED" else 202, body, job.request_id)

    async def status_stream(self, job: Job) -> None:
        fake = self.fake
        with_logs = _logs_flag(self.query)

        async def produce(emit: Callable[[bytes], Awaitable[None]]) -> None:
            # Like fal, each event carries only the log lines that are new since the previous
            # event (the JS client concatenates them in subscribe({mode: "streaming"})).
            last_state, sent_logs = None, 0
            last_sent = time.monotonic()
            while True:
                now = time.monotonic()
                state = job.state(now)
                logs = job.logs(now) if with_logs else []
                if state != last_state or len(logs) != sent_logs:
                    body = self._status_body(job, now, with_logs)
                    if with_logs and "logs" in body:
                        body["logs"] = logs[sent_logs:]
                    await emit(_sse(body))
                    last_state, sent_logs, last_sent = state, len(logs), now
                    if state == "COMPLETED":
                        return
                elif now - last_sent >= fake.keepalive_seconds:
                    await emit(b": ping\n\n")
                    last_sent = now
                await asyncio.sleep(0.01)

        await self._sse_response(produce, job.request_id)

    def result(self, job: Job) -> _Resp:
        if job.state(time.monotonic()) != "COMPLETED":
            return self.json(400, {"detail": "Request is still in progress"}, job.request_id)
        if job.error_result is not None:
            status, body, extra = job.error_result
            return self.json(status, body, job.request_id, list(extra.items()))
        return self.json(200, self.fake.flux_output(job.input, self.base), job.request_id)

    def cancel(self, job: Job | None, request_id: str) -> _Resp:
        if job is None:
            return self.json(404, {"status": "NOT_FOUND"}, request_id)
        now = time.monotonic()
        if job.state(now) == "COMPLETED":
            return self.json(400, {"status": "ALREADY_COMPLETED"}, job.request_id)
        job.cancelled_at = now
        job.error = "Request cancelled"
        job.error_type = "client_cancelled"
        job.error_result = (
            400,
            {"detail": "Request was cancelled", "error_type": "client_cancelled"},
            {"x-fal-error-type": "client_cancelled"},
        )
        return self.json(202, {"status": "CANCELLATION_REQUESTED"}, job.request_id)

    # ----------------------------------------------------------- rest.fal.ai
    async def rest_host(self) -> _Resp | None:
        rec = self.rec
        path = rec.path.rstrip("/") or "/"
        if rec.method == "POST" and path in (
            "/storage/upload/initiate",
            "/storage/upload/initiate-multipart",
        ):
            try:
                body = json.loads(rec.body) if rec.body.strip() else {}
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return self.json(422, INVALID_JSON)
            file_name = str(body.get("file_name") or "upload.bin")
            token = uuid.uuid4().hex
            self.fake.upload_tokens[token] = file_name
            kind = "_mp" if path.endswith("multipart") else "_upload"
            return self.json(
                200,
                {
                    "upload_url": f"{self.base}/{kind}/{token}?sig=x",
                    "file_url": f"{self.base}/files/{token}/{quote(file_name)}",
                },
            )
        if rec.method == "POST" and path == "/tokens":
            return self.json(201, "fake.jwt.token")
        return self.not_found()

    # ----------------------------------------------------------- direct routes
    async def direct(self) -> _Resp | None:
        rec = self.rec
        parts = [p for p in rec.path.split("/") if p]
        if rec.method == "OPTIONS" and parts and parts[0] in ("_upload", "_mp", "files"):
            return _Resp(204, b"", self._cors())
        fake = self.fake
        if parts[:1] == ["_upload"] and len(parts) == 2 and rec.method == "PUT":
            token = parts[1]
            if token not in fake.upload_tokens:
                return self.not_found()
            ctype = rec.headers.get("content-type", "application/octet-stream")
            fake.uploads[token] = (ctype, rec.body)
            return _Resp(200, b"", self._cors())
        if parts[:1] == ["_mp"] and len(parts) == 3:
            token = parts[1]
            if token not in fake.upload_tokens:
                return self.not_found()
            chunks = fake.multipart.setdefault(token, {})
            if parts[2] == "complete" and rec.method == "POST":
                data = b"".join(chunks[k] for k in sorted(chunks))
                fake.uploads[token] = ("application/octet-stream", data)
                return self.json(200, {})
            if parts[2].isdigit() and rec.method == "PUT":
                n = int(parts[2])
                chunks[n] = rec.body
                etag = f'"{hashlib.md5(rec.body).hexdigest()}"'
                return self.json(200, {"partNumber": n, "etag": etag}, headers=[("etag", etag)])
            return self.not_found()
        if parts[:1] == ["files"] and rec.method in ("GET", "HEAD"):
            if len(parts) == 3 and parts[1] == "gen":
                data, ctype = _generated_image(parts[2])
                return _Resp(200, data, [("content-type", ctype), *self._cors()])
            if len(parts) == 3 and parts[1] in fake.uploads:
                ctype, data = fake.uploads[parts[1]]
                return _Resp(200, data, [("content-type", ctype), *self._cors()])
            return self.not_found()
        return self.not_found()


def _sse(obj: Any) -> bytes:
    return b"data: " + _json_bytes(obj) + b"\n\n"
