"""The access log's direct output: what `flux-proxy serve` writes instead of going through the
logging module (embedded, lines still go through `logging`: test_proxy_hosted.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import select

import pytest

from proxy.cli import _serving
from proxy.context import Outcome, ProxyRequest
from proxy.observability import AccessLog
from proxy.settings import settings_from_dict
from proxy.target import parse_target

STATUS = "https://queue.fal.run/fal-ai/flux/requests/2b5e4c1a-7d3f-4e8b-9a61-0c4f2d8e9b17/status"


class _Counting(io.StringIO):
    """A stream that counts its writes and keeps their sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    @property
    def writes(self) -> int:
        return len(self.sizes)

    def write(self, text: str) -> int:
        self.sizes.append(len(text))
        return super().write(text)


def _request() -> ProxyRequest:
    scope = {"type": "http", "method": "GET", "headers": []}
    return ProxyRequest(scope=scope, method="GET", headers=[],
                        target=parse_target(STATUS, "GET"))


async def test_lines_of_one_loop_turn_are_written_together_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flux_proxy.access")  # as `flux-proxy serve` sets it
    stream = _Counting()
    log = AccessLog(stream=stream)
    for status in (200, 202, 404):
        log.record({}, _request(), Outcome(status=status, upstream_status=status), 0.0)
    assert stream.writes == 0  # nothing yet: the turn is not over
    await asyncio.sleep(0)
    assert stream.writes == 1
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["flux_proxy.access"] * 3
    entries = [json.loads(line.split(" ", 1)[1]) for line in lines]
    assert [e["status"] for e in entries] == [200, 202, 404]
    assert {e["op"] for e in entries} == {"status"} and entries[0]["endpoint"] == "fal-ai/flux"
    log.record({}, _request(), Outcome(status=200), 0.0)  # a later turn: a write of its own
    await asyncio.sleep(0)
    assert stream.writes == 2 and len(stream.getvalue().splitlines()) == 4
    assert not caplog.records  # none of it went through logging


async def test_the_access_loggers_level_still_decides() -> None:
    stream = _Counting()
    logger = logging.getLogger("flux_proxy.access.test-level")
    log = AccessLog(logger=logger, stream=stream)
    logger.setLevel(logging.INFO)
    log.record({}, _request(), Outcome(status=200), 0.0)
    logger.setLevel(logging.WARNING)  # e.g. `[log] level = "warning"`
    log.record({}, _request(), Outcome(status=404), 0.0)
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flux_proxy.access.test-level {")
    assert json.loads(lines[0].split(" ", 1)[1])["status"] == 200


def test_without_a_running_loop_a_line_is_written_at_once_and_a_closed_stream_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flux_proxy.access")
    stream = io.StringIO()
    log = AccessLog(stream=stream)
    log.record({}, _request(), Outcome(status=200), 0.0)
    assert stream.getvalue().startswith('flux_proxy.access {"method":"GET"')
    stream.close()
    log.record({}, _request(), Outcome(status=200), 0.0)  # must not raise into the request


def test_serve_writes_access_lines_itself_unless_told_to_use_logging() -> None:
    assert _serving(settings_from_dict({})).log.access_output == "stderr"
    chosen = settings_from_dict({"log": {"access_output": "logging"}})
    assert _serving(chosen).log.access_output == "logging"
    assert settings_from_dict({}).log.access_output == "auto"  # embedded: through logging


async def test_a_busy_turn_is_written_in_whole_lines_of_at_most_a_pipes_atomic_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Several workers share one stderr: a pipe keeps writes up to PIPE_BUF whole."""
    caplog.set_level(logging.INFO, logger="flux_proxy.access")
    stream = _Counting()
    log = AccessLog(stream=stream)
    for status in range(200, 300):  # ~100 lines of ~120 bytes: ~12 KB in one turn
        log.record({}, _request(), Outcome(status=status), 0.0)
    await asyncio.sleep(0)
    assert 1 < stream.writes < 10
    assert all(size <= select.PIPE_BUF for size in stream.sizes)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line.split(" ", 1)[1])["status"] for line in lines] == list(range(200, 300))


def test_lines_left_by_a_loop_that_stopped_are_written_with_the_next_loops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flux_proxy.access")
    stream = _Counting()
    log = AccessLog(stream=stream)

    async def one(status: int) -> None:
        log.record({}, _request(), Outcome(status=status), 0.0)

    async def one_as_the_loop_stops() -> None:
        asyncio.get_running_loop().stop()  # this turn is its last: the flush never runs
        await one(201)

    stopped = asyncio.new_event_loop()
    stopped.run_until_complete(one_as_the_loop_stops())
    stopped.close()
    assert stream.getvalue() == ""

    async def next_loop() -> None:
        await one(202)
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    statuses = [json.loads(line.split(" ", 1)[1])["status"]
                for line in stream.getvalue().splitlines()]
    assert statuses == [201, 202]
