#!/usr/bin/env bash
# Builds the exporter's container image without a registry: the release binary from
# this machine's toolchain, on a base unpacked from Debian's packages (the host's apt
# sources), assembled by deploy/Dockerfile with buildah. Prints the image's size.
#   deploy/build-image.sh [image name] [oci-archive path]
# Needs cargo, clang, libbpf-dev, buildah and apt (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-localhost/kube-ebpf-exporter:dev}
archive=${2:-}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

cargo build --release --locked --bin kube-ebpf-exporter
strip --strip-debug -o "$ctx/kube-ebpf-exporter" "${CARGO_TARGET_DIR:-target}/release/kube-ebpf-exporter"

# The base: what the binary links (glibc, libgcc_s), os-release, /etc/services and
# protocols; each package's control file under /var/lib/dpkg/status.d (as distroless
# images keep them) so image scanners know the versions.
base=$ctx/base
mkdir -p "$ctx/debs" "$base/var/lib/dpkg/status.d" "$base/etc" "$base/tmp" "$base/root"
download() { (cd "$ctx/debs" && apt-get -o APT::Sandbox::User=root download -qq libc6 libgcc-s1 base-files netbase); }
# A machine whose package lists were never fetched knows no download location yet.
download 2>/dev/null || { apt-get update -qq && download; }
for deb in "$ctx"/debs/*.deb; do
  dpkg-deb -x "$deb" "$base"
  dpkg-deb -f "$deb" >"$base/var/lib/dpkg/status.d/$(dpkg-deb -f "$deb" Package)"
done
# Not needed by a static-config binary: charset converters, docs, locales.
rm -rf "$base/usr/lib/x86_64-linux-gnu/gconv" "$base/usr/share/doc" "$base/usr/share/man" \
  "$base/usr/share/locale" "$base/usr/share/lintian" "$base/usr/share/info"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$base/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$base/etc/group"
chmod 1777 "$base/tmp"
tar --numeric-owner --owner=0 --group=0 -C "$base" -cf "$ctx/base.tar" .

# Nothing is pulled or verified (FROM scratch): a policy of our own, so a machine
# without containers-common's /etc/containers/policy.json builds too.
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$ctx/policy.json"
export STORAGE_DRIVER=vfs
buildah build --quiet --signature-policy "$ctx/policy.json" -f deploy/Dockerfile -t "$image" "$ctx" >/dev/null
if [ -n "$archive" ]; then
  rm -f "$archive"
  buildah push --quiet --signature-policy "$ctx/policy.json" "$image" "oci-archive:$archive:$image"
fi
size=$(buildah images --format '{{.Size}}' "$image" | head -1)
echo "image $image: $size (binary $(du -h "$ctx/kube-ebpf-exporter" | cut -f1), base $(du -sh "$base" | cut -f1))${archive:+, archive $(du -h "$archive" | cut -f1)}"
