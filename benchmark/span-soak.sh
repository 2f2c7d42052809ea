#!/usr/bin/env bash
# Spans with the collector away: exec-trace exporting to a collector that accepts
# connections and never answers (each export waits out its timeout), under a
# continuous exec load, beside a ring metric that must keep counting. Prints the
# exporter's RSS, spans made and dropped, and the metric's count every interval.
#   benchmark/span-soak.sh [minutes] [interval seconds]   (as root, after
#   cargo build --release --bin kube-ebpf-exporter)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10} interval=${2:-60}
bin="${CARGO_TARGET_DIR:-target}/release/kube-ebpf-exporter"
[ -x "$bin" ] || { echo "build it first: cargo build --release --bin kube-ebpf-exporter" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
for ex in exec-trace syscall-latency; do
  clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I bpf/include -idirafter /usr/include/x86_64-linux-gnu \
    -c examples/$ex.bpf.c -o "$dir/$ex.bpf.o"
  cp examples/$ex.yaml "$dir/"
done
# The black hole: a listener whose backlog takes connections nobody accepts.
python3 -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(4096); print(s.getsockname()[1], flush=True); time.sleep(1e9)' > "$dir/port" &
pids+=($!)
while [ ! -s "$dir/port" ]; do sleep 0.1; done
port=$(cat "$dir/port") web=127.0.0.1:$((port + 1))
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$port OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
  "$bin" --config.dir "$dir" --config.names exec-trace,syscall-latency --web.listen-address "$web" \
  2> "$dir/log" &
exporter=$!
pids+=($exporter)
until curl -sf "http://$web/healthz" >/dev/null; do sleep 0.2; done
# Exec load: traced bash loops, each running short-lived programs.
for _ in 1 2; do
  /bin/bash -c 'while :; do for i in $(seq 100); do /bin/true; done; done' &
  pids+=($!)
done
metric() { curl -s "http://$web/metrics" | awk -v m="$1" '{ split($1, n, "{") } $1 == m || n[1] == m { s += $2 } END { printf "%d", s }'; }
printf '%6s %8s %12s %12s %12s %14s\n' min rss_mib spans_made queue_full export_failed syscalls_counted
start=$(date +%s)
while :; do
  elapsed=$(( $(date +%s) - start ))
  rss=$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' /proc/$exporter/status)
  records=$(metric 'ebpf_exporter_ring_records_total{program="exec-trace",ring="exec_spans"}')
  queue=$(metric 'ebpf_exporter_spans_dropped_total{reason="queue_full"}')
  failed=$(metric 'ebpf_exporter_spans_dropped_total{reason="export_failed"}')
  syscalls=$(metric 'ebpf_exporter_syscall_latency_seconds_count')
  printf '%6.1f %8s %12s %12s %12s %14s\n' "$(echo "$elapsed / 60" | bc -l)" "$rss" "$records" "$queue" "$failed" "$syscalls"
  [ "$elapsed" -ge $((minutes * 60)) ] && break
  sleep "$interval"
done
