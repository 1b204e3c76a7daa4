# Host desktop entries for every guest program ("Firefox [banking]"), coloured per VM, generated
# from the checked config document by `vmsilo desktop` at build time.
{ config, lib, pkgs, ... }:
let
  cfg = config.programs.vmsilo;
  entries = pkgs.runCommand "vmsilo-desktop-entries" {
    nativeBuildInputs = [ cfg.package ];
  } ''
    mkdir -p $out
    vmsilo desktop --config ${config.programs.vmsilo.internal.configFile} --out $out \
      --vm-run ${cfg.package}/bin/vm-run
  '';
in
{
  options.programs.vmsilo.internal.desktopEntries = lib.mkOption {
    type = lib.types.package;
    internal = true;
    readOnly = true;
    description = "The generated desktop-entries package.";
  };
  config = lib.mkIf cfg.enable {
    programs.vmsilo.internal.desktopEntries = entries;
    environment.systemPackages = [ entries ];
  };
}
