"""The real ``@fal-ai/client`` → the proxy in local mode → our real worker (tiny FLUX, CPU).

One proxy for the module, pointed at the session's tiny-model worker over real HTTP; every
test leaves the worker idle (``idle_worker`` waits for that). A ``Spy`` on the worker's
engine counts the jobs it ran and the images it decoded, so refusals can show that nothing
reached the GPU and cancels that no image was made.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.js_client import run_flow
from tests.local_support import Queue, local_settings
from tests.support import proxy_url, running_proxy

from .helpers import RunningWorker, wait_for

SMALL = {"width": 64, "height": 64}
INPUT = {"prompt": "a lighthouse at dusk", "image_size": SMALL, "num_inference_steps": 2,
         "seed": 7}


@pytest.fixture(scope="module")
def proxy(worker: RunningWorker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The proxy route of a local-mode proxy whose only worker is the tiny-model worker."""
    data = tmp_path_factory.mktemp("proxy-data")
    settings = local_settings(data, [{"name": "gpu0", "kind": "http", "url": worker.base_url}])
    with running_proxy(settings) as server:
        yield proxy_url(server, settings)


class Spy:
    """Counts generations started and VAE decodes on the worker's engine."""

    def __init__(self, w: RunningWorker) -> None:
        self.engine = w.state.engine
        self.vae = self.engine.pipe.vae
        self.jobs = 0
        self.decodes = 0
        generate, decode = self.engine.generate, self.vae.decode

        def counted_generate(*a: Any, **k: Any) -> Any:
            self.jobs += 1
            return generate(*a, **k)

        def counted_decode(*a: Any, **k: Any) -> Any:
            self.decodes += 1
            return decode(*a, **k)

        self.engine.generate = counted_generate
        self.vae.decode = counted_decode
        self._restore: Callable[[], None] = lambda: self._put_back(generate, decode)

    def _put_back(self, generate: Any, decode: Any) -> None:
        self.engine.generate = generate
        self.vae.decode = decode


@pytest.fixture
def spy(idle_worker: RunningWorker) -> Iterator[Spy]:
    s = Spy(idle_worker)
    yield s
    s._restore()


def _image(url: str, proxy: str) -> tuple[str, bytes, tuple[int, int]]:
    """Fetch an output image from the proxy's media path: (content type, bytes, size)."""
    from PIL import Image

    assert url.startswith(proxy.split("/api/")[0] + "/fal-local/images/"), url
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    with Image.open(io.BytesIO(r.content)) as im:
        size = im.size
    return r.headers["content-type"], r.content, size


def _messages(update: dict[str, Any]) -> list[str]:
    return [entry["message"] for entry in update.get("logs") or []]


