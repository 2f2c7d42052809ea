#!/bin/busybox sh
# The kernel matrix guest's /init (tests/kernel_matrix.rs builds the initramfs): checks
# every config, runs workloads of known size in a kubelet-shaped pod cgroup, prints the
# exporter's metrics, then powers off. Every result line starts with "MATRIX ".
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
. /matrix/pod.env

say() { echo "MATRIX $*"; }
say kernel "$(uname -r)"

# Two disks for block_io: direct I/O on nullb0, page cache writeback on nullb1.
insmod /matrix/modules/$(uname -r)/configfs.ko
insmod /matrix/modules/$(uname -r)/null_blk.ko nr_devices=2 || say workload-failed insmod null_blk

# Each kernel at its shipped kernel.perf_event_paranoid (Debian: 3), except one run at
# Ubuntu's 4 (on 6.1). The built-ins run holding exactly the base DaemonSet's
# capabilities (deploy/base/daemonset.yaml), as uid 0 in a container does.
case $(uname -r) in 6.1.*) echo 4 >/proc/sys/kernel/perf_event_paranoid ;; esac
say value perf_event_paranoid "$(cat /proc/sys/kernel/perf_event_paranoid)"
caps=-all,+bpf,+perfmon,+dac_read_search
say value memlock_kib "$(ulimit -l)"
BASE="/usr/bin/setpriv --bounding-set=$caps --inh-caps=-all"
case $(uname -r) in 5.10.*)
  # Before 5.11 maps are charged to RLIMIT_MEMLOCK (64 KiB here), which the base
  # DaemonSet cannot raise past its hard limit: the refusal says so. A runtime whose
  # hard limit is higher (containerd's unit with LimitMEMLOCK=infinity) is enough: the
  # exporter raises its soft limit to it, as everything below shows.
  $BASE kube-ebpf-exporter --programs tcp_connect_latency --config.check 2>/dev/null |
    sed 's/^/MATRIX base-check /'
  ulimit -H -l unlimited ;;
esac

# --config.check on every config, every built-in program first.
$BASE kube-ebpf-exporter --programs all --config.check 2>/dev/null | sed 's/^/MATRIX check default /'
# A tracepoint and a kprobe config under the same capabilities: what a user's config
# gets on such a node.
for name in getpid-calls kprobe-fsync; do
  $BASE kube-ebpf-exporter --config.dir /cfg --config.names "$name" --config.check 2>/dev/null |
    sed 's/^/MATRIX base-check /'
done
for yaml in /cfg/*.yaml; do
  name=${yaml##*/}; name=${name%.yaml}
  kube-ebpf-exporter --config.dir /cfg --config.names "$name" --config.check 2>/tmp/check.log |
    sed 's/^/MATRIX check /'
done

# Pod metadata where the kubelet keeps it, and the container's cgroup.
mkdir -p "/var/log/pods/${NS}_${POD}_${POD_UID}/${CONTAINER}" /var/log/containers
touch "/var/log/pods/${NS}_${POD}_${POD_UID}/${CONTAINER}/0.log"
ln -s "/var/log/pods/${NS}_${POD}_${POD_UID}/${CONTAINER}/0.log" \
  "/var/log/containers/${POD}_${NS}_${CONTAINER}-${CONTAINER_ID}.log"
cg=/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${POD_UID_}.slice/cri-containerd-${CONTAINER_ID}.scope
mkdir -p "$cg"
# The second pod, for pod-exec-trace's spans.
mkdir -p "/var/log/pods/${NS}_${SPAN_POD}_${SPAN_POD_UID}/${CONTAINER}"
touch "/var/log/pods/${NS}_${SPAN_POD}_${SPAN_POD_UID}/${CONTAINER}/0.log"
ln -s "/var/log/pods/${NS}_${SPAN_POD}_${SPAN_POD_UID}/${CONTAINER}/0.log" \
  "/var/log/containers/${SPAN_POD}_${NS}_${CONTAINER}-${SPAN_CONTAINER_ID}.log"
