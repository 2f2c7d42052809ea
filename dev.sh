#!/usr/bin/env bash
# Newcomer entry point on Debian: installs what the build and the kernel programs need,
# mounts tracefs and bpffs, then runs the exporter (`run`) or the test suite (`test`).
#   ./dev.sh run [exporter flags...]    e.g. ./dev.sh run --web.listen-address :9435
#   ./dev.sh test [cargo test args...]
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
  # BPF needs root; keep the caller's PATH so their cargo is found.
  exec sudo -E env "PATH=$PATH" "$0" "$@"
fi

setup() {
  local missing=()
  command -v clang >/dev/null || missing+=(clang)
  # Strips the DWARF off the embedded BPF objects (bpf/build.rs).
  command -v llvm-strip >/dev/null || missing+=(llvm)
  [ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
  command -v bpftool >/dev/null || missing+=(bpftool)
  # Tests only: a real Prometheus scrapes the exporter; promtool lints its output.
  command -v prometheus >/dev/null || missing+=(prometheus)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "dev.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -d /sys/kernel/tracing/events ]; then
    mkdir -p /sys/kernel/tracing
    mount -t tracefs nodev /sys/kernel/tracing
  fi
  if ! mountpoint -q /sys/fs/bpf; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  run)
    setup
    exec cargo run --release --bin kube-ebpf-exporter -- "$@"
    ;;
  test)
    setup
    # Tests only: deploy/ manifests are rendered and validated offline (kubectl); a real
    # containerd runs a pod through CRI from a locally built busybox image.
    extra=()
    command -v kubectl >/dev/null || extra+=(kubernetes-client)
    command -v containerd >/dev/null || extra+=(containerd)
    command -v runc >/dev/null || extra+=(runc)
    # The image test builds deploy/Dockerfile offline with buildah and runs it there.
    command -v buildah >/dev/null || extra+=(buildah)
    dpkg -s busybox-static >/dev/null 2>&1 || extra+=(busybox-static)
    # The test workload fires a USDT probe (<sys/sdt.h>).
    dpkg -s systemtap-sdt-dev >/dev/null 2>&1 || extra+=(systemtap-sdt-dev)
    # The kernel matrix boots Debian's 5.10, 6.1 and 6.12 kernels under qemu.
    command -v qemu-system-x86_64 >/dev/null || extra+=(qemu-system-x86)
    command -v cpio >/dev/null || extra+=(cpio)
    # TLS tests: certificates made with openssl, scraped with curl.
    command -v openssl >/dev/null || extra+=(openssl)
    command -v curl >/dev/null || extra+=(curl)
    # Examples are compiled with clang 16, as upstream's newer ones need.
    command -v clang-16 >/dev/null || extra+=(clang-16)
    if [ ${#extra[@]} -gt 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${extra[@]}" >/dev/null
    fi
    command -v kubernetes-validate >/dev/null ||
      python3 -m pip install -q --break-system-packages kubernetes-validate
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    set +e
    cargo test --workspace "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    # One closing line for the whole workspace (cargo prints one per test binary).
    awk '/^test result:/ { p += $4; f += $6 } /^SKIPPED / { s++ }
         END { printf "workspace: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
    exit "$status"
    ;;
  *)
    echo "usage: $0 run [exporter flags...] | test [cargo test args...]" >&2
    exit 2
    ;;
esac
