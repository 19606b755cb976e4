#!/usr/bin/env bash
# Drive whole calls through a gateway running examples/progressive-rollout.yaml and print the
# rollout as it goes (the load generator of the demo in docs/operations.md).
#
#   examples/rollout-demo.sh [CALLS] [CONCURRENCY]      (defaults 4000 and 8)
#   GW=http://127.0.0.1:8080 ADMIN=http://127.0.0.1:9090 TOKEN=... examples/rollout-demo.sh
#
# Each call: inaction 8 (new call), 9 with the key 1 (four callers in five) or 2 (one in five),
# 11 with the transfer result when the answer was outaction 11, then the hangup report. Calls
# stop when the rollout leaves `running` or CALLS is reached; every curl has a 10 s limit.
# Needs bash, curl, jq, xargs.
set -euo pipefail

CALLS=${1:-4000}
CONCURRENCY=${2:-8}
export GW=${GW:-http://127.0.0.1:8080}
ADMIN=${ADMIN:-http://127.0.0.1:9090}
AUTH=()
[ -n "${TOKEN:-}" ] && AUTH=(-H "Authorization: Bearer $TOKEN")
export RUN=$$

call() {
  local i=$1 u="demo-$RUN-$1" key=1 last=9 out
  [ $((i % 5)) -eq 0 ] && key=2
  local url="$GW/oifde/rest/v2/crs/process/250"
  post() { curl -sS --max-time 10 -H 'content-type: application/json' -d "$1" "$url" || true; }
  local p="\"call_id\":\"$u\",\"call_dst_id\":\"10086\""
  post "{\"userid\":\"$u\",\"inaction\":8,\"inparams\":{$p}}" >/dev/null
  out=$(post "{\"userid\":\"$u\",\"inaction\":9,\"inparams\":{$p,\"input\":\"$key\",\"flow_result_type\":\"2\"}}")
  if jq -e '(.outaction|tostring) == "11"' >/dev/null 2>&1 <<<"$out"; then
    post "{\"userid\":\"$u\",\"inaction\":11,\"inparams\":{$p,\"trans_result\":\"0\"}}" >/dev/null
    last=11
  fi
  post "{\"userid\":\"$u\",\"inaction\":$last,\"inparams\":{$p,\"input\":\"hangup\",\"flow_result_type\":\"-1\"}}" >/dev/null
}
export -f call

rollout() { curl -sS --max-time 5 "${AUTH[@]}" "$ADMIN/admin/rollouts" | jq -c '.rollouts[0]'; }

seq 1 "$CALLS" | xargs -P "$CONCURRENCY" -I{} bash -c 'call {}' &
driver=$!
start=$(date +%s)
while kill -0 "$driver" 2>/dev/null; do
  r=$(rollout)
  jq -r --arg t "$(( $(date +%s) - start ))" \
    '"t=\($t)s \(.status) step \(.step_index + 1)/\(.steps|length) share \(.share)%  from: \(.sides.from.ended) ended, \(.sides.from.transferred) transferred  to: \(.sides.to.ended) ended, \(.sides.to.transferred) transferred"' <<<"$r"
  if [ "$(jq -r .status <<<"$r")" != running ]; then
    kill "$driver" 2>/dev/null || true
    break
  fi
  sleep 2
done
wait "$driver" 2>/dev/null || true
echo "last transition:"
rollout | jq '.last_transition | {at, kind, reason, share_from, share_to, verdicts: [.figures.verdicts[]? | select(.holds)]}'