span_cg=/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${SPAN_POD_UID_}.slice/cri-containerd-${SPAN_CONTAINER_ID}.scope
mkdir -p "$span_cg"

# The built-ins (embedded default) and every config that passed its check.
ok=$(kube-ebpf-exporter --config.dir /cfg --config.check 2>/dev/null | awk '/^ok/ { sub(":", "", $2); printf "%s%s", sep, $2; sep="," }')
say serving "$ok"
# Under emulation loading takes seconds; workloads start once both serve. One after
# the other: the attach-mark example counts every post_attach_mark call after its own.
started=$(cut -d' ' -f1 /proc/uptime)
serve() { # <port> <command...>
  port=$1; shift
  "$@" --web.listen-address 127.0.0.1:$port >/tmp/$port.log 2>&1 &
  pid=$!
  for i in $(seq 1 600); do
    if wget -q -O /dev/null http://127.0.0.1:$port/healthz 2>/dev/null; then
      # What the serving exporter holds (setpriv execs it: the same pid).
      say value capbnd_$port "$((0x$(awk '/^CapBnd/ { print $2 }' /proc/$pid/status)))"
      return
    fi
    sleep 0.2
  done
  say workload-failed "no exporter on port $port: $(tail -c 2000 /tmp/$port.log | tr '\n' ' ')"
}
# The examples use tracepoints, kprobes and uprobes, which open perf events: at
# paranoid 3 those need CAP_SYS_ADMIN, kept for the reload (deploy/overlays/perf-events).
# Their spans go to OTLP receivers here: every config's over gRPC (and, at the end, a
# third exporter's exec-trace and bio-trace over HTTP/protobuf).
otlp-receiver grpc 4317 >/tmp/otlp-grpc.log 2>&1 &
otlp-receiver http 4318 >/tmp/otlp-http.log 2>&1 &
export OTEL_BSP_SCHEDULE_DELAY=200
serve 9435 $BASE kube-ebpf-exporter --programs all
serve 9436 env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
  kube-ebpf-exporter --config.dir /cfg --config.names "$ok" --web.enable-lifecycle --capabilities.keep sys_admin
say serving-after "$started" "$(cut -d' ' -f1 /proc/uptime)"

# Workloads: the sizes tests/kernel_matrix.rs expects.
w() { kebpf-workload "$cg" "$@" || say workload-failed "$@"; }
w getpid 1234
w getppid 321
w getpgid 433
w getsid 50
w open-missing 77
w fork 12
w usleep 1 3 3 100 5000
w kill 9 0
w jobs 10
w fsync 41
w unix 13
w udp 9999 23
w lifecycle 4
# The memory and io controllers down to the container, as the kubelet enables them.
d=/sys/fs/cgroup
for part in kubepods.slice kubepods-burstable.slice kubepods-burstable-pod${POD_UID_}.slice; do
  echo +memory >"$d/cgroup.subtree_control"
  echo +io >"$d/cgroup.subtree_control"
  d=$d/$part
done
echo +memory >"$d/cgroup.subtree_control"
echo +io >"$d/cgroup.subtree_control"
# One OOM kill: the container's memory limited to 32 MiB, then a workload that grows.
echo $((32 << 20)) >"$cg/memory.max"
kebpf-workload "$cg" oom
# Direct reclaim: 64 MiB through the page cache of a 16 MiB container (nullb1's cache,
# written back on behalf of the container).
echo $((16 << 20)) >"$cg/memory.max"
w pagecache /dev/nullb1 64
echo max >"$cg/memory.max"
w connect 9436 25
# The program library's workloads; `value` lines report what the kernel counted.
v() { # <name> <workload args...>
  name=$1; shift
  out=$(kebpf-workload "$cg" "$@") || say workload-failed "$@"
  say value "$name" "$out"
}
# 7 connects to a closed port: 7 ECONNREFUSED and 7 resets received.
for i in 1 2 3 4 5 6 7; do kebpf-workload "$cg" connect 9 1; done
# 3 connects whose SYNs vanish, in a network namespace of their own.
out=$(unshare -n sh -ec 'ip link set lo up; ip addr add 10.9.9.1/32 dev lo; ip route add 10.9.9.9/32 dev lo src 10.9.9.1; echo 1 >/proc/sys/net/ipv4/tcp_syn_retries; exec "$@"' netns \
  kebpf-workload "$cg" connect-timeout 10.9.9.9 80 3) || say workload-failed connect-timeout
