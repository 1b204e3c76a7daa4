# Option declarations for `programs.vmsilo`. Declarations only: every option's effect lives in
# nix/host/*.nix (one file per concern). Names, types and defaults follow the spec's tables;
# `vmm`, `vsock.transport` and `waylandProxy` are this project's additions.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption types;
  enums = import ./enums.nix;

  # crosvm's free-form key=value devices: scalar values only, they end up in one flag.
  kvValue = types.oneOf [ types.str types.int types.bool types.path ];
  kvAttrs = types.attrsOf kvValue;

  diskType = types.submodule {
    freeformType = kvAttrs;
    options.path = mkOption {
      type = types.either types.str types.path;
      description = "Disk image or block device, the positional argument of crosvm --block.";
    };
  };

  routeType = types.submodule {
    options.via = mkOption {
      type = types.str;
      description = "Gateway address for this destination.";
    };
  };

  interfaceType = types.submodule ({ name, ... }: {
    options = {
      type = mkOption {
        type = types.enum enums.interfaceTypes;
        default = "vm-switch";
        description = "Host-side backing of the interface: a host TAP device or a vm-switch port.";
      };
      macAddress = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Guest MAC address; derived from SHA1(\"<vm>-${name}\") when null.";
      };
      tap = {
        name = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Host TAP device name; `<vm>-<index>` when null (at most 15 characters).";
        };
        hostAddress = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Host-side address with prefix length on the TAP; excludes tap.bridge.";
        };
        bridge = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Existing host bridge the TAP joins; excludes tap.hostAddress.";
        };
      };
      vmNetwork = {
        name = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "vm-switch network this interface joins (required for type vm-switch).";
        };
        receiveBroadcast = mkOption {
          type = types.bool;
          default = false;
          description = "Deliver broadcast frames on this network to this VM.";
        };
        routes = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "CIDR prefixes this VM routes for other peers (e.g. a default gateway).";
        };
      };
      dhcp = mkOption {
        type = types.bool;
        default = false;
        description = "Configure the guest interface by DHCP.";
      };
      addresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Static guest IPv4 addresses with prefix length.";
      };
      routes = mkOption {
        type = types.attrsOf routeType;
        default = { };
        description = "Guest IPv4 routes: destination CIDR to gateway.";
      };
      v6Addresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Static guest IPv6 addresses with prefix length.";
      };
      v6Routes = mkOption {
        type = types.attrsOf routeType;
        default = { };
        description = "Guest IPv6 routes: destination CIDR to gateway.";
      };
    };
  });

  crosvmVmOptions = {
    logLevel = mkOption {
      type = types.nullOr (types.enum enums.logLevels);
      default = null;
      description = "crosvm log level for this VM; the global level when null.";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Appended to the global crosvm.extraArgs (before `run`).";
    };
    extraRunArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Appended to the global crosvm.extraRunArgs (after `run`).";
    };
  };

  vmType = types.submodule ({ config, ... }: {
    options = {
      id = mkOption {
        type = types.int;
        description = "Odd number from 3 to 255, unique; the VM's vsock CID.";
      };
      name = mkOption {
        type = types.str;
        description = "VM name used in commands, unit names and paths.";
      };
      memory = mkOption {
        type = types.ints.positive;
        default = 1024;
        description = "Guest memory in MiB.";
      };
      cpus = mkOption {
        type = types.ints.positive;
        default = 2;
        description = "Number of virtual CPUs.";
      };
      color = mkOption {
        type = types.str;
        default = "red";
        description = "Frame colour of this VM's windows: CSS name, #rgb, #rrggbb or rgb(r,g,b).";
      };
      vmm = mkOption {
        type = types.enum enums.vmms;
        default = "crosvm";
        description = "Virtual machine monitor that runs this VM.";
      };
      vsock.transport = mkOption {
        type = types.enum enums.vsockTransports;
        default = "vhost-vsock";
        description = "Kernel vhost-vsock (CID = id) or hybrid vsock over a vhost-user unix socket.";
      };
      waylandProxy = mkOption {
        type = types.enum enums.waylandProxies;
        default = "wayland-proxy-virtwl";
        description = "Guest-side Wayland proxy that forwards clients over virtio-gpu cross-domain.";
      };
      network = {
        nameservers = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Guest DNS servers.";
        };
        interfaces = mkOption {
          type = types.attrsOf interfaceType;
          default = { };
          description = "Guest network interfaces; the attribute name is the guest interface name.";
        };
      };
      autoShutdown = {
        enable = mkOption {
          type = types.bool;
          default = false;
          description = "Power the guest off once no command has run for autoShutdown.after seconds.";
        };
        after = mkOption {
          type = types.ints.positive;
          default = 60;
          description = "Idle seconds before auto-shutdown.";
        };
      };
      autoStart = mkOption {
        type = types.bool;
        default = false;
        description = "Start at boot rather than on first use.";
      };
      dependsOn = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Other VMs started together with this one.";
      };
      additionalDisks = mkOption {
        type = types.listOf diskType;
        default = [ ];
        description = "Extra crosvm --block devices; keys besides path are passed on as key=value.";
      };
      rootDisk = mkOption {
        type = types.nullOr diskType;
        default = null;
        description = "Root disk replacing the built image.";
      };
      kernel = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "Kernel image replacing the guest system's kernel.";
      };
      initramfs = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "Initramfs replacing the guest system's initrd.";
      };
      rootDiskReadonly = mkOption {
        type = types.bool;
        default = true;
        description = "Attach the root disk read-only.";
      };
      rootOverlay = {
        type = mkOption {
          type = types.enum enums.overlayTypes;
          default = "qcow2";
          description = "Upper layer of the overlay root: a disk-backed qcow2 or RAM.";
        };
        size = mkOption {
          type = types.str;
          default = "10G";
          description = "Size of the qcow2 upper layer, as qemu-img understands it.";
        };
      };
      sharedHome = mkOption {
        type = types.either types.bool types.str;
        default = true;
        description = "Host directory shared as /home/user: true = /shared/<vm>, a path, or false.";
      };
      kernelParams = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra guest kernel command line parameters.";
      };
      gpu = mkOption {
        type = types.either types.bool kvAttrs;
        default = true;
        description = "virtio-gpu: false, true for the default cross-domain device, or crosvm keys.";
      };
      sound = mkOption {
        type = types.either types.bool kvAttrs;
        default = false;
        description = "Sound device: false, true for the default backend, or crosvm keys.";
      };
      sharedDirectories = mkOption {
        type = types.listOf (types.submodule {
          freeformType = kvAttrs;
          options.path = mkOption {
            type = types.str;
            description = "Host directory to share.";
          };
        });
        default = [ ];
        description = "crosvm --shared-dir entries: path, tag (or id) and crosvm keys.";
      };
      pciDevices = mkOption {
        type = types.listOf (types.submodule {
          freeformType = kvAttrs;
          options.path = mkOption {
            type = types.str;
            description = "PCI address (BB:DD.F or DDDD:BB:DD.F) of the device to pass through.";
          };
        });
        default = [ ];
        description = "Devices passed through with vfio; keys besides path go to crosvm --vfio.";
      };
      guestPrograms = mkOption {
        type = types.listOf types.package;
        default = [ ];
        description = "Packages installed in this guest; their desktop entries appear on the host.";
      };
      guestConfig = mkOption {
        # raw: a plain `vmConfig: { ... }` function and a NixOS module function look alike to the
        # type system; nix/guest/build.nix tells them apart by their formal arguments.
        type = types.raw;
        default = { };
        description = "NixOS configuration merged into this guest, or a function of this VM's config.";
      };
      vhostUser = mkOption {
        type = types.listOf kvAttrs;
        default = [ ];
        description = "Manual crosvm --vhost-user devices (vm-switch ports are added automatically).";
      };
      crosvm = crosvmVmOptions;
    };
  });
