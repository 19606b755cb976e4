#!/usr/bin/env bash
# Side-by-side load run: graygate against the proxies an operator would otherwise run.
#
#   benches/load.sh                       # REPS=3 DUR=5s, default logging and metrics on
#   REPS=5 DUR=10s benches/load.sh
#   PIN_STORE=redis benches/load.sh       # graygate with the Redis pin store instead of memory
#   PIN_STORE=both benches/load.sh        # the redis mode (issue 8): a second graygate with the
#                                         # Redis store as one more target of the same run
#   ONLY=graygate PIN_STORE=both benches/load.sh   # just the two graygates (benches/redis-mode.sh)
#   SNAPSHOT=both benches/load.sh         # issue 15: a second graygate (memory store) with
#                                         # pins.snapshot on, as one more target of the same run;
#                                         # prints the per-turn cost from same-round ratios
#   SNAPSHOT=both SNAPSHOT_SEED=5s ONLY=graygate benches/load.sh
#                                         # ... with both tables first filled with live pins
#                                         # (new calls that never end) for that long
#   ENGINE=both benches/load.sh           # issue 14: a second graygate (memory store) with
#                                         # engine: hyper (the general engine) as one more target
#                                         # (graygate itself runs the default, engine: fast)
#   TRACE=both benches/load.sh            # issue 18: a second graygate (memory store) exporting
#                                         # one span per turn (tracing.otlp) to a stub collector
#                                         # (nginx answering 200 on :18088) as one more target;
#                                         # prints the per-turn cost from same-round ratios
#
# What it does, all on loopback and bounded in time:
#   1. builds graygate in release mode (NO_BUILD=1 skips it);
#   2. starts the peers from benches/peers/ pinned to CPU $SERVER_CPU (default 1):
#        :18080 :18085  nginx stub upstreams ("stable", "canary")
#        :18081         nginx reverse proxy -> :18080
#        :18082         haproxy reverse proxy -> :18080
#        :18084         haproxy-gray: reads userid from the body, stick table, two backends
#   3. starts graygate pinned to the same CPU on :18083 (admin :19090), clusters on the stubs,
#      one vdn rule and a 10% split, default logging (JSON access log, one line per turn) and
#      metrics on;
#   4. runs wrk with dialog.lua pinned to CPU $WRK_CPU (default 0) against direct, nginx,
#      haproxy, haproxy-gray and graygate, interleaved, REPS rounds of DUR each;
#   5. prints one table (median of the rounds) and graygate's ratios; stops what it started.
#
# It installs nothing. Needs: wrk nginx haproxy taskset curl  (apt-get install -y wrk nginx haproxy)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PEERS="$HERE/peers"
REPS="${REPS:-3}"
DUR="${DUR:-5s}"
CONNS="${CONNS:-32}"
WRK_CPU="${WRK_CPU:-0}"
SERVER_CPU="${SERVER_CPU:-1}"
PIN_STORE="${PIN_STORE:-memory}"   # memory | redis | both
ONLY="${ONLY:-}"                     # graygate: skip the peers' rounds (direct stays, for scale)
REDIS_PORT="${REDIS_PORT:-16379}"
GG_PORT=18083
GG_ADMIN=19090
GGR_PORT=18086                     # PIN_STORE=both: the Redis-store graygate
GGR_ADMIN=19091
SNAPSHOT="${SNAPSHOT:-off}"          # off | both
SNAPSHOT_SEED="${SNAPSHOT_SEED:-}"   # e.g. 5s: fill both tables with live pins first
GGS_PORT=18087                     # SNAPSHOT=both: the graygate with pins.snapshot
GGS_ADMIN=19092
TRACE="${TRACE:-off}"                # off | both
GGT_PORT=18089                     # TRACE=both: the graygate exporting spans
GGT_ADMIN=19093
OTLP_PORT=18088                    # TRACE=both: the stub collector
ENGINE="${ENGINE:-fast}"             # fast | both
GGH_PORT=18090                     # ENGINE=both: the graygate on engine: hyper
GGH_ADMIN=19094
PORTS=(18080 18081 18082 18084 18085 "$GG_PORT" "$GG_ADMIN" "$GGR_PORT" "$GGR_ADMIN" "$GGS_PORT" "$GGS_ADMIN"
       "$GGT_PORT" "$GGT_ADMIN" "$OTLP_PORT" "$GGH_PORT" "$GGH_ADMIN")

