"""Cold start: `flux-proxy serve` imports only what its configuration uses.

Every optional package imported at start-up delays the first answer (tests/bench/cold_start.py
measures it); these tests keep the lazy ones lazy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fakes.fal_upstream import FakeFal
from tests.fakes.redis_server import _free_port
from tests.limits_support import SUBMIT, flux_input, metric
from tests.support import FAKE_KEY

ROOT = Path(__file__).resolve().parent.parent
# Needed only by other configurations (local queue, Redis, the worker), at scrape time
# (prometheus_client), or never by the standalone server (websockets).
LAZY = ("prometheus_client", "websockets", "proxy.worker", "proxy.backends.local.queue",
        "redis", "PIL", "sqlite3", "aiohttp")


def _imported(importtime: str) -> set[str]:
    return set(re.findall(r"^import time:.*\| *(\S+)$", importtime, re.MULTILINE))


def test_hosted_serve_answers_without_importing_optional_packages(
    fake_fal: FakeFal, tmp_path: Path
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[upstream]\nrun = "{fake_fal.run_base}"\nqueue = "{fake_fal.queue_base}"\n'
        f'rest = "{fake_fal.rest_base}"\n[identity]\nresolvers = ["address"]\n')
    port = _free_port()
    log = tmp_path / "importtime.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "proxy.cli", "serve", "--port",
             str(port), "--config", str(config)],
            cwd=ROOT, env={**os.environ, "FAL_KEY": FAKE_KEY, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=sink)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.post(f"{base}/api/fal/proxy", content=flux_input(), timeout=5,
                                    headers={"x-fal-target-url": SUBMIT,
                                             "content-type": "application/json"})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        assert answer.status_code == 200, answer.text
        imported = _imported(log.read_text())
        scraped = httpx.get(f"{base}/metrics", timeout=5)
    finally:
        proc.terminate()
        proc.wait(10)
    assert "proxy.app" in imported  # the log is the serving process's own
    # serve writes its access lines to stderr itself (log.access_output "auto"), one each
    access = [json.loads(line.split(" ", 1)[1]) for line in log.read_text().splitlines()
              if line.startswith("flux_proxy.access ")]
    assert [(a["op"], a["status"]) for a in access] == [("submit", 200)]
    assert sorted(imported & set(LAZY)) == []
    # metrics were counted all along, and render once asked for
    assert scraped.status_code == 200
    assert metric(scraped.text, "flux_proxy_requests_total", operation="submit",
                  status="200") == 1


def test_settings_from_plain_environment_skip_the_toml_parser() -> None:
    code = ("import sys; from proxy.settings import load_settings; "
            "load_settings(env={'FAL_KEY': 'k'}); print('tomllib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False"
