# The user-facing commands on PATH.
{ config, lib, ... }:
let
  cfg = config.programs.vmsilo;
in
{
  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
  };
}