# --- what is missing ----------------------------------------------------------------------
missing=()
for tool in wrk nginx haproxy taskset curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "$PIN_STORE" != memory ] && [ -z "${REDIS_URL:-}" ]; then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "load.sh: missing: ${missing[*]}" >&2
  pkgs="wrk nginx haproxy"
  [ "$PIN_STORE" != memory ] && pkgs="$pkgs redis-server"
  echo "install them with:  apt-get install -y $pkgs   (taskset: util-linux; curl: curl)" >&2
  exit 1
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "${PORTS[@]}"; do
  if port_busy "$p"; then
    echo "load.sh: 127.0.0.1:$p is already in use (peers from ../shared/bench/start.sh still running?)" >&2
    exit 1
  fi
done

# --- build --------------------------------------------------------------------------------
if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "building graygate (release)..." >&2
  (cd "$ROOT" && cargo build --release --bin graygate --quiet)
fi
GRAYGATE="${GRAYGATE:-$ROOT/target/release/graygate}"
[ -x "$GRAYGATE" ] || { echo "load.sh: no binary at $GRAYGATE" >&2; exit 1; }

# --- run directory and cleanup ------------------------------------------------------------
RUN="$(mktemp -d /tmp/graygate-load.XXXXXX)"
GG_PID=""
GGR_PID=""
GGS_PID=""
GGT_PID=""
GGH_PID=""
REDIS_PID=""
cleanup() {
  set +e
  [ -n "$GGS_PID" ] && kill -TERM "$GGS_PID" 2>/dev/null && wait "$GGS_PID" 2>/dev/null
  [ -n "$GGT_PID" ] && kill -TERM "$GGT_PID" 2>/dev/null && wait "$GGT_PID" 2>/dev/null
  [ -n "$GGH_PID" ] && kill -TERM "$GGH_PID" 2>/dev/null && wait "$GGH_PID" 2>/dev/null
  [ -n "$GG_PID" ] && kill -TERM "$GG_PID" 2>/dev/null && wait "$GG_PID" 2>/dev/null
  [ -n "$GGR_PID" ] && kill -TERM "$GGR_PID" 2>/dev/null && wait "$GGR_PID" 2>/dev/null
  [ -n "$REDIS_PID" ] && kill -TERM "$REDIS_PID" 2>/dev/null
  for f in "$RUN"/nginx-echo/nginx.pid "$RUN"/nginx-proxy/nginx.pid \
           "$RUN"/haproxy/haproxy.pid "$RUN"/haproxy-gray/haproxy.pid "$RUN"/nginx-otlp/nginx.pid; do
    [ -s "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "run files kept in $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- peers (same as ../shared/bench/start.sh, with a private run directory) ----------------
mkdir -p "$RUN"/nginx-echo "$RUN"/nginx-proxy "$RUN"/haproxy "$RUN"/haproxy-gray
for f in nginx-echo.conf nginx-proxy.conf haproxy.cfg haproxy-gray.cfg; do
  sed "s#/tmp/benchpeers#$RUN#g" "$PEERS/$f" >"$RUN/$f"
done
nginx -t -q -p "$RUN/nginx-echo/" -e "$RUN/nginx-echo/error.log" -c "$RUN/nginx-echo.conf"
nginx -t -q -p "$RUN/nginx-proxy/" -e "$RUN/nginx-proxy/error.log" -c "$RUN/nginx-proxy.conf"
haproxy -c -q -f "$RUN/haproxy.cfg"
haproxy -c -q -f "$RUN/haproxy-gray.cfg"
taskset -c "$SERVER_CPU" nginx -p "$RUN/nginx-echo/" -e "$RUN/nginx-echo/error.log" -c "$RUN/nginx-echo.conf"
taskset -c "$SERVER_CPU" nginx -p "$RUN/nginx-proxy/" -e "$RUN/nginx-proxy/error.log" -c "$RUN/nginx-proxy.conf"
taskset -c "$SERVER_CPU" haproxy -f "$RUN/haproxy.cfg"
taskset -c "$SERVER_CPU" haproxy -f "$RUN/haproxy-gray.cfg"

# --- pin store hook -----------------------------------------------------------------------
# Sets STORE_LINE, the `store:` line of routes.yaml's `pins:` section. `memory` is graygate's
# default; `redis` starts a throwaway redis-server pinned like the servers (or uses $REDIS_URL),
# for the shared pin store (`pins.store: redis://127.0.0.1:PORT/0`).
start_pin_store() {
  case "$PIN_STORE" in
    memory) STORE_LINE="store: memory" ;;
    redis | both)
      if [ -z "${REDIS_URL:-}" ]; then
        port_busy "$REDIS_PORT" && { echo "load.sh: 127.0.0.1:$REDIS_PORT is in use" >&2; exit 1; }
        taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
          --save '' --appendonly no --daemonize no >"$RUN/redis.log" 2>&1 &
        REDIS_PID=$!
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
        for _ in $(seq 50); do port_busy "$REDIS_PORT" && break; sleep 0.1; done
      fi
      STORE_LINE="store: $REDIS_URL"
      if [ "$PIN_STORE" = both ]; then STORE_LINE="store: memory"; REDIS_STORE_LINE="store: $REDIS_URL"; fi ;;
    *) echo "load.sh: PIN_STORE must be memory, redis or both" >&2; exit 2 ;;
  esac
}
STORE_LINE=""
REDIS_STORE_LINE=""
start_pin_store

