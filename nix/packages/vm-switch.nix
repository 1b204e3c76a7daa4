# The vhost-user-net L3 switch daemon.
{ callPackage }:
(callPackage ./rust-crate.nix { }) {
  pname = "vm-switch";
  crate = "vm-switch";
  description = "vhost-user-net L3 switch between vmsilo VMs";
  meta.mainProgram = "vm-switch";
}
