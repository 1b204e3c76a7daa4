# Evaluates the vmsilo host module with nixpkgs' `lib` only (no nixpkgs package set, no NixOS
# module tree): the NixOS options the module writes to are declared here as free-form values,
# packages are stand-in derivations, and guests come from a stand-in guestBuilder. What is
# checked is the module's own logic: the config document, the units, TAP/NAT, polkit, dirs and
# the assertions. tests/nix-check.sh drives it.
#
#   nix-instantiate --eval --strict --json tests/nix/eval.nix \
#     --arg lib 'import $NIXPKGS_LIB' --argstr example path/to/config.json
#   (or --argstr documentJson '{...}' for an inline document)
{ lib, example ? null, documentJson ? null }:
let
  doc = builtins.fromJSON (if documentJson != null then documentJson else builtins.readFile example);

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";
  };

  # The parts of nixpkgs the host module touches, as stand-ins with store-like paths.
  pkgs = {
    vmsilo = fakeDrv "vmsilo";
    vm-switch = fakeDrv "vm-switch";
    vmsilo-guest = fakeDrv "vmsilo-guest";
    qemu-utils = fakeDrv "qemu-utils";
    qemu_kvm = fakeDrv "qemu";
    crosvm = fakeDrv "crosvm";
    vhost-device-vsock = fakeDrv "vhost-device-vsock";
    kmod = fakeDrv "kmod";
    writeText = name: _text: (fakeDrv name).outPath;
    runCommand = name: _env: _script: fakeDrv name;
    callPackage = _: _: throw "eval.nix: the module asked for a package that is not stubbed";
  };

  # NixOS options the module sets, declared loosely so evalModules accepts the definitions.
  nixosStub = { lib, ... }: let
    free = lib.mkOption { type = lib.types.anything; default = { }; };
  in {
    options = {
      assertions = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; };
      warnings = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
      systemd = free;
      networking = free;
      environment = lib.mkOption {
        type = lib.types.submodule {
          freeformType = lib.types.lazyAttrsOf lib.types.anything;
          options.systemPackages = lib.mkOption {
            type = lib.types.listOf lib.types.anything;
            default = [ ];
          };
        };
        default = { };
      };
      security = free;
      boot = free;
      services = free;
      system = free;
      users = free;
      nixpkgs = lib.mkOption { type = lib.types.anything; default = { }; };
      programs.bash = free;
    };
  };

  # The document's guestPrograms are store path strings; the option wants packages.
  toModuleVm = vm: builtins.removeAttrs vm [ "guestPrograms" ] // {
    guestPrograms = map (p: { type = "derivation"; name = baseNameOf p; outPath = p; })
      (vm.guestPrograms or [ ]);
  };

  moduleConfig = {
    programs.vmsilo = builtins.removeAttrs doc [ "userUid" "nixosVms" ] // {
      enable = true;
      nixosVms = map toModuleVm (doc.nixosVms or [ ]);
      guestBuilder = vm: {
        kernel = "${(fakeDrv "guest-${vm.name}").outPath}/kernel";
        initramfs = "${(fakeDrv "guest-${vm.name}").outPath}/initrd";
        rootDisk = (fakeDrv "vmsilo-root-${vm.name}.img").outPath;
        kernelParams = [ "init=${(fakeDrv "guest-${vm.name}").outPath}/init" "console=ttyS0" ];
      };
    };
    users.users.${doc.user} = lib.optionalAttrs (doc ? userUid) { uid = doc.userUid; group = "users"; };
  };

  evaluated = lib.evalModules {
    modules = [
      ../../nix/module.nix
      nixosStub
      { _module.args.pkgs = pkgs; }
      moduleConfig
    ];
  };
  inherit (evaluated) config;
  vlib = import ../../nix/lib.nix { inherit lib; };
in
{
  document = config.programs.vmsilo.internal.document;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  sockets = config.systemd.sockets or { };
  services = lib.mapAttrs (_: s: {
    inherit (s) serviceConfig;
    requires = s.requires or [ ];
    wants = s.wants or [ ];
    after = s.after or [ ];
    wantedBy = s.wantedBy or [ ];
  }) (config.systemd.services or { });
  userServices = config.systemd.user.services or { };
  interfaces = config.networking.interfaces or { };
  bridges = config.networking.bridges or { };
  nat = config.networking.nat or { };
  tmpfiles = config.systemd.tmpfiles.rules or [ ];
  polkit = config.security.polkit.extraConfig or "";
  packages = map (p: p.name) (config.environment.systemPackages or [ ]);
  vfio = {
    udev = config.services.udev.extraRules or "";
    modules = config.boot.initrd.kernelModules or [ ];
  };
  etc = lib.mapAttrs (_: v: toString (v.source or "")) (config.environment.etc or { });
  inherit (config.programs.vmsilo) package vmSwitchPackage;
  # Nix's MAC derivation, cross-checked against an independent implementation by the script.
  macs = lib.listToAttrs (lib.concatMap (vm: map (e: {
    name = "${vm.name}-${e.ifName}";
    value = vlib.macOf vm e.ifName e.iface;
  }) (vlib.sortedInterfaces vm)) config.programs.vmsilo.nixosVms);
}