# --- graygate -----------------------------------------------------------------------------
# routes PORT ADMIN STORE_LINE
routes() {
cat <<EOF
# load.sh: graygate in front of the nginx stubs, doing its whole job on every turn.
listen: 127.0.0.1:$1
admin: 127.0.0.1:$2
clusters:
  stable:
    endpoints: ["http://127.0.0.1:18080"]
  canary:
    endpoints: ["http://127.0.0.1:18085"]
pins:
  $3
rules:
  # A tenant on its own cluster (the load's vdn 101 does not match it: every call is split).
  - name: tenant-200
    vdn: [200-299]
    cluster: canary
  - name: one-in-ten
    split: { canary: 10, stable: 90 }
default: stable
EOF
}
routes "$GG_PORT" "$GG_ADMIN" "$STORE_LINE" >"$RUN/routes.yaml"
# wait_ready PID ADMIN_PORT LOG NAME: until /readyz answers; stop the run if graygate exits.
wait_ready() {
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$1" 2>/dev/null || { echo "$4 exited:" >&2; tail -20 "$3" >&2; exit 1; }
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null || { echo "$4 not ready" >&2; exit 1; }
}
# Default logging: info level, JSON (stderr is not a terminal), one access-log line per turn.
taskset -c "$SERVER_CPU" "$GRAYGATE" serve -c "$RUN/routes.yaml" 2>"$RUN/graygate.log" &
GG_PID=$!
wait_ready "$GG_PID" "$GG_ADMIN" "$RUN/graygate.log" graygate
if [ "$PIN_STORE" = both ]; then
  routes "$GGR_PORT" "$GGR_ADMIN" "$REDIS_STORE_LINE" >"$RUN/routes-redis.yaml"
  taskset -c "$SERVER_CPU" "$GRAYGATE" serve -c "$RUN/routes-redis.yaml" 2>"$RUN/graygate-redis.log" &
  GGR_PID=$!
  wait_ready "$GGR_PID" "$GGR_ADMIN" "$RUN/graygate-redis.log" "graygate (redis)"
