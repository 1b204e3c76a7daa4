# The command agent, socket-activated on vsock port 5000, with the idle watchdog for
# autoShutdown. It also renames interfaces from vmsilo.ifname=<name>,<mac> at start.
{ lib, vmsiloVm, vmsiloAgent, ... }:
{
  systemd.sockets.vmsilo-agent = {
    description = "vmsilo command agent socket";
    wantedBy = [ "sockets.target" ];
    socketConfig = {
      ListenStream = "vsock::5000";
      Accept = false;
    };
  };
  systemd.services.vmsilo-agent = {
    description = "vmsilo command agent";
    requires = [ "vmsilo-agent.socket" ];
    after = [ "vmsilo-agent.socket" ];
    # With autoShutdown the agent must run before anyone connects, so the idle clock starts.
    wantedBy = lib.optional vmsiloVm.autoShutdown.enable "multi-user.target";
    serviceConfig = {
      ExecStart = lib.escapeShellArgs ([ "${vmsiloAgent}/bin/vmsilo-agent" "--user" "user" ]
        ++ lib.optionals vmsiloVm.autoShutdown.enable
          [ "--auto-shutdown-after" (toString vmsiloVm.autoShutdown.after) ]);
      Restart = "always";
    };
  };
}
