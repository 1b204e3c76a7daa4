#!/usr/bin/env bash
# Installs what vmsilo's test suite needs on a fresh Debian 12 machine. Idempotent: packages that
# are already there are not reinstalled. Needs root for apt (CI and this project's machines run as
# root); without root it lists what is missing and stops.
set -euo pipefail

APT_PACKAGES=(
  # end-to-end guests (../shared/vmtest): QEMU, busybox initramfs, iperf3, kernel unpacking
  qemu-system-x86 qemu-utils busybox-static iperf3 xz-utils iproute2 kmod cpio
  # static probes and test binaries; python3 runs the recorders standing in for crosvm
  gcc libc6-dev python3
  # dpdk-testpmd: the reference vhost-user forwarder (tests and the vm-switch benchmark)
  dpdk-dev
  # desktop entries are checked with desktop-file-validate
  desktop-file-utils libxml2-utils librsvg2-bin
  # the tray is tested on a private D-Bus
  dbus
  # smithay's test compositor links libxkbcommon
  libxkbcommon-dev pkg-config
  # nix-instantiate --parse checks every .nix file
  nix-bin
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "tests/setup.sh: missing Debian packages (install as root): ${missing[*]}" >&2
    exit 1
  fi
  echo "tests/setup.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The guest kernel for ../shared/vmtest, unpacked without running initramfs-tools.
KROOT=${VMSILO_KROOT:-/opt/vmsilo-test/kroot}
if ! compgen -G "$KROOT/boot/vmlinuz-*" >/dev/null; then
  echo "tests/setup.sh: unpacking a Debian guest kernel into $KROOT"
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt downloads as _apt
  (cd "$tmp" && apt-get download -qq "$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')")
  mkdir -p "$KROOT"
  dpkg-deb -x "$tmp"/linux-image-*.deb "$KROOT"
  rm -rf "$tmp"
fi

# The tiny-guest initramfs and vmlinux (../shared/vmtest), built from that kernel.
SHARED=${VMSILO_SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
VMTEST_DIR=${VMTEST_DIR:-/tmp/vmtest}
initrd=$VMTEST_DIR/initramfs.cpio.gz
if [[ ! -s $initrd || $initrd -ot $SHARED/vmtest/build-initramfs.sh || $initrd -ot $SHARED/vmtest/guest-init.sh || $initrd -ot $SHARED/vmtest/guest-lib.sh ]]; then
  echo "tests/setup.sh: building the test-guest initramfs in $VMTEST_DIR"
  VMTEST_DIR=$VMTEST_DIR bash "$SHARED/vmtest/build-initramfs.sh" --kroot "$KROOT" -o "$initrd" >/dev/null
fi

# vhost-device-vsock serves the guests' vsock over vhost-user (no /dev/vhost-vsock here).
VHOST_ROOT=${VMSILO_VHOST_ROOT:-/opt/vhost-device}
if [[ ! -x $VHOST_ROOT/bin/vhost-device-vsock ]]; then
  echo "tests/setup.sh: building vhost-device-vsock 0.3.0 (about 2 minutes)"
  CARGO_INSTALL_ROOT=$VHOST_ROOT CARGO_TARGET_DIR=${TMPDIR:-/tmp}/vhost-device-build \
    cargo install -q vhost-device-vsock --version 0.3.0 --locked
fi
echo "tests/setup.sh: ready"