fi
if [ "$SNAPSHOT" = both ]; then
  routes "$GGS_PORT" "$GGS_ADMIN" "store: memory
  snapshot: $RUN/pins.snapshot" >"$RUN/routes-snap.yaml"
  taskset -c "$SERVER_CPU" "$GRAYGATE" serve -c "$RUN/routes-snap.yaml" 2>"$RUN/graygate-snap.log" &
  GGS_PID=$!
  wait_ready "$GGS_PID" "$GGS_ADMIN" "$RUN/graygate-snap.log" "graygate (snapshot)"
fi

if [ "$TRACE" = both ]; then
  # A stub OTLP/HTTP collector: 200 to every POST /v1/traces (the body is read and dropped).
  mkdir -p "$RUN/nginx-otlp"
  cat >"$RUN/nginx-otlp.conf" <<CONF
worker_processes 1;
pid $RUN/nginx-otlp/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  client_max_body_size 16m;
  client_body_buffer_size 1m;
  server { listen 127.0.0.1:$OTLP_PORT; location /v1/traces { return 200; } }
}
CONF
  taskset -c "$SERVER_CPU" nginx -p "$RUN/nginx-otlp/" -e "$RUN/nginx-otlp/error.log" -c "$RUN/nginx-otlp.conf"
  routes "$GGT_PORT" "$GGT_ADMIN" "store: memory" >"$RUN/routes-trace.yaml"
  printf 'tracing:\n  otlp: http://127.0.0.1:%s\n' "$OTLP_PORT" >>"$RUN/routes-trace.yaml"
  taskset -c "$SERVER_CPU" "$GRAYGATE" serve -c "$RUN/routes-trace.yaml" 2>"$RUN/graygate-trace.log" &
  GGT_PID=$!
  wait_ready "$GGT_PID" "$GGT_ADMIN" "$RUN/graygate-trace.log" "graygate (trace export)"
fi
if [ "$ENGINE" = both ]; then
  routes "$GGH_PORT" "$GGH_ADMIN" "store: memory" >"$RUN/routes-hyper.yaml"
  echo "engine: hyper" >>"$RUN/routes-hyper.yaml"
  taskset -c "$SERVER_CPU" "$GRAYGATE" serve -c "$RUN/routes-hyper.yaml" 2>"$RUN/graygate-hyper.log" &
  GGH_PID=$!
  wait_ready "$GGH_PID" "$GGH_ADMIN" "$RUN/graygate-hyper.log" "graygate (engine: hyper)"
fi

