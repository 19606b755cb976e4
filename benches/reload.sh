#!/usr/bin/env bash
# Reload cost and safety under load (issue 4):
#   1. time to compile and swap a routes.yaml with 10,000 rules (POST /admin/reload, median of 5)
#   2. request errors while 100 reloads happen under the dialog workload (wrk + dialog.lua)
# Loopback only, bounded in time. Needs: wrk, nginx (apt-get install -y wrk nginx).
# Usage: benches/reload.sh [DUR_SECONDS=30]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"; ROOT="$(cd "$HERE/.." && pwd)"
DUR="${1:-30}"
for t in wrk nginx curl; do command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y wrk nginx curl"; exit 2; }; done
LUA="$HERE/peers/dialog.lua"; [ -f "$LUA" ] || LUA="$ROOT/../shared/bench/dialog.lua"
[ -f "$LUA" ] || { echo "dialog.lua not found (benches/peers/dialog.lua)"; exit 2; }
W=$(mktemp -d /tmp/graygate-reload.XXXXXX)
cleanup() { [ -n "${GW:-}" ] && kill "$GW" 2>/dev/null; [ -f "$W/nginx.pid" ] && kill "$(cat "$W/nginx.pid")" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
(cd "$ROOT" && cargo build --release -q)
BIN="$ROOT/target/release/graygate"

mkdir -p "$W/nginx"
cat > "$W/nginx.conf" <<NGX
worker_processes 1; daemon on; pid $W/nginx.pid; error_log $W/nginx/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $W/nginx/b; proxy_temp_path $W/nginx/p; fastcgi_temp_path $W/nginx/f; uwsgi_temp_path $W/nginx/u; scgi_temp_path $W/nginx/s;
  server { listen 127.0.0.1:18180; listen 127.0.0.1:18185;
    location / { default_type application/json; return 200 '{"ret":0,"userid":"u","outaction":9,"outparams":{}}'; } } }
NGX
nginx -p "$W/nginx/" -c "$W/nginx.conf"

gen() { # $1 file, $2 canary weight, $3 rules
  { echo "listen: 127.0.0.1:18183"; echo "admin: 127.0.0.1:19183"
    echo "clusters:"; echo "  stable: { endpoints: [http://127.0.0.1:18180] }"; echo "  canary: { endpoints: [http://127.0.0.1:18185] }"
    echo "rules:"
    for ((i = 0; i < $3; i++)); do echo "  - { name: t$i, vdn: [$((100000 + i))], cluster: canary }"; done
    echo "  - { name: ramp, split: { canary: $2, stable: $((100 - $2)) } }"
    echo "default: stable"; } > "$1"
}
gen "$W/routes.yaml" 10 10000
"$BIN" serve -c "$W/routes.yaml" --log-format json 2>"$W/gw.log" &
GW=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:19183/readyz >/dev/null 2>&1 && break; sleep 0.1; done

echo "== compile and swap a routes.yaml with 10,000 rules"
/usr/bin/time -f "graygate check: %e s, max RSS %M KiB" "$BIN" check -c "$W/routes.yaml" >/dev/null
times=()
for k in 1 2 3 4 5; do
  gen "$W/routes.yaml" $((10 + k)) 10000
  times+=("$(curl -s -o /dev/null -w '%{time_total}' -X POST 127.0.0.1:19183/admin/reload)")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "POST /admin/reload (compile + reconcile + swap), median of 5: %.1f ms\n", a[3]*1000}'

echo "== 100 reloads under the dialog load (${DUR}s)"
gen "$W/a.yaml" 10 100; gen "$W/b.yaml" 50 100
cp "$W/a.yaml" "$W/routes.yaml"; curl -s -X POST 127.0.0.1:19183/admin/reload >/dev/null
wrk -t1 -c32 -d"${DUR}s" --latency -s "$LUA" http://127.0.0.1:18183 > "$W/wrk.txt" &
WRK=$!
sleep 1
ok=0; fail=0
for k in $(seq 1 100); do
  if ((k % 2)); then cp "$W/b.yaml" "$W/routes.yaml.tmp"; else cp "$W/a.yaml" "$W/routes.yaml.tmp"; fi
  mv "$W/routes.yaml.tmp" "$W/routes.yaml"
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST 127.0.0.1:19183/admin/reload)
  if [ "$code" = 200 ]; then ok=$((ok + 1)); else fail=$((fail + 1)); fi
  sleep "$(awk -v d="$DUR" 'BEGIN {printf "%.3f", (d - 3) / 100}')"
done
wait "$WRK"
grep -E "Requests/sec|errors:|Non-2xx|requests in" "$W/wrk.txt" | sed 's/^/  wrk: /'
echo "  reloads: $ok applied, $fail failed; generation now $(curl -s 127.0.0.1:19183/metrics | awk '/^graygate_config_generation /{print $2}')"
echo "  gateway 5xx during the run: $(curl -s 127.0.0.1:19183/metrics | awk '/^graygate_requests_total/ && /code="5/ {s+=$2} END {print s+0}')"