def _check_output(result: dict[str, Any], inp: dict[str, Any], fmt: str = "jpeg") -> None:
    assert set(result) >= {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    (image,) = result["images"]
    assert (image["width"], image["height"]) == (inp["image_size"]["width"],
                                                 inp["image_size"]["height"])
    assert image["content_type"] == f"image/{fmt}"
    assert isinstance(result["timings"]["inference"], float)
    assert result["timings"]["inference"] > 0
    assert result["seed"] == inp["seed"]
    assert result["has_nsfw_concepts"] == [False]
    assert result["prompt"] == inp["prompt"]


def test_subscribe_polling_and_streaming_same_seed_same_image(proxy: str, spy: Spy) -> None:
    polled = run_flow("subscribe-polling", proxy, input=INPUT, logs=True)
    assert polled["ok"], polled
    streamed = run_flow("subscribe-streaming", proxy, input=INPUT, logs=True)
    assert streamed["ok"], streamed

    for out in (polled, streamed):
        _check_output(out["result"], INPUT)
        # per-step progress reaches onQueueUpdate as fal status logs, once per step, in order
        final = out["updates"][-1]
        assert final["status"] == "COMPLETED"
        steps = [m for m in _messages(final) if m.startswith("step ")]
        assert steps == ["step 1/2", "step 2/2"]
        assert "generating 1 image(s) at 64x64, 2 steps" in _messages(final)
    kind1, bytes1, size1 = _image(polled["result"]["images"][0]["url"], proxy)
    kind2, bytes2, size2 = _image(streamed["result"]["images"][0]["url"], proxy)
    assert kind1 == kind2 == "image/jpeg" and size1 == size2 == (64, 64)
    assert bytes1 == bytes2  # the seed reproduces the image through the whole path
    assert polled["result"]["images"][0]["url"] != streamed["result"]["images"][0]["url"]
    assert (spy.jobs, spy.decodes) == (2, 2)


def test_run_and_stream(proxy: str, idle_worker: RunningWorker, spy: Spy) -> None:
    inp = {**INPUT, "seed": 8, "output_format": "png"}
    ran = run_flow("run", proxy, input=inp)
    assert ran["ok"], ran
    _check_output(ran["result"], inp, "png")

    # fal.stream reports the latest progress; steps slow enough to be seen one by one
    idle_worker.state.settings.step_delay_s = 0.1
    streamed = run_flow("stream", proxy, input=inp)
    idle_worker.state.settings.step_delay_s = 0.0
    assert streamed["ok"], streamed
    progress = [e["progress"]["step"] for e in streamed["events"] if "progress" in e]
    assert progress == [1, 2]
    assert streamed["events"][-1] == streamed["result"]
    _check_output(streamed["result"], inp, "png")
    same = [_image(r["images"][0]["url"], proxy)[1] for r in (ran["result"], streamed["result"])]
    assert same[0] == same[1]

    other = run_flow("run", proxy, input={**inp, "seed": 9})
    assert other["ok"], other
    assert _image(other["result"]["images"][0]["url"], proxy)[1] != same[0]
    assert spy.jobs == 3


def test_cancel_running_job_frees_the_worker_for_the_next(
        proxy: str, idle_worker: RunningWorker, spy: Spy) -> None:
    idle_worker.state.settings.step_delay_s = 0.1
    queue = Queue(proxy)
    running = queue.submit({**INPUT, "num_inference_steps": 40}).json()["request_id"]
    wait_for(lambda: bool(queue.status(running).json().get("progress")), timeout=20)
    waiting = queue.submit(INPUT).json()["request_id"]  # queued behind the running one

    out = run_flow("cancel", proxy, request_id=running)
    assert out["ok"], out
    final = queue.wait(running)
    assert final["error_type"] == "client_cancelled"
    assert "step 40/40" not in _messages(final)
    cancelled = queue.result(running)
    assert cancelled.status_code == 499
    assert "images" not in cancelled.json() and "cancel" in cancelled.json()["detail"]

    idle_worker.state.settings.step_delay_s = 0.0
    done = queue.wait(waiting)
    assert "error" not in done, done
    # it ran on the first try: the worker was free when the proxy handed it over
    assert _messages(done).count("running on worker gpu0") == 1
    assert queue.result(waiting).json()["images"][0]["width"] == 64
    assert (spy.jobs, spy.decodes) == (2, 1)  # the cancelled job decoded no image
    ready = httpx.get(idle_worker.base_url + "/readyz").json()
    assert ready["busy"] is False


def test_bad_input_is_a_validation_error_and_reaches_no_gpu(
        proxy: str, idle_worker: RunningWorker, spy: Spy) -> None:
    # refused by the proxy before queueing
    out = run_flow("run-validation", proxy, input=INPUT)
    assert not out["ok"]
    err = out["error"]
    assert (err["name"], err["status"]) == ("ValidationError", 422)
    assert err["body"]["detail"][0]["loc"] == ["body", "prompt"]

    # refused by the worker itself (its --max-side is smaller than the proxy's limit)
    idle_worker.state.settings.max_side = 48
    try:
        out = run_flow("run", proxy, input=INPUT)
    finally:
        idle_worker.state.settings.max_side = 2048
    assert not out["ok"]
    err = out["error"]
    assert (err["name"], err["status"]) == ("ValidationError", 422)
    assert err["body"]["detail"][0]["loc"][:2] == ["body", "image_size"]
    assert "48" in err["body"]["detail"][0]["msg"]
    assert spy.jobs == 0


def test_worker_cli_help_and_model_dir_errors(
        tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from proxy.cli import main

    with pytest.raises(SystemExit) as exit_help:
        main(["worker", "--help"])
    assert exit_help.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model DIR", "--compile", "--fp8", "--offload", "--port"):
        assert flag in text
    assert "docs/worker.md" in text

    assert main(["worker", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "flux-proxy worker: error: model directory not found" in err

    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_model_dir, incomplete, ignore=shutil.ignore_patterns("vae"))
    assert main(["worker", "--model", str(incomplete)]) == 2
    err = capsys.readouterr().err
    assert "is incomplete" in err and "vae/" in err and "Traceback" not in err


def test_busy_worker_gets_the_job_again_once_free(
        proxy: str, idle_worker: RunningWorker, spy: Spy) -> None:
    """Someone else's job on the GPU (503 busy): ours goes back to the queue, then runs."""
    import threading

    idle_worker.state.settings.step_delay_s = 0.1
    other = threading.Thread(target=lambda: httpx.post(
        idle_worker.base_url + "/fal-ai/flux/dev", timeout=30,
        json={**INPUT, "num_inference_steps": 8}))
    other.start()
    try:
        wait_for(lambda: idle_worker.state.busy)
        queue = Queue(proxy)
        rid = queue.submit(INPUT).json()["request_id"]
        wait_for(lambda: "running on worker gpu0" in _messages(queue.status(rid).json()))
        idle_worker.state.settings.step_delay_s = 0.0
        done = queue.wait(rid)
    finally:
        other.join(timeout=30)
    assert "error" not in done, done
    assert _messages(done).count("running on worker gpu0") >= 2  # refused once, then run
    assert queue.result(rid).json()["seed"] == INPUT["seed"]
    assert spy.jobs == 2


def test_jobs_wait_until_the_worker_is_ready(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Proxy and worker started together: the first job queues until the model is loaded."""
    import threading

    from proxy.worker.app import create_app
    from proxy.worker.pipeline import FluxEngine

    from .helpers import serve, tiny_settings

    gate = threading.Event()
    generated: list[int] = []

    class GatedEngine(FluxEngine):
        def load(self) -> None:
            gate.wait(20)
            super().load()

        def generate(self, *a: Any, **k: Any) -> Any:
            generated.append(1)
            return super().generate(*a, **k)

    ws = tiny_settings(tiny_model_dir)
    loading = serve(create_app(ws, GatedEngine(ws)))
    try:
        settings = local_settings(tmp_path, [{"name": "gpu0", "kind": "http",
                                              "url": loading.base_url}])
        with running_proxy(settings) as server:
            queue = Queue(proxy_url(server, settings))
            rid = queue.submit(INPUT).json()["request_id"]
            wait_for(lambda: httpx.get(loading.base_url + "/readyz").status_code == 503)
            assert queue.status(rid).json()["status"] == "IN_QUEUE"
            gate.set()
            done = queue.wait(rid, timeout=30)
            assert "error" not in done, done
            assert _messages(done).count("running on worker gpu0") == 1  # never refused
            assert queue.result(rid).json()["images"][0]["height"] == 64
        assert len(generated) == 2  # the start-up warm-up, then the job, once
    finally:
        gate.set()
        loading.stop()
