# The tray (StatusNotifierItem) runs in the configured user's graphical session only.
{ config, lib, ... }:
let
  cfg = config.programs.vmsilo;
in
{
  config = lib.mkIf cfg.enable {
    systemd.user.services.vmsilo-tray = {
      description = "vmsilo tray";
      wantedBy = [ "graphical-session.target" ];
      partOf = [ "graphical-session.target" ];
      after = [ "graphical-session.target" ];
      unitConfig.ConditionUser = cfg.user;
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/vmsilo-tray";
        Restart = "on-failure";
      };
    };
  };
}
