# The guest Wayland proxy chosen by waylandProxy: it offers wayland-0 to guest programs and
# forwards them over virtio-gpu cross-domain to the host's per-VM security-context socket.
{ lib, pkgs, vmsiloVm, ... }:
let
  proxies = {
    wayland-proxy-virtwl = [
      "${pkgs.wayland-proxy-virtwl}/bin/wayland-proxy-virtwl"
      "--virtio-gpu"
      "--wayland-display=wayland-0"
      "--x-display=0"
      "--xwayland-binary=${pkgs.xwayland}/bin/Xwayland"
    ];
    sommelier = [
      "${pkgs.sommelier}/bin/sommelier"
      "--virtgpu-channel"
      "--socket=wayland-0"
      "--parent"
    ];
  };
in
lib.mkIf (vmsiloVm.gpu != false) {
  hardware.graphics.enable = true;
  systemd.user.services.vmsilo-wayland-proxy = {
    description = "Wayland proxy to the host (${vmsiloVm.waylandProxy})";
    wantedBy = [ "default.target" ];
    serviceConfig = {
      ExecStart = lib.escapeShellArgs proxies.${vmsiloVm.waylandProxy};
      Restart = "always";
    };
  };
  # The agent starts commands without a login session: keep the user manager running.
  users.users.user.linger = true;
}
