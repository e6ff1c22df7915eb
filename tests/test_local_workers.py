"""Workers failing, going down and coming back: jobs fail clearly, the others keep going."""

from __future__ import annotations

import time
from pathlib import Path

from tests.fakes.fal_worker import FakeWorker
from tests.js_client import run_flow
from tests.local_support import Queue, local_settings
from tests.support import fal_id, proxy_url, running_proxy

INPUT = {"prompt": "a red bicycle", "seed": 9, "image_size": "square", "num_inference_steps": 4}


def test_failing_and_dead_workers_fail_their_job_only_and_come_back(tmp_path: Path) -> None:
    with FakeWorker("gpu1", step_seconds=0.02) as w1, FakeWorker("gpu2", step_seconds=0.02) as w2:
        settings = local_settings(tmp_path, [
            {"name": "gpu1", "kind": "http", "url": w1.url},
            {"name": "gpu2", "kind": "http", "url": w2.url},
        ])
        with running_proxy(settings) as server:
            proxy = proxy_url(server, settings)
            queue = Queue(proxy)

            # 1. a worker error: the user sees it in status and in result
            w2.ready = False
            time.sleep(0.6)  # the next readiness check takes gpu2 out
            w1.fail_next = 1
            out = run_flow("subscribe-polling", proxy, input=INPUT, logs=True)
            assert not out["ok"]
            assert out["error"]["status"] == 500
            assert out["error"]["body"] == {"detail": "CUDA out of memory (fake)"}
            final = out["updates"][-1]
            assert final["status"] == "COMPLETED"
            assert final["error"] == "CUDA out of memory (fake)"
            assert final["error_type"] == "runner_server_error"
            ok = run_flow("run", proxy, input=INPUT)  # gpu1 keeps serving
            assert ok["ok"], ok

            # 2. a worker dies mid-job: that job fails clearly, the other worker goes on
            w2.ready = True
            time.sleep(0.6)
            w1.step_seconds = w2.step_seconds = 0.2  # 50 steps: 10 s, far longer than the test
            doomed = queue.submit({**INPUT, "num_inference_steps": 50}).json()["request_id"]
            queue.wait(doomed, "IN_PROGRESS")
            victim, survivor = (w1, w2) if w1.started[fal_id(doomed)] else (w2, w1)
            survivor.step_seconds = 0.02
            victim.stop()
            failed = queue.wait(doomed)
            assert failed["error_type"] == "runner_connection_error"
            assert victim.name in failed["error"]
            assert queue.result(doomed).json()["detail"] == failed["error"]
            out = run_flow("run", proxy, input=INPUT)
            assert out["ok"], out
            assert out["result"]["worker"] == survivor.name

            # 3. the dead worker comes back (same address) and is used again
            victim.step_seconds = 0.02
            victim.start()
            survivor.ready = False
            time.sleep(0.6)  # a readiness check passes again
            out = run_flow("run", proxy, input=INPUT)
            assert out["ok"], out
            assert out["result"]["worker"] == victim.name
