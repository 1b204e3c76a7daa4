# The guest agent (command server, idle watchdog, interface naming).
{ callPackage }:
(callPackage ./rust-crate.nix { }) {
  pname = "vmsilo-guest";
  crate = "vmsilo-guest";
  description = "vmsilo guest agent";
  meta.mainProgram = "vmsilo-agent";
}
