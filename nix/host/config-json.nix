# /etc/vmsilo/config.json: the document every vmsilo tool reads. Built once, checked by
# `vmsilo check` at build time so Nix and the Rust validator cannot disagree at runtime.
{ config, lib, pkgs, ... }:
let
  cfg = config.programs.vmsilo;
  vlib = import ../lib.nix { inherit lib; };
  document = vlib.configDocument {
    inherit cfg;
    userUid = config.users.users.${cfg.user}.uid or null;
    guests = config.programs.vmsilo.internal.guests;
  };
  unchecked = pkgs.writeText "vmsilo-config-unchecked.json" (builtins.toJSON document);
in
{
  options.programs.vmsilo.internal = {
    document = lib.mkOption {
      type = lib.types.attrs;
      internal = true;
      readOnly = true;
      description = "The config document as a Nix value (for tests and other modules).";
    };
    configFile = lib.mkOption {
      type = lib.types.path;
      internal = true;
      readOnly = true;
      description = "The checked config.json in the store.";
    };
  };

  config = lib.mkIf cfg.enable {
    programs.vmsilo.internal.document = document;
    programs.vmsilo.internal.configFile = pkgs.runCommand "vmsilo-config.json" {
      nativeBuildInputs = [ cfg.package ];
    } ''
      vmsilo check ${unchecked}
      cp ${unchecked} $out
    '';
    environment.etc."vmsilo/config.json".source = config.programs.vmsilo.internal.configFile;
  };
}
