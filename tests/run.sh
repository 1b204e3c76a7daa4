#!/usr/bin/env bash
# vmsilo's whole test suite, in tiers: formatting and lints, the unit/integration tier
# (`cargo test --workspace`: no root, no QEMU), then the end-to-end tier (real QEMU guests,
# vhost-user backends; TCG when /dev/kvm can't boot stock kernels). The end-to-end tier never
# skips: a missing prerequisite fails it.
set -euo pipefail
cd "$(dirname "$0")/.."

export VMSILO_SHARED=${VMSILO_SHARED:-$(cd .. && pwd)/shared}
export VMSILO_KROOT=${VMSILO_KROOT:-/opt/vmsilo-test/kroot}
export VHOST_DEVICE_VSOCK=${VHOST_DEVICE_VSOCK:-/opt/vhost-device/bin/vhost-device-vsock}
bash tests/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy -q --workspace --all-targets -- -D warnings

echo "== unit and integration tier"
cargo test -q --workspace

echo "== end-to-end tier"
cargo test -q -p vmsilo-tests --features e2e -- --test-threads=1

for check in tests/checks/*.sh; do
  [[ -e $check ]] || continue
  echo "== $check"
  bash "$check"
done
