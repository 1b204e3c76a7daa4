# Builds one crate of the workspace from Cargo.lock (no vendored hashes to maintain).
{ lib, rustPlatform, pkg-config, libxkbcommon, wayland }:
{ pname, crate, description, buildInputs ? [ ], nativeBuildInputs ? [ ], meta ? { } }:
rustPlatform.buildRustPackage {
  inherit pname;
  version = (lib.importTOML ../../Cargo.toml).workspace.package.version;
  src = import ./workspace-src.nix { inherit lib; };
  cargoLock.lockFile = ../../Cargo.lock;
  cargoBuildFlags = [ "-p" crate ];
  # The test suite runs in CI (`tests/run.sh`); several tests need a D-Bus daemon, QEMU or a
  # compositor that the Nix build sandbox does not have.
  doCheck = false;
  nativeBuildInputs = [ pkg-config ] ++ nativeBuildInputs;
  inherit buildInputs;
  meta = {
    inherit description;
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
  } // meta;
}
