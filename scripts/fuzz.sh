#!/usr/bin/env bash
# Run every fuzz target for a bounded time, one after another.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#   scripts/fuzz.sh 30                                   (a short run; CI replays the corpora in tests/fuzz_corpus.rs)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); only the stable toolchain is on our machines,
# so RUSTC_BOOTSTRAP=1 lets it use the nightly-only sanitizer flags. The corpus lives in
# fuzz/corpus/<target>/ and grows in place (commit only small, useful new seeds); crashes land in
# fuzz/artifacts/<target>/ and make this script fail. Each target's last stats line (execution
# count, corpus size) is printed at the end.
set -euo pipefail

secs="${1:-60}"
shift || true
cd "$(dirname "$0")/../fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
export RUSTC_BOOTSTRAP=1
status=0
summary=""
for t in "${targets[@]}"; do
  log="$(mktemp)"
  echo "== fuzz $t for ${secs}s"
  # A private working copy of the seed corpus, so a short CI run leaves the tree clean.
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/"
  if ! cargo fuzz run "$t" "$work" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    status=1
    echo "!! $t failed; see fuzz/artifacts/$t/" >&2
    tail -n 40 "$log" >&2
  fi
  runs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -n 1 || true)"
  summary+="$t: ${runs:-?} executions in ${secs}s"$'\n'
  rm -rf "$work" "$log"
done
printf '%s' "$summary"
exit "$status"
