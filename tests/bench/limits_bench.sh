#!/usr/bin/env bash
# Proxy throughput with limits off, with in-process limits and with Redis limits, measured by
# the shared harness (../shared/bench/run.sh) in one run, so the three share the conditions.
#
#   tests/bench/limits_bench.sh [extra run.sh options]     (defaults: 1 round, 5 s, 2 s warm-up)
#
# Each proxy is pinned to CPU 0 like the harness's peers; redis-server shares that CPU, so
# Redis's own work counts against the proxy it serves. The limits admit all the traffic (the
# harness sends from one address) but are all checked: submit rate, cost and global quota,
# concurrency, polling rate, usage accounting. A benchmark, not a test: the machine is shared,
# single runs move by +-20%.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench/run.sh}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/flux-limits-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_PORT=$(free_port)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

LIMITS='submit = "100000000/hour"
cost = "100000000/hour"
global_cost = "100000000/day"
polling = "100000000/hour"
concurrency = 100000000
strategy = "sliding-window"'

start_proxy() {  # name, extra [limits] lines
  local name=$1 port; port=$(free_port)
  printf '[log]\naccess = false\n[limits]\n%s\n' "$2" >"$WORK/$name.toml"
  (cd "$ROOT" && FAL_KEY=bench-key FLUX_PROXY_UPSTREAM_QUEUE=http://127.0.0.1:18081 \
     FLUX_PROXY_UPSTREAM_RUN=http://127.0.0.1:18082 PYTHONPATH="$ROOT" \
     exec taskset -c 0 "$PY" -m proxy.cli serve --port "$port" --config "$WORK/$name.toml" \
     >"$WORK/$name.log" 2>&1) &
  PIDS+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  TARGETS+=(--fal-target "$name=http://127.0.0.1:$port/api/fal/proxy")
  NAMES+=("$name")
}

TARGETS=(); NAMES=()
start_proxy limits-off 'enabled = false'
start_proxy limits-memory "$LIMITS"
start_proxy limits-redis "$LIMITS
storage = \"redis://127.0.0.1:$REDIS_PORT/0\""

"$BENCH" "${TARGETS[@]}" --only "$(IFS=,; echo "${NAMES[*]}")" --scenarios submit,status \
  --rounds 1 --duration 5 --warmup 2 --no-stream --json "$WORK/report.json" "$@"
echo "report: $WORK/report.json"
