#!/usr/bin/env bash
# Instructions per event through the enrich and aggregate stages (replay, 1 worker
# each), a figure that does not move with the machine: callgrind counts a run of N
# events and one of 2N, and the difference over N leaves set-up out.
#   benchmark/replay-instructions.sh [series,...]   (after cargo build --release -p benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release/replay"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[ -x "$bin" ] || { echo "build it first: cargo build --release -p benchmark --bin replay" >&2; exit 1; }
n=2000000 # one pass of the replay's batches
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
instructions() {
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" "$1" 1 "$2" >/dev/null 2>"$out/log"
  sed -n 's/.*Collected : //p' "$out/log"
}
printf '%9s %18s\n' series "instructions/event"
for series in $(echo "${1:-1,1000,100000}" | tr , ' '); do
  one=$(instructions "$n" "$series")
  two=$(instructions $((2 * n)) "$series")
  awk -v s="$series" -v a="$one" -v b="$two" -v n="$n" 'BEGIN { printf "%9s %18.0f\n", s, (b - a) / n }'
done