# --- load ---------------------------------------------------------------------------------
TARGETS=(direct=http://127.0.0.1:18080 nginx=http://127.0.0.1:18081 haproxy=http://127.0.0.1:18082
         haproxy-gray=http://127.0.0.1:18084 graygate=http://127.0.0.1:$GG_PORT)
[ "$ONLY" = graygate ] && TARGETS=(direct=http://127.0.0.1:18080 graygate=http://127.0.0.1:$GG_PORT)
[ "$PIN_STORE" = both ] && TARGETS+=(graygate-redis=http://127.0.0.1:$GGR_PORT)
[ "$SNAPSHOT" = both ] && TARGETS+=(graygate-snap=http://127.0.0.1:$GGS_PORT)
[ "$TRACE" = both ] && TARGETS+=(graygate-otlp=http://127.0.0.1:$GGT_PORT)
[ "$ENGINE" = both ] && TARGETS+=(graygate-hyper=http://127.0.0.1:$GGH_PORT)
if [ "$SNAPSHOT" = both ] && [ -n "$SNAPSHOT_SEED" ]; then
  # New calls that never end: each turn leaves one live pin (idle_ttl 30m).
  cat >"$RUN/seed.lua" <<'LUA'
local n, prefix = 0, ""
function init(args) math.randomseed(os.time() + math.floor(os.clock() * 1e6)); prefix = string.format("seed-%d-%06d", os.time(), math.random(0, 999999)) end
function request()
  n = n + 1
  local u = prefix .. "-" .. n
  return wrk.format("POST", "/oifde/rest/v2/crs/process/101", { ["Content-Type"] = "application/json" },
    string.format('{"userid":"%s","inaction":8,"inparams":{"call_id":"%s"}}', u, u))
end
LUA
  for port in "$GG_PORT" "$GGS_PORT"; do
    taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$SNAPSHOT_SEED" -s "$RUN/seed.lua" "http://127.0.0.1:$port" >/dev/null
  done
  sleep 2
  echo "seeded live pins: graygate $(curl -fsS "http://127.0.0.1:$GG_ADMIN/metrics" | awk '/^graygate_pins\{/ {s += $2} END {print s + 0}'), graygate-snap $(curl -fsS "http://127.0.0.1:$GGS_ADMIN/metrics" | awk '/^graygate_pins\{/ {s += $2} END {print s + 0}')" >&2
fi
# wrk prints 812.00us / 1.51ms / 1.02s: microseconds for sorting.
to_us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n }'; }

# cpu_ticks NAME: user and system clock ticks so far of the processes serving target NAME
# (the proxy itself, master and workers; for direct, the stub), as "user system".
pids_of() {
  local pid=""
  case "$1" in
    direct) pid=$(cat "$RUN/nginx-echo/nginx.pid" 2>/dev/null) ;;
    nginx) pid=$(cat "$RUN/nginx-proxy/nginx.pid" 2>/dev/null) ;;
    haproxy) pid=$(cat "$RUN/haproxy/haproxy.pid" 2>/dev/null) ;;
    haproxy-gray) pid=$(cat "$RUN/haproxy-gray/haproxy.pid" 2>/dev/null) ;;
    graygate) pid=$GG_PID ;;
    graygate-redis) pid=$GGR_PID ;;
    graygate-snap) pid=$GGS_PID ;;
    graygate-otlp) pid=$GGT_PID ;;
    graygate-hyper) pid=$GGH_PID ;;
  esac
  [ -n "$pid" ] || return 0
  echo "$pid"
  pgrep -P "$pid" 2>/dev/null || true
}
cpu_ticks() {
  local u=0 s=0 p
  for p in $(pids_of "$1"); do
    # Fields 14 and 15 of /proc/PID/stat (after the parenthesized name): utime, stime.
    read -r pu ps < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}') || continue
    u=$((u + ${pu:-0})); s=$((s + ${ps:-0}))
  done
  echo "$u $s"
}
TCK=$(getconf CLK_TCK)

echo "warm-up (1s each)..." >&2
for t in "${TARGETS[@]}"; do
  taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d1s -s "$PEERS/dialog.lua" "${t#*=}" >/dev/null 2>&1 || true
