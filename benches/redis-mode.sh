#!/usr/bin/env bash
# The redis mode of the dialog load benchmark (issue 8): the same workload through graygate with
# `pins.store: memory` and with `pins.store: redis://…`, in the same run, rounds interleaved.
#
#   cargo build --release
#   /work/shared/bench/start.sh            # nginx stub upstreams on :18080 and :18085 (CPU 1)
#   benches/redis-mode.sh                  # REPS=3 DUR=10s CONNS=32 by default
#
# It starts its own redis-server on a loopback port (no persistence) and two gateways (memory on
# :18090, redis on :18091; admin on :18190/:18191), all pinned to CPU ${SERVER_CPU:-1} like the
# stubs, runs wrk (CPU ${WRK_CPU:-0}) with dialog.lua against each, and stops what it started.
# Target: redis req/s >= 0.6x memory, redis p99 < 2x memory p99.
# Measured 2026-11-27 (REPS=2 DUR=5s, 2-core box, redis-server sharing CPU 1 with gateway and
# stubs): memory ~11.6k req/s p99 5.2 ms; redis 6.4k-7.0k req/s (0.55-0.60x) p99 8.2-8.9 ms (1.6-1.7x).
# To fold into benches/load.sh: the gateway/redis start-up below and one more target.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${GRAYGATE:-$ROOT/target/release/graygate}"
LUA="${DIALOG_LUA:-/work/shared/bench/dialog.lua}"
SCPU="${SERVER_CPU:-1}"; WCPU="${WRK_CPU:-0}"
REPS="${REPS:-3}"; DUR="${DUR:-10s}"; CONNS="${CONNS:-32}"
RPORT="${REDIS_PORT:-16390}"
STUB_A="${STUB_A:-http://127.0.0.1:18080}"; STUB_B="${STUB_B:-http://127.0.0.1:18085}"
D="$(mktemp -d /tmp/graygate-redis-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT

taskset -c "$SCPU" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$D" --loglevel warning & PIDS+=($!)

routes() { # $1 listen port, $2 admin port, $3 pins block
  cat <<YAML
listen: 127.0.0.1:$1
admin: 127.0.0.1:$2
clusters:
  stable:
    endpoints: [$STUB_A]
  canary:
    endpoints: [$STUB_B]
rules:
  - name: one-in-ten
    split: { canary: 10, stable: 90 }
default: stable
$3
YAML
}
routes 18090 18190 "pins: { store: memory }" > "$D/memory.yaml"
routes 18091 18191 "pins: { store: 'redis://127.0.0.1:$RPORT/0', redis: { key_prefix: 'bench:', timeout: 50ms } }" > "$D/redis.yaml"
for m in memory redis; do
  RUST_LOG=warn taskset -c "$SCPU" "$BIN" serve -c "$D/$m.yaml" > "$D/$m.log" 2>&1 & PIDS+=($!)
done
for port in 18190 18191; do
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.1; done
done

for r in $(seq 1 "$REPS"); do
  for t in memory=http://127.0.0.1:18090 redis=http://127.0.0.1:18091; do
    name=${t%%=*}; url=${t#*=}
    out=$(taskset -c "$WCPU" wrk -t1 -c"$CONNS" -d"$DUR" --latency -s "$LUA" "$url")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    printf '%-7s round %d  req/s %-10s p99 %-8s %s\n' "$name" "$r" "$rps" "$p99" "$(grep '^errors:' <<<"$out")"
    sleep 1
  done
done
echo "redis store errors: $(curl -s http://127.0.0.1:18191/metrics | awk '/^graygate_pin_store_errors_total/ {s+=$2} END {print s+0}')"
echo "redis store state:  $(curl -s http://127.0.0.1:18191/admin/config | tr -d ' \n' | grep -o '"store":{[^}]*' | grep -o '"state":"[a-z]*"')"
