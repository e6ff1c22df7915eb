"""Endpoint allowlist, input policy, webhooks and temporary tokens: what reaches fal."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.fakes.fal_upstream import FakeFal
from tests.js_client import run_flow
from tests.support import proxy_settings, proxy_url, running_proxy

RUN = "https://fal.run/fal-ai/flux/dev"
SUBMIT = "https://queue.fal.run/fal-ai/flux/dev"


def _post(client: httpx.Client, url: str, target: str, body: Any,
          ctype: str = "application/json") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(url, content=content,
                       headers={"x-fal-target-url": target, "content-type": ctype})


def _loc(problem: dict[str, Any]) -> str:
    return str(problem["loc"][-1])


# Each input breaks one rule; the proxy answers 422 naming the field, and sends nothing.
VIOLATIONS: list[tuple[dict[str, Any], str, str]] = [
    ({"num_images": 5}, "num_images", "less_than_equal"),
    ({"num_images": "4"}, "num_images", "int_type"),
    ({"num_images": 0}, "num_images", "int_type"),
    ({"num_inference_steps": 51}, "num_inference_steps", "less_than_equal"),
    ({"image_size": {"width": 1440, "height": 1440}}, "image_size", "less_than_equal"),
    ({"image_size": {"width": 4096, "height": 16}}, "image_size", "less_than_equal"),
    ({"image_size": {"width": "1024", "height": 1024}}, "image_size", "model_type"),
    ({"image_size": "giant"}, "image_size", "enum"),
    ({"prompt": "x" * 2001}, "prompt", "string_too_long"),
    ({"output_format": "webp"}, "output_format", "literal_error"),
    ({"sync_mode": True}, "sync_mode", "value_error"),
]


def test_input_policy_table(fake_fal: FakeFal) -> None:
    with running_proxy(proxy_settings(fake_fal)) as server, httpx.Client(timeout=10) as client:
        url = proxy_url(server)
        wrong = []
        for extra, field, kind in VIOLATIONS:
            for target in (RUN, SUBMIT):
                r = _post(client, url, target, {"prompt": "a cat", **extra})
                detail = r.json().get("detail")
                if (r.status_code != 422 or not isinstance(detail, list)
                        or [(_loc(p), p["type"]) for p in detail] != [(field, kind)]
                        or detail[0]["loc"][0] != "body" or not detail[0]["msg"]):
                    wrong.append((extra, target, r.status_code, r.text))
        assert wrong == []
        # Several problems are reported together, like fal does.
        r = _post(client, url, RUN, {"prompt": "a", "num_images": 9, "output_format": "gif"})
        assert sorted(_loc(p) for p in r.json()["detail"]) == ["num_images", "output_format"]
        # Not JSON at all: 415; JSON but not an object: 422.
        assert _post(client, url, RUN, b"prompt=a cat", "text/plain").status_code == 415
        bad = _post(client, url, SUBMIT, b'{"prompt": ')
        assert bad.status_code == 415 and "JSON" in bad.json()["detail"]
        listed = _post(client, url, RUN, [1, 2])
        assert listed.status_code == 422 and listed.json()["detail"][0]["type"] == "dict_type"
        assert fake_fal.records == []

        # Within the caps, the body goes through byte for byte.
        body = b'{"prompt":"ok","num_images":4,"image_size":"square_hd","num_inference_steps":50}'
        assert _post(client, url, RUN, body).status_code == 200
        assert fake_fal.records[-1].body == body


def test_safety_checker_is_forced_on(fake_fal: FakeFal) -> None:
    with running_proxy(proxy_settings(fake_fal)) as server, httpx.Client(timeout=10) as client:
        url = proxy_url(server)
        for value in (False, "false", 0, None):
            r = _post(client, url, SUBMIT, {"prompt": "a", "enable_safety_checker": value})
            assert r.status_code == 200
            assert fake_fal.records[-1].json()["enable_safety_checker"] is True
        # The real client in the browser's place: it sent false, fal got true.
        out = run_flow("run", url, input={"prompt": "b", "enable_safety_checker": False})
        assert out["ok"], out
        assert fake_fal.requests(host="fal.run")[-1].json() == {
            "prompt": "b", "enable_safety_checker": True}


def test_real_client_gets_validation_error(fake_fal: FakeFal) -> None:
    with running_proxy(proxy_settings(fake_fal)) as server:
        out = run_flow("run", proxy_url(server), input={"prompt": "c", "num_images": 50})
    assert not out["ok"]
    assert out["error"]["name"] == "ValidationError" and out["error"]["status"] == 422
    assert out["error"]["body"]["detail"][0]["loc"] == ["body", "num_images"]
    assert fake_fal.records == []


def test_policy_fills_defaults_and_clamps(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, policy={"inputs": {"fal-ai/flux/dev": {
        "clamp": True, "max_num_images": 2, "defaults": {"num_images": 1}}}})
    with running_proxy(settings) as server, httpx.Client(timeout=10) as client:
        url = proxy_url(server)
        assert _post(client, url, RUN, {"prompt": "a"}).status_code == 200
        assert fake_fal.records[-1].json() == {"prompt": "a", "num_images": 1}
        r = _post(client, url, RUN, {"prompt": "a", "num_images": 8, "num_inference_steps": 80})
        assert r.status_code == 200 and len(r.json()["images"]) == 2
        assert fake_fal.records[-1].json() == {"prompt": "a", "num_images": 2,
                                               "num_inference_steps": 50}


def test_webhook_stripped_unless_prefix_matches(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, policy={"inputs": {"*": {
        "webhook_prefixes": ["https://app.example.com/hooks/"]}}})
    with running_proxy(settings) as server, httpx.Client(timeout=10) as client:
        url = proxy_url(server)
        for hook in ("https://evil.example/steal", "https://app.example.com.evil.net/hooks/x",
                     "https://app.example.com/other"):
            target = f"{SUBMIT}?fal_webhook={httpx.URL(hook)}"
            assert _post(client, url, target, {"prompt": "a"}).status_code == 200
            assert fake_fal.records[-1].query == "", hook
        good = "https%3A%2F%2Fapp.example.com%2Fhooks%2Fdone%3Fid%3D7"
        assert _post(client, url, f"{SUBMIT}?fal_webhook={good}", {"prompt": "a"}
                     ).status_code == 200
        assert fake_fal.records[-1].query == f"fal_webhook={good}"
        job = list(fake_fal.jobs.values())[-1]
        assert job.webhook == "https://app.example.com/hooks/done?id=7"


def test_endpoint_allowlist_on_every_operation(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, policy={"allow": ["fal-ai/flux/dev"],
                                                "allow_uploads": False})
    with running_proxy(settings) as server, httpx.Client(timeout=10) as client:
        url = proxy_url(server)
        refused = [
            ("POST", "https://fal.run/fal-ai/flux-pro/v1.1-ultra", "fal-ai/flux-pro/v1.1-ultra"),
            ("POST", "https://fal.run/fal-ai/flux/schnell", "fal-ai/flux/schnell"),
            ("POST", "https://fal.run/fal-ai/flux/dev/image-to-image",
             "fal-ai/flux/dev/image-to-image"),
            ("POST", "https://fal.run/fal-ai/other/stream", "fal-ai/other"),
            ("POST", "https://queue.fal.run/fal-ai/recraft-v3", "fal-ai/recraft-v3"),
            ("GET", "https://queue.fal.run/fal-ai/recraft-v3/requests/abc/status",
             "fal-ai/recraft-v3"),
            ("GET", "https://queue.fal.run/fal-ai/recraft-v3/requests/abc", "fal-ai/recraft-v3"),
            ("PUT", "https://queue.fal.run/fal-ai/recraft-v3/requests/abc/cancel",
             "fal-ai/recraft-v3"),
            ("GET", "https://queue.fal.run/fal-ai/recraft-v3/requests/abc/status/stream",
             "fal-ai/recraft-v3"),
        ]
        for method, target, name in refused:
            r = client.request(method, url, content=b'{"prompt":"a"}', headers={
                "x-fal-target-url": target, "content-type": "application/json"})
            assert r.status_code == 403, (target, r.text)
            assert r.json()["detail"] == f"endpoint {name!r} is not allowed on this proxy"
        # Uploads are off unless enabled.
        up = _post(client, url, "https://rest.fal.ai/storage/upload/initiate?storage_type="
                                "fal-cdn-v3", {"file_name": "a.txt"})
        assert up.status_code == 403 and "uploads" in up.json()["detail"]
        assert fake_fal.records == []


def test_shipped_defaults_allow_only_flux_dev(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, strict=True)
    assert settings.policy.allow == ("fal-ai/flux/dev",)
    assert not settings.policy.allow_uploads and not settings.policy.tokens.enabled
    assert settings.policy.cors.origins == ()


def test_temporary_tokens_when_enabled(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, policy={"tokens": {"enabled": True}})
    target = "https://rest.fal.ai/tokens/"
    with running_proxy(settings) as server, httpx.Client(timeout=10) as client:
        url = proxy_url(server)
        r = _post(client, url, target, {"allowed_apps": ["flux", "recraft-v3"],
                                        "token_expiration": 3600})
        assert r.status_code == 201 and r.json() == "fake.jwt.token"
        assert fake_fal.records[-1].json() == {"allowed_apps": ["flux"], "token_expiration": 120}
        exact = b'{"allowed_apps":["flux"],"token_expiration":60}'
        assert _post(client, url, target, exact).status_code == 201
        assert fake_fal.records[-1].body == exact
        count = len(fake_fal.records)
        for body in ({"allowed_apps": ["recraft-v3"]}, {"allowed_apps": []}, {}):
            r = _post(client, url, target, body)
            assert r.status_code == 403 and "not allowed" in r.json()["detail"], body
        assert len(fake_fal.records) == count


def test_shipped_config_file_states_the_defaults() -> None:
    from pathlib import Path

    from proxy.identity import IdentitySettings
    from proxy.policy import PolicySettings
    from proxy.settings import load_settings

    shipped = load_settings(Path(__file__).parents[1] / "config" / "flux-proxy.toml", env={})
    assert shipped.identity == IdentitySettings()
    assert shipped.policy == PolicySettings()


def test_nested_or_duplicate_json_is_refused_not_a_crash(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal)
    with running_proxy(settings) as server:
        url = proxy_url(server, settings)
        target = {"x-fal-target-url": "https://queue.fal.run/fal-ai/flux/dev",
                  "content-type": "application/json"}
        deep = httpx.post(url, content=b"[" * 100_000, headers=target)
        assert deep.status_code == 415 and "JSON" in deep.json()["detail"]
        dup = httpx.post(url, content=b'{"prompt":"x","num_images":100,"num_images":1}',
                         headers=target)
        assert dup.status_code == 422
        assert dup.json()["detail"][0]["loc"] == ["body", "num_images"]
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert fake_fal.records == []


def test_token_alias_comes_only_from_exact_apps(fake_fal: FakeFal) -> None:
    settings = proxy_settings(fake_fal, policy={"allow": ["fal-ai/*"],
                                                "tokens": {"enabled": True}})
    with running_proxy(settings) as server:
        url = proxy_url(server, settings)
        target = {"x-fal-target-url": "https://rest.fal.ai/tokens/"}
        r = httpx.post(url, json={"allowed_apps": ["evil-owner/expensive", "anything"]},
                       headers=target)
        assert r.status_code == 403
        assert fake_fal.records == []
        ok = httpx.post(url, json={"allowed_apps": ["fal-ai/flux"]}, headers=target)
        assert ok.status_code in (200, 201), ok.text
    (sent,) = fake_fal.requests(host="rest.fal.ai")
    assert sent.json()["allowed_apps"] == ["fal-ai/flux"]
