# The validator's rules as NixOS assertions, so a bad configuration fails at evaluation with a
# message naming the VM and the value (the same rules `vmsilo check` applies to the JSON).
{ config, lib, ... }:
let
  cfg = config.programs.vmsilo;
  vlib = import ../lib.nix { inherit lib; };
in
{
  config = lib.mkIf cfg.enable {
    assertions = vlib.checks {
      inherit cfg;
      userUid = config.users.users.${cfg.user}.uid or null;
    };
  };
}
