# The systemd units of the runtime contract: per VM a command socket, its proxy and the VM
# service; per vm-switch network a switch daemon.
{ config, lib, pkgs, ... }:
let
  cfg = config.programs.vmsilo;
  vlib = import ../lib.nix { inherit lib; };
  inherit (vlib) paths units;
  vmsilo = "${cfg.package}/bin/vmsilo";
  vmSwitch = "${cfg.vmSwitchPackage}/bin/vm-switch";
  configFile = config.programs.vmsilo.internal.configFile;

  tapsOf = vm: map (t: t.name) (lib.filter (t: t.vm == vm.name) (vlib.tapInterfaces cfg.nixosVms));
  # The VM needs its TAP devices: require their device units (present with scripted networking
  # and networkd alike) and order after the scripted <name>-netdev.service when it exists.
  tapDevices = vm: map (t: "sys-subsystem-net-devices-${builtins.replaceStrings [ "-" ] [ "\\x2d" ] t}.device") (tapsOf vm);
  tapServices = vm: map (t: "${t}-netdev.service") (tapsOf vm);

  socketUnit = vm: lib.nameValuePair (lib.removeSuffix ".socket" (units.socket vm.name)) {
    description = "vmsilo command socket of VM ${vm.name}";
    wantedBy = [ "sockets.target" ];
    socketConfig = {
      ListenStream = "${paths.runDir}/${vm.name}-command.socket";
      SocketUser = cfg.user;
      SocketMode = "0600";
      Accept = false;
      RemoveOnStop = true;
    };
  };

  proxyUnit = vm: lib.nameValuePair (lib.removeSuffix ".service" (units.proxy vm.name)) {
    description = "vmsilo command proxy of VM ${vm.name}";
    # The proxy starts the VM (and its dependsOn VMs) itself through systemd's StartUnit, so a
    # start failure reaches the waiting vm-run as an error instead of failing the socket.
    requires = [ (units.socket vm.name) ];
    after = [ (units.socket vm.name) ];
    restartTriggers = [ configFile ];
    serviceConfig = {
      ExecStart = lib.escapeShellArgs [ vmsilo "proxy" vm.name ];
      SyslogIdentifier = "vmsilo-${vm.name}";
      # The proxy only relays bytes between the socket and the guest's vsock port, and starts
      # units through polkit (host/polkit.nix), so it runs as the user. Hybrid vsock goes
      # through the backend's unix socket, which root's VM service creates: that proxy is root.
      User = if vm.vsock.transport == "vhost-vsock" then cfg.user else "root";
      NoNewPrivileges = true;
      ProtectSystem = "strict";
      ProtectHome = true;
      PrivateTmp = true;
      RestrictAddressFamilies = [ "AF_UNIX" "AF_VSOCK" ];
    };
  };

  vmUnit = vm: lib.nameValuePair (lib.removeSuffix ".service" (units.vm vm.name)) {
    description = "vmsilo VM ${vm.name}";
    wantedBy = lib.optional vm.autoStart "multi-user.target";
    wants = map units.vm vm.dependsOn ++ tapServices vm;
    requires = map units.switch (vlib.vmSwitchNetworksOf vm) ++ tapDevices vm;
    after = [ "network.target" ] ++ map units.vm vm.dependsOn
      ++ map units.switch (vlib.vmSwitchNetworksOf vm) ++ tapDevices vm ++ tapServices vm;
    # A rebuild must not kill running VMs; the new config applies at the next start.
    restartIfChanged = false;
    # What `vmsilo vm run` spawns: the VMM, qemu-img for the qcow2 overlay, the Wayland
    # security-context helper and, for hybrid vsock, the vhost-user vsock backend.
    path = [ pkgs.qemu-utils cfg.package ]
      ++ lib.optional (vm.vmm == "crosvm") pkgs.crosvm
      ++ lib.optional (vm.vmm == "qemu") pkgs.qemu_kvm
      ++ lib.optional (vm.vsock.transport == "vhost-user") pkgs.vhost-device-vsock;
    serviceConfig = {
      Type = "notify";
      NotifyAccess = "main";
      ExecStart = lib.escapeShellArgs [ vmsilo "vm" "run" vm.name ];
      SyslogIdentifier = "vmsilo-${vm.name}-vm";
      # Gives the guest time to power off cleanly before SIGKILL.
      TimeoutStopSec = 60;
      KillMode = "mixed";
    };
  };

  switchUnit = net: lib.nameValuePair (lib.removeSuffix ".service" (units.switch net)) {
    description = "vm-switch network ${net}";
    restartTriggers = [ configFile ];
    serviceConfig = {
      ExecStart = lib.escapeShellArgs ([
        vmSwitch
        "--name" net
        "--config-dir" "${paths.switchDir}/${net}"
        "--log-level" cfg.vm-switch.logLevel
      ] ++ cfg.vm-switch.extraArgs);
      SyslogIdentifier = "vm-switch-${net}";
      Restart = "on-failure";
      # vm-switch sandboxes itself (namespaces, pivot_root, seccomp); these only narrow the
      # starting point and must leave user namespaces possible.
      NoNewPrivileges = true;
      ProtectSystem = "strict";
      ProtectHome = true;
      PrivateNetwork = true;
      ReadWritePaths = [ "${paths.switchDir}/${net}" ];
    };
  };
in
{
  config = lib.mkIf cfg.enable {
    systemd.sockets = lib.listToAttrs (map socketUnit cfg.nixosVms);
    systemd.services = lib.listToAttrs (map proxyUnit cfg.nixosVms ++ map vmUnit cfg.nixosVms
      ++ map switchUnit (vlib.switchNetworks cfg.nixosVms));
  };
}
