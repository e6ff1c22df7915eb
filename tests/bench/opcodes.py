"""Where the guards' Python work is: bytecodes per request, per function, guards on vs off.

    python3 tests/bench/opcodes.py [--scenario submit|status] [--lines] [--top 40]

Exact and quick (seconds), so a change to the guards' code can be judged before any timing:
this drives the standalone ASGI app in-process against the shared harness's fake queue
upstream (as `stage_times.py` does: 8 concurrent callers, no server socket on our side, uvloop),
warms it up, then traces 200 requests with `sys.settrace` opcode events and prints, for
each function whose count differs, the bytecodes per request it runs with guards off and
with memory limits (`--lines`: per line, for `proxy/limits/`). In this interpreter a
bytecode costs ~60 instructions on average and a Python-level call ~430 more; C code
called from Python (regular expressions, uvicorn, the kernel) is not in it, which
`instructions.py` and `server_instructions.py` count. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from proxy.app import create_app  # noqa: E402
from tests.bench import stage_times  # noqa: E402

CALLERS, WARM_UP, TRACED = 8, 50, 25  # rounds of CALLERS requests

Key = tuple[Any, ...]


class _Counter:
    """Opcodes per (file, function[, line]) and calls per (file, function)."""

    def __init__(self, lines: bool) -> None:
        self.opcodes: collections.Counter[Key] = collections.Counter()
        self.calls: collections.Counter[Key] = collections.Counter()
        self._lines = lines

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        name = code.co_filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        if event == "opcode":
            key: Key = (name, code.co_name)
            if self._lines and name.startswith("proxy/limits"):
                key += (frame.f_lineno,)
            self.opcodes[key] += 1
        elif event == "call":
            self.calls[(name, code.co_name)] += 1
        return self.trace


async def _run(name: str, scenario: str, counter: _Counter) -> int:
    """Serve WARM_UP rounds untraced, then TRACED rounds traced; the requests traced."""
    app = create_app(stage_times._settings(name, ""))
    one = stage_times.request_sender(app, scenario)
    async with stage_times.started(app):
        for _ in range(WARM_UP):
            await asyncio.gather(*(one() for _ in range(CALLERS)))
        sys.settrace(counter.trace)  # (frames made from here on: every request's)
        try:
            for _ in range(TRACED):
                await asyncio.gather(*(one() for _ in range(CALLERS)))
        finally:
            sys.settrace(None)
    return TRACED * CALLERS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["submit", "status"], default="submit")
    parser.add_argument("--lines", action="store_true", help="per line in proxy/limits/")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    upstream = subprocess.Popen([*pin, "bash", str(stage_times.BENCH / "upstream" / "start.sh")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    counts: dict[str, tuple[dict[Key, float], float]] = {}
    try:  # the loop `flux-proxy serve` runs (its C code is not traced)
        import uvloop
        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        for name in ("guards-off", "guards-memory"):
            counter = _Counter(args.lines)
            served = run(_run(name, args.scenario, counter))
            per = {k: v / served for k, v in counter.opcodes.items()}
            counts[name] = (per, sum(counter.calls.values()) / served)
    finally:
        upstream.terminate()
        subprocess.run(["pkill", "-f", "upstream-nginx"], check=False)
    (off, off_calls), (on, on_calls) = counts["guards-off"], counts["guards-memory"]
    print(f"\n{args.scenario}: bytecodes per request, guards off {sum(off.values()):.0f}, memory "
          f"limits {sum(on.values()):.0f} (+{sum(on.values()) - sum(off.values()):.0f}); "
          f"Python calls {off_calls:.0f} and {on_calls:.0f}")
    rows = sorted(set(off) | set(on), key=lambda k: off.get(k, 0.0) - on.get(k, 0.0))
    print(f"{'+/-':>7}{'on':>7}{'off':>7}  function")
    for key in [r for r in rows if abs(on.get(r, 0.0) - off.get(r, 0.0)) >= 0.5][:args.top]:
        print(f"{on.get(key, 0.0) - off.get(key, 0.0):7.0f}{on.get(key, 0.0):7.0f}"
              f"{off.get(key, 0.0):7.0f}  {':'.join(map(str, key))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
