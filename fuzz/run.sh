#!/usr/bin/env bash
# Runs every fuzz harness as a coverage-guided libFuzzer campaign (cargo fuzz, nightly
# toolchain, AddressSanitizer), each for SECONDS (default 120) from its committed seeds
# in fuzz/corpus/<harness>/, growing a working corpus in fuzz/target/corpus/<harness>/
# (kept between runs, not committed); prints each campaign's executions, coverage and
# corpus size; crashes land in fuzz/artifacts/<harness>/ and fail the run.
#   ./fuzz/run.sh [seconds] [harness...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-120}
shift || true
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
harnesses=("$@")
if [ ${#harnesses[@]} -eq 0 ]; then
  mapfile -t harnesses < <(ls fuzz_targets | sed 's/\.rs$//')
fi
cargo +nightly fuzz build -O
status=0
for h in "${harnesses[@]}"; do
  log=$(mktemp)
  mkdir -p "target/corpus/$h"
  # -rss_limit_mb: the harnesses hold little; a leak shows as an out-of-memory crash.
  if ! cargo +nightly fuzz run -O "$h" "target/corpus/$h" "corpus/$h" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    status=1
    echo "$h: CRASH (see fuzz/artifacts/$h/)"
    grep -E "panicked|ERROR|SUMMARY" "$log" | head -5
  fi
  execs=$(grep -m1 stat::number_of_executed_units "$log" | awk '{print $2}')
  rate=$(grep -m1 stat::average_exec_per_sec "$log" | awk '{print $2}')
  cov=$(grep -E "^#[0-9]+" "$log" | tail -1 | grep -oE "cov: [0-9]+" || true)
  echo "$h: ${execs:-?} executions in ${seconds}s (${rate:-?}/s), ${cov:-cov: ?}, corpus $(ls "target/corpus/$h" | wc -l) files"
  rm -f "$log"
done
exit $status
