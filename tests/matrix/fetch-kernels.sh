#!/usr/bin/env bash
# Fetches the kernel matrix's guest kernels into $1 (a cache: kept between runs):
# Debian bullseye's newest 5.10 and bookworm's newest 6.1 and 6.12 cloud kernels.
# Packages are downloaded and unpacked, never installed; bullseye's index lives in a
# private apt directory so the system's sources stay as they are.
# Each kernel's null_blk module (and configfs, which it needs) comes along, uncompressed:
# the guest's block device.
# Prints one line per kernel: <release> <vmlinuz path> <config path>.
set -euo pipefail
cache=$1
mkdir -p "$cache"
cd "$cache"

newest() { # <apt options...> -- <regex>
  local opts=() ; while [ "$1" != -- ]; do opts+=("$1"); shift; done; shift
  apt-cache "${opts[@]}" search --names-only "$1" | awk '{print $1}' | sort -V | tail -1
}

bullseye=(-o APT::Sandbox::User=root -o Dir::Etc::sourcelist="$cache/apt/bullseye.list" -o Dir::Etc::sourceparts=-
          -o Dir::State::Lists="$cache/apt/lists" -o Dir::Cache="$cache/apt/cache"
          -o Dir::State::status=/var/lib/dpkg/status)
if [ ! -f "$cache/apt/updated" ] || [ -n "$(find "$cache/apt/updated" -mtime +1)" ]; then
  mkdir -p "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial"
  echo "deb http://deb.debian.org/debian bullseye main" >"$cache/apt/bullseye.list"
  apt-get "${bullseye[@]}" update -qq >&2
  touch "$cache/apt/updated"
fi

fetch() { # <apt options...> -- <package>
  local opts=() ; while [ "$1" != -- ]; do opts+=("$1"); shift; done; shift
  local pkg=$1 dir="$cache/$1"
  if [ ! -f "$dir/done-modules" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir" && apt-get "${opts[@]}" download -qq "$pkg" >&2 &&
      dpkg-deb --fsys-tarfile ./*.deb | tar -x ./boot --wildcards '*/null_blk.ko*' '*/configfs.ko*' &&
      find . -name '*.ko.xz' -exec xz -d {} + &&
      find . -name '*.ko' -exec mv {} boot/ \; && rm -rf ./*.deb ./lib ./usr && touch done-modules)
  fi
  local vmlinuz; vmlinuz=$(ls "$dir"/boot/vmlinuz-*)
  local release=${vmlinuz##*/vmlinuz-}
  echo "$release $vmlinuz $dir/boot/config-$release"
}

fetch "${bullseye[@]}" -- "$(newest "${bullseye[@]}" -- '^linux-image-5\.10\.0-[0-9]+-cloud-amd64$')"
fetch -o APT::Sandbox::User=root -- "$(newest -- '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$')"
fetch -o APT::Sandbox::User=root -- "$(newest -- '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$')"
