#!/usr/bin/env bash
# Proxy throughput with guards off, with guards on (memory limits) and with guards on (Redis
# limits), measured by the shared harness (../shared/bench/run.sh) in one run, beside fal's
# official proxy and nginx, so all share the conditions.
#
#   tests/bench/guards_bench.sh [extra run.sh options]     (defaults: 1 round, 5 s, 2 s warm-up)
#
# guards-off: callers identified by address, limits off (the allowlist and input policy always
#   run). guards-memory / guards-redis: a signed bearer token identifies the caller (the
#   harness sends it), allowlist, input policy (JSON parsed, safety checker forced), and every
#   limit checked: submit rate, cost and global quota, concurrency, polling rate, usage
#   accounting; budgets are huge so all traffic is admitted. Ownership (signed request ids) is
#   off in all three, because the harness replays one fixed fal request id.
# Each proxy is pinned to CPU 0 like the harness's peers. redis-server runs on CPU 1 by default,
# beside wrk and the fake upstream: like the upstream, it is a service of its own in any real
# deployment. REDIS_CPU=0 pins it to the proxy's CPU instead, so that Redis's own work (the
# Lua scripts) counts against the proxy it serves. A benchmark, not a test: the machine is
# shared, single runs move by +-20%.
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
taskset -c "${REDIS_CPU:-1}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

LIMITS='submit = "100000000/hour"
cost = "100000000/hour"
global_cost = "100000000/day"
polling = "100000000/hour"
concurrency = 100000000
strategy = "sliding-window"'

SECRET=bench-signing-secret-0123456789
start_proxy() {  # name, identity resolvers, extra [limits] lines
  local name=$1 port; port=$(free_port)
  printf '[log]\naccess = false\n[identity]\nresolvers = %s\nsecrets = ["%s"]\n[policy]\nownership = false\n[limits]\n%s\n' \
    "$2" "$SECRET" "$3" >"$WORK/$name.toml"
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
start_proxy guards-off '["address"]' 'enabled = false'
start_proxy guards-memory '["bearer"]' "$LIMITS"
start_proxy guards-redis '["bearer"]' "$LIMITS
storage = \"redis://127.0.0.1:$REDIS_PORT/0\""
TOKEN=$(cd "$ROOT" && "$PY" -m proxy.cli token issue --user bench --ttl 1d \
  --config "$WORK/guards-memory.toml")

"$BENCH" "${TARGETS[@]}" --proxy-auth "Bearer $TOKEN" \
  --only "$(IFS=,; echo "${NAMES[*]}"),node-official,nginx" --scenarios submit,status \
  --rounds 1 --duration 5 --warmup 2 --no-stream --json "$WORK/report.json" "$@"
echo "report: $WORK/report.json"
