#!/usr/bin/env bash
# vmsilo's whole test suite, in tiers: formatting and lints, the unit/integration tier
# (`cargo test --workspace`: no root, no QEMU), then the end-to-end tier (real QEMU guests,
# vhost-user backends, the demo, the Nix checks; TCG when /dev/kvm can't boot stock kernels).
# The end-to-end tier never skips: a missing prerequisite fails it.
set -euo pipefail
cd "$(dirname "$0")/.."

export VMSILO_SHARED=${VMSILO_SHARED:-$(cd .. && pwd)/shared}
export VMSILO_KROOT=${VMSILO_KROOT:-/opt/vmsilo-test/kroot}
export VHOST_DEVICE_VSOCK=${VHOST_DEVICE_VSOCK:-/opt/vhost-device/bin/vhost-device-vsock}
bash tests/setup.sh

suite() {
  echo "== cargo fmt --check"
  cargo fmt --all -- --check

  echo "== cargo clippy"
  cargo clippy -q --workspace --all-targets --all-features -- -D warnings

  echo "== unit and integration tier"
  cargo test -q --workspace

  echo "== end-to-end tier"
  cargo test -q -p vmsilo-tests --features e2e -- --test-threads=1
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
suite 2>&1 | tee "$log"

# One closing line over every cargo test run above, so the whole suite reads as one result.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
