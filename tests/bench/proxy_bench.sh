#!/usr/bin/env bash
# Throughput/latency of flux-proxy side by side with fal's official proxy and nginx, using the
# shared harness (../shared/bench/run.sh). Not part of the test suite. Prints the harness table.
#
#   tests/bench/proxy_bench.sh [--workers N] [--config FILE] [--cpu LIST|none] [--no-extras]
#                              [-- run.sh options]
#
# Defaults follow the harness README: ours pinned to CPU 0 like the peers, wrk on CPU 1,
# 64 connections. Options after `--` go to run.sh unchanged (e.g. --rounds 3). Afterwards it
# runs the idle-stream (tests/bench/idle_streams.py, hosted and local) and cold-start
# (cold_start.py) figures unless --no-extras. Two workers on both cores:
#   tests/bench/proxy_bench.sh --workers 2 --cpu none -- --wrk-cpu none --server-cpu none
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=${FLUX_BENCH_DIR:-../shared/bench}
PORT=${FLUX_BENCH_PORT:-18100}
WORKERS=1
CONFIG=""
CPU=0
EXTRAS=1
while (($#)); do
  case $1 in
    --workers) WORKERS=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --cpu) CPU=$2; shift 2 ;;
    --no-extras) EXTRAS=0; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done
PIN=(); [[ $CPU != none ]] && PIN=(taskset -c "$CPU")
LOG=/tmp/fal-bench/flux-proxy.log
mkdir -p /tmp/fal-bench
export FAL_KEY=bench-key
export FLUX_PROXY_UPSTREAM_QUEUE=http://127.0.0.1:18081
export FLUX_PROXY_UPSTREAM_RUN=http://127.0.0.1:18082
# wrk sends everything from one address, which the default per-caller limits would refuse;
# limits are measured on their own by tests/bench/guards_bench.sh.
export FLUX_PROXY__LIMITS__ENABLED=${FLUX_PROXY__LIMITS__ENABLED:-false}
# The harness sends no credentials and replays one fixed fal request id: callers are known by
# address and ownership (signed ids) is off. guards_bench.sh measures the guards' cost.
export FLUX_PROXY__IDENTITY__RESOLVERS=${FLUX_PROXY__IDENTITY__RESOLVERS:-'["address"]'}
export FLUX_PROXY__IDENTITY__SECRETS=${FLUX_PROXY__IDENTITY__SECRETS:-'["bench-signing-secret-0123456789"]'}
export FLUX_PROXY__POLICY__OWNERSHIP=${FLUX_PROXY__POLICY__OWNERSHIP:-false}
ARGS=(serve --host 127.0.0.1 --port "$PORT" --workers "$WORKERS")
[[ -n $CONFIG ]] && ARGS+=(--config "$CONFIG")
"${PIN[@]}" python3 -m proxy.cli "${ARGS[@]}" >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$LOG"; exit 1; }
bash "$BENCH/run.sh" --fal-target "ours=http://127.0.0.1:$PORT/api/fal/proxy" "$@"
kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true
if ((EXTRAS)); then
  python3 tests/bench/idle_streams.py
  python3 tests/bench/idle_streams.py --backend local
  python3 tests/bench/cold_start.py
fi
