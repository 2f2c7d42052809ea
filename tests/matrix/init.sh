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

# --config.check on every config, the embedded default (built-in programs) first.
kube-ebpf-exporter --config.check 2>/dev/null | sed 's/^/MATRIX check default /'
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

# The built-ins (embedded default) and every config that passed its check.
ok=$(kube-ebpf-exporter --config.dir /cfg --config.check 2>/dev/null | awk '/^ok/ { sub(":", "", $2); printf "%s%s", sep, $2; sep="," }')
say serving "$ok"
# Under emulation loading takes seconds; workloads start once both serve. One after
# the other: the attach-mark example counts every post_attach_mark call after its own.
started=$(cut -d' ' -f1 /proc/uptime)
serve() { # <port> <flags...>
  port=$1; shift
  kube-ebpf-exporter --web.listen-address 127.0.0.1:$port "$@" >/tmp/$port.log 2>&1 &
  for i in $(seq 1 600); do
    wget -q -O /dev/null http://127.0.0.1:$port/healthz && return
    sleep 0.2
  done
}
serve 9435
serve 9436 --config.dir /cfg --config.names "$ok"
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
w udp 9999 23
w lifecycle 4
# One OOM kill: the container's memory limited to 32 MiB, then a workload that grows.
d=/sys/fs/cgroup
for part in kubepods.slice kubepods-burstable.slice kubepods-burstable-pod${POD_UID_}.slice; do
  echo +memory >"$d/cgroup.subtree_control"
  d=$d/$part
done
echo +memory >"$d/cgroup.subtree_control"
echo $((32 << 20)) >"$cg/memory.max"
kebpf-workload "$cg" oom
echo max >"$cg/memory.max"
w connect 9436 25
sleep 3

for port in 9435 9436; do
  wget -q -O - "http://127.0.0.1:$port/metrics" | sed "s/^/MATRIX metric $port /"
done
for log in /tmp/9435.log /tmp/9436.log; do
  grep -E "ERROR|WARN" "$log" | sed "s|^|MATRIX log ${log##*/} |"
done
say end
poweroff -f