say value retransmits_sent "$out"
v udp_dropped udp-overflow 200
# Two loops sharing the CPU for 2 s: the kernel's own run-queue accounting of them, and
# the pod's histogram just before and after (nothing else of the pod runs meanwhile).
rq() { # <when>
  for s in count sum; do
    say value "runqueue_${s}_$1" "$(wget -q -O - http://127.0.0.1:9435/metrics |
      grep "^ebpf_exporter_runqueue_latency_seconds_$s{.*app_pod=\"$POD\"" | sed 's/.* //')"
  done
}
rq before
out=$(kebpf-workload "$cg" spin 2000 2) || say workload-failed spin
rq after
say value run_delay_ns "${out% *}"
say value runs "${out#* }"
# bio-trace sees an insert per request where the scheduler queues them (mq-deadline,
# built in before 6.12).
for disk in nullb0 nullb1; do echo mq-deadline >/sys/block/$disk/queue/scheduler 2>/dev/null; done
say value deadline "$(grep -c '\[mq-deadline\]' /sys/block/nullb0/queue/scheduler)"
w direct-write /dev/nullb0 16 65536
sleep 3

for port in 9435 9436; do
  wget -q -O - "http://127.0.0.1:$port/metrics" | sed "s/^/MATRIX metric $port /"
done
# A reload once programs are attached and capabilities dropped: one config changes (its
# help text), so it is loaded and attached again with what the exporter kept.
sed -i 's/^      help: .*/      help: reloaded/' /cfg/getpid-calls.yaml
say reload "$(wget -q -O - --post-data '' http://127.0.0.1:9436/-/reload 2>&1 | tr '\n' ' ')"
w getpid 7
sleep 2
say value reloaded_getpid "$(wget -q -O - http://127.0.0.1:9436/metrics |
  grep "^ebpf_exporter_getpid_calls_total{.*app_pod=\"$POD\"" | sed 's/.* //')"
# Spans, after the metrics (whose exact counts include getpid calls by every process,
# and the run-queue waits of the pod with whatever else runs): an exporter of
# exec-trace and bio-trace over HTTP/protobuf joins, then 16 direct writes to nullb1
# (both exporters' bio-trace), 7 runs of /bin/true under one bash in the second pod
# (exec-trace and pod-exec-trace); outside the pods, 5 sleeps under the span 1112..18
# of trace 0102..10 (sched-trace), given as the integers whose little-endian bytes
# those are.
serve 9437 env OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
  kube-ebpf-exporter --config.dir /cfg --config.names exec-trace,bio-trace --capabilities.keep sys_admin
kebpf-workload - direct-write /dev/nullb1 16 65536 || say workload-failed direct-write nullb1
sh -c 'echo $$ >"$1/cgroup.procs" && exec bash -c "for ((i = 0; i < 7; i++)); do /bin/true; done"' - "$span_cg" ||
  say workload-failed exec-trace bash
kebpf-workload - traced-sleep 5 0807060504030201 100f0e0d0c0b0a09 1817161514131211 ||
  say workload-failed traced-sleep
sleep 2
sed 's/^/MATRIX span /' /tmp/otlp-grpc.log /tmp/otlp-http.log
for log in /tmp/9435.log /tmp/9436.log /tmp/9437.log; do
  grep -E "ERROR|WARN" "$log" | sed "s|^|MATRIX log ${log##*/} |"
done
say end
poweroff -f