done
: >"$RUN/results"
for r in $(seq 1 "$REPS"); do
  for t in "${TARGETS[@]}"; do
    name=${t%%=*}; url=${t#*=}
    read -r u0 s0 < <(cpu_ticks "$name")
    out=$(taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$DUR" --latency -s "$PEERS/dialog.lua" "$url")
    read -r u1 s1 < <(cpu_ticks "$name")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    # User and system CPU of the target's own processes per request, in microseconds.
    cpu_u=$(awk -v d=$((u1 - u0)) -v n="${reqs:-0}" -v t="$TCK" 'BEGIN { if (n > 0) printf "%.1f", d * 1e6 / t / n; else print 0 }')
    cpu_s=$(awk -v d=$((s1 - s0)) -v n="${reqs:-0}" -v t="$TCK" 'BEGIN { if (n > 0) printf "%.1f", d * 1e6 / t / n; else print 0 }')
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(awk '/^errors:/ { n = 0; for (i = 2; i <= NF; i++) { split($i, kv, "="); n += kv[2] } print n }' <<<"$out")
    printf '%-13s round %d  req/s %-10s p50 %-9s p99 %-9s errors %s  cpu/turn %s+%s us\n' "$name" "$r" "$rps" "$p50" "$p99" "${errs:-?}" "$cpu_u" "$cpu_s" >&2
    echo "$name ${rps:-0} $(to_us "${p50:-0}") $(to_us "${p99:-0}") ${errs:-0} $cpu_u $cpu_s" >>"$RUN/results"
    sleep 1
  done
done
GG_RSS_KB=$(awk '/^VmRSS/ {print $2}' "/proc/$GG_PID/status" 2>/dev/null || echo 0)
GG_PINS=$(curl -fsS "http://127.0.0.1:$GG_ADMIN/metrics" | awk '/^graygate_pins\{/ {s += $2} END {print s + 0}')

# --- the table ----------------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A RPS P50 P99 ERR CU CS
for t in "${TARGETS[@]}"; do
  n=${t%%=*}
  RPS[$n]=$(awk -v n="$n" '$1 == n {print $2}' "$RUN/results" | median)
  P50[$n]=$(awk -v n="$n" '$1 == n {print $3}' "$RUN/results" | median)
  P99[$n]=$(awk -v n="$n" '$1 == n {print $4}' "$RUN/results" | median)
  ERR[$n]=$(awk -v n="$n" '$1 == n {s += $5} END {print s + 0}' "$RUN/results")
  CU[$n]=$(awk -v n="$n" '$1 == n {print $6}' "$RUN/results" | median)
  CS[$n]=$(awk -v n="$n" '$1 == n {print $7}' "$RUN/results" | median)
done
pins_desc=$PIN_STORE
[ "$PIN_STORE" = both ] && pins_desc="memory (graygate), redis (graygate-redis)"
echo
echo "graygate load run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), wrk -t1 -c$CONNS on CPU $WRK_CPU, servers on CPU $SERVER_CPU, median of $REPS x $DUR, pins: $pins_desc"
echo
printf '| %-14s | %10s | %9s | %9s | %6s | %-22s | %-17s |\n' target "req/s" "p50 ms" "p99 ms" errors "graygate req/s ratio" "CPU/turn usr+sys"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' ---------------- ------------ ----------- ----------- -------- ------------------------ -------------------
for t in "${TARGETS[@]}"; do
  n=${t%%=*}
  ratio=$(awk -v g="${RPS[graygate]}" -v p="${RPS[$n]}" 'BEGIN { if (p > 0) printf "%.2fx", g / p; else print "-" }')
  [ "$n" = graygate ] || [ "$n" = graygate-redis ] || [ "$n" = graygate-snap ] || [ "$n" = graygate-otlp ] || [ "$n" = graygate-hyper ] && ratio="-"
  printf '| %-14s | %10.0f | %9.3f | %9.3f | %6s | %-22s | %-17s |\n' "$n" "${RPS[$n]}" \
    "$(awk -v u="${P50[$n]}" 'BEGIN { print u / 1000 }')" "$(awk -v u="${P99[$n]}" 'BEGIN { print u / 1000 }')" \
    "${ERR[$n]}" "$ratio" "${CU[$n]} + ${CS[$n]} us"
done
echo
if [ "$PIN_STORE" = both ]; then
  awk -v m="${RPS[graygate]}" -v r="${RPS[graygate-redis]}" -v mp="${P99[graygate]}" -v rp="${P99[graygate-redis]}" 'BEGIN {
    printf "redis store: req/s %.2fx memory (>= 0.7: %s), p99 %.2fx memory (< 2: %s)\n",
      r / m, (r / m >= 0.7 ? "met" : "MISSED"), rp / mp, (rp / mp < 2 ? "met" : "MISSED")
  }'
  echo "redis store errors: $(curl -fsS "http://127.0.0.1:$GGR_ADMIN/metrics" | awk '/^graygate_pin_store_errors_total/ {s += $2} END {print s + 0}')"
fi
if [ "$SNAPSHOT" = both ]; then
  # Same-round ratios (the rounds of one pair run back to back), then their median.
  paste <(awk '$1 == "graygate" {print $2, $4}' "$RUN/results") <(awk '$1 == "graygate-snap" {print $2, $4}' "$RUN/results") |
    awk '{ printf "%s %s %s\n", $3 / $1, $4 / $2, 1e6 / $3 - 1e6 / $1 }' >"$RUN/snap-ratios"
  r_rps=$(awk '{print $1}' "$RUN/snap-ratios" | median)
  r_p99=$(awk '{print $2}' "$RUN/snap-ratios" | median)
  cost=$(awk '{print $3}' "$RUN/snap-ratios" | median)
  echo "pins.snapshot on vs off (median of same-round ratios): req/s ${r_rps}x, p99 ${r_p99}x, cost per turn ${cost} us (1/rps difference, one server CPU)"
  view=$(curl -fsS "http://127.0.0.1:$GGS_ADMIN/admin/config" | tr -d '\n' | grep -o '"snapshot": *{[^}]*}' || true)
  echo "snapshot writer after the run: ${view:-?}"
fi
if [ "$TRACE" = both ]; then
  # Same-round ratios, as for the snapshot above.
  paste <(awk '$1 == "graygate" {print $2, $4}' "$RUN/results") <(awk '$1 == "graygate-otlp" {print $2, $4}' "$RUN/results") |
    awk '{ printf "%s %s %s\n", $3 / $1, $4 / $2, 1e6 / $3 - 1e6 / $1 }' >"$RUN/trace-ratios"
  r_rps=$(awk '{print $1}' "$RUN/trace-ratios" | median)
  r_p99=$(awk '{print $2}' "$RUN/trace-ratios" | median)
  cost=$(awk '{print $3}' "$RUN/trace-ratios" | median)
  echo "trace export on vs off (median of same-round ratios): req/s ${r_rps}x, p99 ${r_p99}x, cost per turn ${cost} us (1/rps difference, one server CPU)"
  echo "spans: $(curl -fsS "http://127.0.0.1:$GGT_ADMIN/metrics" | awk '/^graygate_trace_spans_(exported|dropped)_total/ {printf "%s %s  ", $1, $2}')"
fi
if [ "$ENGINE" = both ]; then
  echo "engine fast vs hyper: req/s $(awk -v f="${RPS[graygate]}" -v h="${RPS[graygate-hyper]}" 'BEGIN { printf "%.2fx", f / h }'), CPU/turn fast ${CU[graygate]} + ${CS[graygate]} us, hyper ${CU[graygate-hyper]} + ${CS[graygate-hyper]} us"
fi
[ "$ONLY" = graygate ] && exit 0
awk -v g="${RPS[graygate]}" -v hg="${RPS[haproxy-gray]}" -v ng="${RPS[nginx]}" -v d="${RPS[direct]}" \
    -v gp="${P99[graygate]}" -v hp="${P99[haproxy-gray]}" 'BEGIN {
  printf "targets: req/s vs haproxy-gray %.2fx (>= 1.0: %s), vs nginx %.2fx (>= 0.9: %s; moonshot >= 1.0: %s), vs direct %.2fx\n",
    g / hg, (g / hg >= 1.0 ? "met" : "MISSED"), g / ng, (g / ng >= 0.9 ? "met" : "MISSED"), (g / ng >= 1.0 ? "met" : "missed"), g / d
  printf "         p99 graygate %.3f ms vs haproxy-gray %.3f ms (<=: %s)\n", gp / 1000, hp / 1000, (gp <= hp ? "met" : "MISSED")
}'
echo "graygate after the run: VmRSS $((GG_RSS_KB / 1024)) MB, live pins $GG_PINS, log $(wc -l <"$RUN/graygate.log") lines"
