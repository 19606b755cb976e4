#!/usr/bin/env bash
# The redis mode of the dialog load benchmark (issue 8): the same workload through one graygate
# with `pins.store: memory` and one with the Redis store, in the same run, rounds interleaved,
# with default logging and metrics. It is benches/load.sh with PIN_STORE=both and only the two
# graygates (plus the stub, direct, for scale); load.sh starts a throwaway redis-server pinned
# like the servers (or uses $REDIS_URL), and prints the table and
#   redis store: req/s <r>x memory (>= 0.6: met|MISSED), p99 <p>x memory (< 2: met|MISSED)
#
#   benches/redis-mode.sh                  # REPS=3 DUR=5s CONNS=32; NO_BUILD=1 reuses the binary
#   PIN_STORE=both benches/load.sh         # the same two targets beside nginx and haproxy
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PIN_STORE=both ONLY="${ONLY-graygate}" exec "$HERE/load.sh" "$@"
