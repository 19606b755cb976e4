#!/usr/bin/env bash
# Reload cost and safety under load (issues 4 and 13):
#   1. time to compile and swap a routes.yaml with 1,000 and with 10,000 rules (POST /admin/reload,
#      median of 5), once with only a split weight changed and once with every rule renamed (new
#      names for the name table each time), and the 10,000/1,000 ratio (target: <= 50 ms at
#      10,000 rules, 10x the rules <= 12x the time)
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

gen() { # $1 file, $2 canary weight, $3 rules, $4 rule name prefix (default t)
  { echo "listen: 127.0.0.1:18183"; echo "admin: 127.0.0.1:19183"
    echo "clusters:"; echo "  stable: { endpoints: [http://127.0.0.1:18180] }"; echo "  canary: { endpoints: [http://127.0.0.1:18185] }"
    echo "rules:"
    awk -v n="$3" -v p="${4:-t}" 'BEGIN { for (i = 0; i < n; i++) printf "  - { name: %s%d, vdn: [%d], cluster: canary }\n", p, i, 100000 + i }'
    echo "  - { name: ramp, split: { canary: $2, stable: $((100 - $2)) } }"
    echo "default: stable"; } > "$1"
}
median_ms() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]*1000}'; }
reload_median() { # $1 rules, $2 "weights" | "renamed": median of 5 POST /admin/reload, in ms
  gen "$W/routes.yaml" 10 "$1" "w$1-"; curl -s -o /dev/null -X POST 127.0.0.1:19183/admin/reload
  for k in 1 2 3 4 5; do
    if [ "$2" = renamed ]; then gen "$W/routes.yaml" 10 "$1" "n$1-$k-"; else gen "$W/routes.yaml" $((10 + k)) "$1" "w$1-"; fi
    code=$(curl -s -o "$W/reload.out" -w '%{http_code} %{time_total}' -X POST 127.0.0.1:19183/admin/reload)
    [ "${code%% *}" = 200 ] || { echo "reload failed: $code $(cat "$W/reload.out")" >&2; exit 1; }
    echo "${code#* }"
  done | median_ms
}
gen "$W/routes.yaml" 10 10000
"$BIN" serve -c "$W/routes.yaml" --log-format json 2>"$W/gw.log" &
GW=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:19183/readyz >/dev/null 2>&1 && break; sleep 0.1; done

echo "== compile and swap a routes.yaml (POST /admin/reload: read, parse, compile, plan, prepare, commit)"
/usr/bin/time -f "graygate check, 10,000 rules: %e s, max RSS %M KiB" "$BIN" check -c "$W/routes.yaml" >/dev/null
for what in weights renamed; do
  m1=$(reload_median 1000 "$what"); m10=$(reload_median 10000 "$what")
  printf 'POST /admin/reload, %-7s median of 5:  1,000 rules %6.1f ms   10,000 rules %6.1f ms   ratio %.1fx\n' \
    "$what" "$m1" "$m10" "$(awk -v a="$m1" -v b="$m10" 'BEGIN {print b / a}')"
done
echo "  (weights: only a split weight changes; renamed: every rule has a new name, new to the name table)"
echo "  name table: $(curl -s 127.0.0.1:19183/admin/config | python3 -c 'import json,sys; t=json.load(sys.stdin)["name_table"]; print(t["names"], "names of at most", t["max"])' 2>/dev/null || echo '?')"

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
