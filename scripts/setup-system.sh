#!/bin/sh
# Install the system packages rlm needs to build and boot its guest VM (Debian/Ubuntu).
# Idempotent; runs unattended (CI=true, no stdin). Run as root or through sudo.
#   qemu-system-x86  QEMU (qemu-system-x86_64, qboot.rom firmware)
#   qemu-utils       qemu-img (per-agent qcow2 overlays)
#   mmdebstrap       builds the Debian guest root from the apt mirror
#   debian-archive-keyring  lets mmdebstrap verify Debian's mirror on Ubuntu hosts too
#   e2fsprogs        mke2fs -d (packs the root as ext4 without root or loop devices)
#   busybox-static   (host-side fallback; the image gets its own)
#   dpkg-dev bits    dpkg-deb unpacks the kernel package (part of dpkg)
#   xorriso          extracts the Alpine ISO (alpine recipe only)
#   nodejs           runs the JavaScript guest (guests/node) that CI certifies; only if `node` is missing
set -eu

PACKAGES="qemu-system-x86 qemu-utils mmdebstrap debian-archive-keyring e2fsprogs busybox-static dpkg xorriso ca-certificates chromium"
command -v node >/dev/null 2>&1 || PACKAGES="$PACKAGES nodejs"

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -E sh "$0" "$@"
  fi
  echo "setup-system.sh: run as root (or install sudo)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
missing=""
for pkg in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "setup-system.sh: installing:$missing"
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing </dev/null
else
  echo "setup-system.sh: all system packages present"
fi

# KVM is optional (rlm probes it and falls back to TCG); give the invoking user access if
# the device exists.
if [ -e /dev/kvm ] && [ -n "${SUDO_USER:-}" ] && getent group kvm >/dev/null; then
  usermod -a -G kvm "$SUDO_USER" || true
fi
qemu-system-x86_64 --version | head -n1
