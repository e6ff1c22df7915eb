"""Budgets over real HTTP, in-process storage: exactness, cost, concurrency, polling, metrics."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from tests.fakes.fal_upstream import FakeFal
from tests.fakes.redis_server import RedisServer
from tests.js_client import run_flow
from tests.limits_support import (
    STREAM,
    SUBMIT,
    client,
    flux_input,
    metric,
    policy,
    queue_call,
    submit,
)
from tests.support import proxy_settings, proxy_url, running_proxy

OPEN: dict[str, Any] = {"enabled": True, "submit": "", "cost": "", "polling": "", "global_cost": "",
                        "concurrency": 0}


def limits(**overrides: Any) -> dict[str, Any]:
    return {**OPEN, **overrides}


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The same user-visible semantics in memory and in Redis (one Lua script per stage)."""
    if request.param == "memory":
        return {}
    redis: RedisServer = request.getfixturevalue("redis_server")
    return {"storage": redis.url, "key_prefix": f"t{uuid.uuid4().hex}"}


async def test_concurrent_submits_exactly_the_limit_reach_upstream(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    settings = proxy_settings(fake_fal, limits=limits(**store, submit="10/minute"))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        async with client() as http:
            answers = await asyncio.gather(*(submit(http, url) for _ in range(100)))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 10 and codes.count(429) == 90
    assert len(fake_fal.requests(host="queue.fal.run", method="POST")) == 10
    refused = next(r for r in answers if r.status_code == 429)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    body = refused.json()
    assert "submit" in body["detail"] and "10 per minute" in body["detail"]
    assert body["limit"]["budget"] == "submit" and body["error_type"] == "rate_limited"
    assert policy(refused)["submit-1-minute"]["r"] == 0
    accepted = [r for r in answers if r.status_code == 200]
    assert all(r.headers["ratelimit-policy"] == '"submit-1-minute";q=10;w=60' for r in accepted)
    assert sorted(policy(r)["submit-1-minute"]["r"] for r in accepted) == list(range(10))


async def test_concurrent_submits_never_overshoot_the_cost_quota(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    """Cost is taken at admission with the other budgets (and refunded if fal refuses), so
    requests checked at the same moment cannot spend more than the quota together."""
    settings = proxy_settings(fake_fal, limits=limits(**store, cost="10/day"))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        async with client() as http:
            answers = await asyncio.gather(*(submit(http, url, flux_input(2)) for _ in range(30)))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 5 and codes.count(429) == 25
    assert {r.json()["limit"]["budget"] for r in answers if r.status_code == 429} == {"cost"}
    assert len(fake_fal.requests(host="queue.fal.run", method="POST")) == 5


async def test_cost_follows_the_input_and_refusals_are_free(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    settings = proxy_settings(fake_fal, limits=limits(**store, cost="8/day", submit="100/minute"))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        async with client() as http:
            one = await submit(http, url, flux_input(1))
            assert one.status_code == 200 and policy(one)["cost-1-day"]["r"] == 7
            four = await submit(http, url, flux_input(4))
            assert four.status_code == 200 and policy(four)["cost-1-day"]["r"] == 3  # 4x
            refused_upstream = await submit(  # no prompt: fal refuses, so nothing is charged
                http, url, b'{"num_images": 1}', target="https://fal.run/fal-ai/flux/dev")
            assert refused_upstream.status_code == 422
            malformed = await submit(http, url, flux_input(images="4"))  # type: ignore[arg-type]
            assert malformed.status_code == 422
            assert malformed.json()["detail"][0]["loc"] == ["body", "num_images"]
            over = await submit(http, url, flux_input(4))
            assert over.status_code == 429 and over.json()["limit"]["budget"] == "cost"
            exact = await submit(http, url, flux_input(3))  # the 422 cost nothing: 3 left
            assert exact.status_code == 200 and policy(exact)["cost-1-day"]["r"] == 0
            small = await submit(http, url, flux_input(1, "square"))  # 0.25 units: none left
            assert small.status_code == 429
    # one, four, the upstream-refused call and exact: the malformed and over-quota never left
    assert len(fake_fal.requests(method="POST")) == 4


async def _wait_completed(http: httpx.AsyncClient, url: str, request_id: str) -> None:
    for _ in range(200):
        r = await queue_call(http, url, "GET", request_id)
        if r.json()["status"] == "COMPLETED":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("job never completed")


async def test_concurrency_released_on_completion_and_cancel(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    fake_fal.queue_seconds, fake_fal.run_seconds = 0.05, 0.05
    # the cap is on the endpoint; status and cancel name only the app and still release it
    settings = proxy_settings(fake_fal, limits=limits(
        **store,
        concurrency=0, endpoints={"fal-ai/flux/dev": {"concurrency": 1}}))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        async with client() as http:
            first = await submit(http, url)
            assert first.status_code == 200
            busy = await submit(http, url)
            assert busy.status_code == 429 and busy.json()["limit"]["budget"] == "concurrency"
            assert len(fake_fal.requests(method="POST")) == 1
            await _wait_completed(http, url, first.json()["request_id"])
            for _ in range(2):  # polled again after its slot was released: same answer
                again = await queue_call(http, url, "GET", first.json()["request_id"])
                assert again.status_code == 200 and again.json()["status"] == "COMPLETED"
            fake_fal.queue_seconds = 30
            second = await submit(http, url)  # the completion freed the slot
            assert second.status_code == 200
            assert (await submit(http, url)).status_code == 429
            cancel = await queue_call(http, url, "PUT", second.json()["request_id"], "/cancel")
            assert cancel.status_code == 202
            assert (await submit(http, url)).status_code == 200  # the cancel freed it
    assert len(fake_fal.requests(method="POST")) == 3


async def test_concurrency_released_when_a_stream_client_disconnects(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    fake_fal.stream_events, fake_fal.stream_delay = 50, 0.2
    settings = proxy_settings(fake_fal, limits=limits(**store, concurrency=1))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        base = url.rsplit("/api", 1)[0]
        headers = {"x-fal-target-url": STREAM, "content-type": "application/json"}
        async with client() as http:
            async with http.stream("POST", url, content=flux_input(), headers=headers) as r:
                assert r.status_code == 200
                events = r.aiter_raw()  # keep a reference: a collected iterator closes it
                await anext(events)  # the first event: the stream is open
                second = await submit(http, url, target=STREAM)
                assert second.status_code == 429
                gauges = (await http.get(f"{base}/metrics")).text
                assert metric(gauges, "flux_proxy_open_streams") == 1
            # closed mid-stream: the proxy sees the disconnect and frees the slot
            await fake_fal.wait_for_async(lambda: fake_fal.stream_disconnects == 1)
            fake_fal.stream_events, fake_fal.stream_delay = 1, 0.0
            for _ in range(100):
                again = await submit(http, url, target=STREAM)
                if again.status_code != 429:
                    break
                await asyncio.sleep(0.02)
            assert again.status_code == 200
            gauges = (await http.get(f"{base}/metrics")).text
    assert metric(gauges, "flux_proxy_open_streams") == 0
    assert metric(gauges, "flux_proxy_in_flight_requests") == 0
    assert len(fake_fal.requests(host="fal.run")) == 2


async def test_polling_bucket_exemptions_and_metrics(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    settings = proxy_settings(fake_fal, limits=limits(
        **store,
        submit="1/minute", polling="5/minute", exempt_callers=["ip:127.0.0.2"]))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        base = url.rsplit("/api", 1)[0]
        async with client() as http, client("127.0.0.2") as admin:
            rid = (await submit(http, url)).json()["request_id"]
            assert (await submit(http, url)).status_code == 429
            polls = [(await queue_call(http, url, "GET", rid)).status_code for _ in range(6)]
            assert polls[:5] != [429] * 5 and 429 not in polls[:5]  # submits spent, polls fine
            assert polls[5] == 429
            for _ in range(3):  # the exempt caller is not limited, and carries no headers
                r = await submit(admin, url)
                assert r.status_code == 200 and "ratelimit" not in r.headers
            text = (await http.get(f"{base}/metrics")).text
    assert len(fake_fal.requests(method="POST")) == 4
    assert len(fake_fal.requests(method="GET")) == 5
    assert metric(text, "flux_proxy_rate_limit_refusals_total",
                  budget="submit", reason="exceeded") == 1
    assert metric(text, "flux_proxy_rate_limit_refusals_total",
                  budget="polling", reason="exceeded") == 1
    assert metric(text, "flux_proxy_requests_total", operation="submit", status="200") == 4
    assert metric(text, "flux_proxy_requests_total", operation="submit", status="429") == 1
    assert metric(text, "flux_proxy_upstream_latency_seconds_count", operation="status") == 5
    assert metric(text, "flux_proxy_cost_units_total", endpoint="fal-ai/flux/dev") == 4


async def test_global_cost_cap_spans_callers(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    settings = proxy_settings(fake_fal, limits=limits(**store, global_cost="2/day", cost="10/day"))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        async with client() as alice, client("127.0.0.2") as bob:
            admitted = [await submit(alice, url), await submit(bob, url)]
            assert [r.status_code for r in admitted] == [200, 200]
            refused = [await submit(who, url) for who in (alice, bob)]
    assert all(r.status_code == 429 and r.json()["limit"]["budget"] == "global"
               for r in refused)
    assert len(fake_fal.requests(method="POST")) == 2
    # What is left of the owner's cap is not shown to callers: each sees its own quota only;
    # the refusal names the cap, and when it resets.
    assert [policy(r)["cost-1-day"]["r"] for r in admitted] == [9, 9]
    assert all("global" not in r.headers["ratelimit"] + r.headers["ratelimit-policy"]
               for r in admitted)
    assert all(policy(r)["global-1-day"]["r"] == 0 and policy(r)["global-1-day"]["t"] > 0
               for r in refused)
    assert all(r.headers["ratelimit-policy"] == '"global-1-day";q=2;w=86400' for r in refused)


def test_per_endpoint_override(fake_fal: FakeFal, store: dict[str, Any]) -> None:
    settings = proxy_settings(fake_fal, limits=limits(
        **store,
        submit="5/minute", endpoints={"fal-ai/flux/schnell": {"submit": "1/minute"}}))
    with running_proxy(settings) as server, httpx.Client(timeout=10) as http:
        url = proxy_url(server)
        schnell = {"x-fal-target-url": "https://queue.fal.run/fal-ai/flux/schnell"}
        assert http.post(url, content=flux_input(), headers=schnell).status_code == 200
        assert http.post(url, content=flux_input(), headers=schnell).status_code == 429
        dev = {"x-fal-target-url": SUBMIT}
        assert http.post(url, content=flux_input(), headers=dev).status_code == 200


def test_real_client_shows_a_429_without_a_retry_storm(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, limits=limits(submit="1/minute"))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        assert httpx.post(url, content=flux_input(), headers={
            "x-fal-target-url": SUBMIT}).status_code == 200
        out = run_flow("submit", url, input={"prompt": "a cat"}, timeout=40)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert out["ok"] is False, out
    assert out["error"]["status"] == 429
    assert "submit" in out["error"]["body"]["detail"]
    assert len(fake_fal.requests(method="POST")) == 1
    # the client's own bounded back-off: 1 try + 3 retries, then it gives up with the error
    assert metric(metrics, "flux_proxy_rate_limit_refusals_total",
                  budget="submit", reason="exceeded") == 4


async def test_every_budget_off_still_counts_usage(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    settings = proxy_settings(fake_fal, limits=limits(**store))
    with running_proxy(settings) as server:
        url, base = proxy_url(server), server.url
        async with client() as http:
            answers = [await submit(http, url) for _ in range(3)]
            text = (await http.get(f"{base}/metrics")).text
    assert [r.status_code for r in answers] == [200] * 3
    assert all("ratelimit" not in r.headers for r in answers)
    assert metric(text, "flux_proxy_cost_units_total", endpoint="fal-ai/flux/dev") == 3


async def test_every_window_of_each_strategy_counts_and_reports(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    # submit on sliding-window counters, cost on moving windows: both kinds, two windows each
    settings = proxy_settings(fake_fal, limits=limits(
        **store, strategy="sliding-window", cost_strategy="moving-window",
        submit="3/minute;5/hour", cost="2/minute;3/day"))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        async with client() as http:
            answers = [await submit(http, url, flux_input(1, "square")) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    first = answers[0]
    assert first.headers["ratelimit-policy"] == (
        '"cost-1-minute";q=2;w=60, "cost-1-day";q=3;w=86400, '
        '"submit-1-minute";q=3;w=60, "submit-1-hour";q=5;w=3600')
    # a 512x512 image costs 0.25 units, shown in whole units with this request's cost taken off
    assert [policy(r)["cost-1-minute"]["r"] for r in answers[:3]] == [1, 1, 1]
    assert [policy(r)["submit-1-minute"]["r"] for r in answers[:3]] == [2, 1, 0]
    assert [policy(r)["submit-1-hour"]["r"] for r in answers[:3]] == [4, 3, 2]
    assert all(0 < policy(r)["submit-1-minute"]["t"] <= 60 for r in answers[:3])
    refused = answers[3].json()
    assert refused["limit"]["budget"] == "submit" and refused["limit"]["policy"] == "3 per minute"
    assert len(fake_fal.requests(method="POST")) == 3


async def test_a_refused_submit_gives_its_concurrency_slot_back(
    fake_fal: FakeFal, store: dict[str, Any]
) -> None:
    fake_fal.queue_seconds = 30  # accepted jobs stay queued and keep their slots
    settings = proxy_settings(fake_fal, limits=limits(
        **store, concurrency=5, submit="3/minute",
        endpoints={"fal-ai/flux/schnell": {"submit": "100/minute"}}))
    with running_proxy(settings) as server:
        url = proxy_url(server)
        async with client() as http:
            answers = await asyncio.gather(*(submit(http, url) for _ in range(20)))
            assert sorted(r.status_code for r in answers) == [200] * 3 + [429] * 17
            # the 17 refused by the submit rate took a slot and gave it back: 2 of 5 are free
            schnell = "https://queue.fal.run/fal-ai/flux/schnell"
            more = await asyncio.gather(*(submit(http, url, target=schnell) for _ in range(6)))
    assert sorted(r.status_code for r in more) == [200] * 2 + [429] * 4
    assert {r.json()["limit"]["budget"] for r in more if r.status_code == 429} == {"concurrency"}
    assert len(fake_fal.requests(method="POST")) == 5


@pytest.mark.parametrize("bad", [
    {"submit": "5/fortnight"}, {"concurrency": -1}, {"storage": "mongodb://x"},
    {"strategy": "fixed-window"}, {"cost_function": "nope"},
    {"endpoints": {"fal-ai/flux/dev": {"cost": "x"}}},
])
def test_bad_limits_settings_name_the_key(bad: dict[str, Any]) -> None:
    from proxy.settings import ConfigError, settings_from_dict

    with pytest.raises(ConfigError) as info:
        settings_from_dict({"limits": bad})
    assert info.value.key.startswith("limits.")


def test_anonymous_callers_without_a_cookie_are_limited_by_address(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, identity={"resolvers": ["cookie"]},
                              limits=limits(submit="2/minute"))
    with running_proxy(settings) as server:
        # A fresh client each time keeps no cookie: every request is a new anonymous caller.
        answers = [httpx.post(proxy_url(server), content=flux_input(), timeout=10, headers={
            "x-fal-target-url": SUBMIT, "sec-fetch-site": "same-origin",
            "content-type": "application/json"}) for _ in range(4)]
    assert all("set-cookie" in r.headers for r in answers)  # a new anonymous id each time
    assert [r.status_code for r in answers] == [200, 200, 429, 429]
    assert len(fake_fal.requests(host="queue.fal.run", method="POST")) == 2


def test_redis_password_never_in_the_storage_url() -> None:
    from proxy.settings import ConfigError, settings_from_dict

    for url in ("redis://:secret@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0?password=secret"):
        with pytest.raises(ConfigError, match="redis_password"):
            settings_from_dict({"limits": {"storage": url}})


async def test_memory_slots_of_callers_who_never_return_are_swept() -> None:
    from proxy.limits.store import MemorySlots

    slots = MemorySlots(expiry=0.01)
    for i in range(2000):  # one-off callers, each leaving a slot nobody releases
        await slots.acquire(f"ip:10.0.{i // 250}.{i % 250}", "job:x", 4)
    await asyncio.sleep(0.02)
    for i in range(1100):  # ordinary traffic from one caller triggers the periodic sweep
        await slots.acquire("ip:127.0.0.1", f"m{i}", 0)
    assert list(slots._slots) == ["ip:127.0.0.1"]


async def test_memory_slots_expire_whether_or_not_a_caller_reaches_the_limit() -> None:
    from proxy.limits.store import MemorySlots

    slots = MemorySlots(expiry=0.05)  # (`take` is the memory engine's way in)
    assert slots.take("ip:1.2.3.4", "a", 2) is None
    assert slots.take("ip:1.2.3.4", "b", 2) is None
    in_flight, wait = slots.take("ip:1.2.3.4", "c", 2) or (0, 0.0)
    assert in_flight == 2 and 0 < wait <= 0.05
    await asyncio.sleep(0.06)  # both expire: at the limit they no longer count
    assert slots.take("ip:1.2.3.4", "d", 2) is None
    assert list(slots._slots["ip:1.2.3.4"]) == ["d"]
    # a caller far below its limit never triggers that check: the periodic sweep drops its
    # expired slots, so they do not pile up
    for i in range(3000):
        if i % 500 == 0:
            await asyncio.sleep(0.06)  # every slot taken so far has expired
        assert slots.take("ip:5.6.7.8", f"m{i}", 1_000_000) is None
    assert len(slots._slots["ip:5.6.7.8"]) <= 1024


def test_memory_windows_count_exactly_and_expired_ones_are_swept() -> None:
    from proxy.limits.local_windows import LocalWindows

    clock = [1000.0]
    windows = LocalWindows(sweep_interval=0.0, clock=lambda: clock[0])
    for i in range(200):  # one-off callers, each leaving a window
        (log,) = windows.get(("submit", "*", f"ip:10.0.0.{i}"), (1,), False)
        assert log.check(clock[0], 3, 1, True)[0]
    (mine,) = windows.get(("submit", "*", "ip:127.0.0.1"), (1,), False)
    assert [mine.check(clock[0], 3, 1, True)[0] for _ in range(4)] == [True] * 3 + [False]
    clock[0] += 1.1  # every window expired
    assert mine.check(clock[0], 3, 1, True)[0]  # counts as before: a fresh window
    windows.get(("submit", "*", "ip:10.0.1.1"), (1,), False)  # a new caller: sweep
    assert sorted(windows.windows) == [("submit", "*", "ip:10.0.1.1"),
                                       ("submit", "*", "ip:127.0.0.1")]