in
{
  options.programs.vmsilo = {
    enable = mkEnableOption "vmsilo VM management";

    user = mkOption {
      type = types.str;
      description = "User who runs VMs, owns their sockets, TAPs and shared homes; needs an explicit uid.";
    };

    hostNetworking.nat = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Masquerade traffic from TAP interfaces with a host address.";
      };
      interface = mkOption {
        type = types.str;
        default = "";
        description = "External interface NAT masquerades to (required with nat.enable).";
      };
    };

    nixosVms = mkOption {
      type = types.listOf vmType;
      default = [ ];
      description = "The NixOS guests.";
    };

    enableBashIntegration = mkOption {
      type = types.bool;
      default = true;
      description = "Install bash completion for vmsilo and the vm-* commands.";
    };

    crosvm = {
      logLevel = mkOption {
        type = types.enum enums.logLevels;
        default = "info";
        description = "crosvm log level.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra crosvm arguments before `run`.";
      };
      extraRunArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra crosvm arguments after `run`.";
      };
    };

    vm-switch = {
      logLevel = mkOption {
        type = types.enum enums.logLevels;
        default = "info";
        description = "vm-switch daemon log level.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra vm-switch command line arguments.";
      };
    };

    isolatedPciDevices = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "PCI devices claimed by vfio-pci from early boot on.";
    };

    package = mkOption {
      type = types.package;
      default = pkgs.vmsilo or (pkgs.callPackage ./packages/vmsilo.nix { });
      defaultText = lib.literalExpression "pkgs.vmsilo";
      description = "Host tools: vmsilo, vm-run, vm-start, vm-stop, vm-shell, vmsilo-tray, vmsilo-wayland-context.";
    };

    vmSwitchPackage = mkOption {
      type = types.package;
      default = pkgs.vm-switch or (pkgs.callPackage ./packages/vm-switch.nix { });
      defaultText = lib.literalExpression "pkgs.vm-switch";
      description = "The vm-switch daemon.";
    };

    guestAgentPackage = mkOption {
      type = types.package;
      default = pkgs.vmsilo-guest or (pkgs.callPackage ./packages/vmsilo-guest.nix { });
      defaultText = lib.literalExpression "pkgs.vmsilo-guest";
      description = "The guest agent (vmsilo-agent), installed in every guest.";
    };

    patchKwin = mkOption {
      type = types.bool;
      default = true;
      description = "Use KWin with the vmsilo security-context patch (coloured frames, hidden globals).";
    };

    guestBuilder = mkOption {
      type = types.functionTo types.attrs;
      internal = true;
      description = ''
        Builds one guest from its VM config; returns { kernel, initramfs, rootDisk, kernelParams }.
        Internal: the default evaluates nix/guest with nixpkgs; tests replace it.
      '';
    };
  };
}
