# Pure helpers shared by the host module files and the tests: derived names, the config document,
# and the validation rules. Nothing here touches NixOS options, so tests can call it with only
# nixpkgs' `lib`.
{ lib }:
let
  inherit (lib) attrNames filterAttrs mapAttrs imap0 concatMap concatLists unique length
    elemAt filter hasPrefix splitString substring stringLength toLower;

  paths = {
    runDir = "/run/vmsilo";
    stateDir = "/var/lib/vmsilo";
    switchDir = "/run/vm-switch";
    sharedRoot = "/shared";
    configFile = "/etc/vmsilo/config.json";
    homeTemplate = "/var/lib/vmsilo/home-template";
  };

  # Unit names of the runtime contract (BRIEF/DESIGN): one place, used by units, polkit and tests.
  units = {
    socket = vm: "vmsilo-${vm}.socket";
    proxy = vm: "vmsilo-${vm}.service";
    vm = vm: "vmsilo-${vm}-vm.service";
    switch = net: "vm-switch-${net}.service";
    tray = "vmsilo-tray.service";
  };

  hexDigits = lib.stringToCharacters "0123456789abcdef";
  hexByte = s: let
    d = c: lib.lists.findFirstIndex (x: x == c) 0 hexDigits;
  in 16 * d (substring 0 1 s) + d (substring 1 1 s);
  toHexByte = n: "${elemAt hexDigits (n / 16)}${elemAt hexDigits (lib.mod n 16)}";

  # MAC = first 6 bytes of SHA1("<vm>-<if>"), locally administered, unicast (DESIGN.md).
  derivedMac = vmName: ifName: let
    h = builtins.hashString "sha1" "${vmName}-${ifName}";
    bytes = builtins.genList (i: hexByte (substring (2 * i) 2 h)) 6;
    first = builtins.bitOr (builtins.bitAnd (builtins.head bytes) 254) 2;
  in lib.concatMapStringsSep ":" toHexByte ([ first ] ++ builtins.tail bytes);

  macOf = vm: ifName: iface:
    if iface.macAddress != null then toLower iface.macAddress else derivedMac vm.name ifName;

  # Interfaces in guest-name order: PCI slots and default TAP indices both follow this order.
  sortedInterfaces = vm: imap0 (index: ifName: {
    inherit index ifName;
    iface = vm.network.interfaces.${ifName};
  }) (attrNames vm.network.interfaces);

  tapName = vm: { index, ifName, iface }:
    if iface.tap.name != null then iface.tap.name else "${vm.name}-${toString index}";

  # Every TAP interface of every VM, with what networking.nix and the checks need.
  tapInterfaces = vms: concatMap (vm: map (e: {
    vm = vm.name;
    inherit (e) ifName;
    name = tapName vm e;
    inherit (e.iface.tap) hostAddress bridge;
  }) (filter (e: e.iface.type == "tap") (sortedInterfaces vm))) vms;

  # Networks that need a vm-switch daemon.
  switchNetworks = vms: unique (concatMap (vm:
    map (e: e.iface.vmNetwork.name)
      (filter (e: e.iface.type == "vm-switch" && e.iface.vmNetwork.name != null) (sortedInterfaces vm))
  ) vms);

  vmSwitchNetworksOf = vm: unique (map (e: e.iface.vmNetwork.name)
    (filter (e: e.iface.type == "vm-switch" && e.iface.vmNetwork.name != null) (sortedInterfaces vm)));

  parseCidr = s: let
    parts = splitString "/" s;
  in {
    address = builtins.head parts;
    prefixLength = if length parts == 2 then lib.toInt (elemAt parts 1) else null;
    isV6 = lib.hasInfix ":" (builtins.head parts);
  };

  # "01:00.0" -> "0000:01:00.0"; a BDF that already has a domain stays as it is.
  normalizeBdf = bdf: let b = toLower bdf; in
    if length (splitString ":" b) == 3 then b else "0000:${b}";

  sharedHomePath = vm:
    if vm.sharedHome == true then "${paths.sharedRoot}/${vm.name}"
    else if vm.sharedHome == false then null
    else vm.sharedHome;

  stripNulls = v:
    if builtins.isAttrs v && !(lib.isDerivation v) then
      mapAttrs (_: stripNulls) (filterAttrs (_: x: x != null) v)
    else if builtins.isList v then map stripNulls v
    else v;

  # Nix path values (./bzImage) are copied to the store by interpolation; strings stay as given.
  pathToJson = v: if builtins.isPath v then "${v}" else toString v;
  # Free-form crosvm attrsets: path values become store paths.
  kvToJson = mapAttrs (_: v: if builtins.isPath v then pathToJson v else v);

  # One VM's entry of /etc/vmsilo/config.json. Keys are the option names; guestConfig (a Nix
  # module) stays out; the built kernel, initramfs and root disk are filled in as store paths.
  vmDocument = guest: vm: stripNulls {
    inherit (vm) id name memory cpus color vmm autoStart dependsOn rootDiskReadonly sharedHome gpu
      sound vsock waylandProxy;
    network = {
      inherit (vm.network) nameservers;
      interfaces = builtins.listToAttrs (map (e: {
        name = e.ifName;
        # Only the block that applies to the interface's type goes in (the assertions reject a
        # non-default value in the other one). Nix creates the TAP device, so the service must
        # use exactly the name Nix chose.
        value = builtins.removeAttrs e.iface [ "tap" "vmNetwork" ]
          // (if e.iface.type == "tap"
              then { tap = e.iface.tap // { name = tapName vm e; }; }
              else { inherit (e.iface) vmNetwork; });
      }) (sortedInterfaces vm));
    };
    autoShutdown = vm.autoShutdown;
    additionalDisks = map kvToJson vm.additionalDisks;
    rootDisk = kvToJson (if vm.rootDisk != null then vm.rootDisk else { path = guest.rootDisk; });
    kernel = pathToJson (if vm.kernel != null then vm.kernel else guest.kernel);
    initramfs = pathToJson (if vm.initramfs != null then vm.initramfs else guest.initramfs);
    kernelParams = (guest.kernelParams or [ ]) ++ vm.kernelParams;
    sharedDirectories = map kvToJson vm.sharedDirectories;
    pciDevices = map kvToJson vm.pciDevices;
    vhostUser = map kvToJson vm.vhostUser;
    guestPrograms = map toString vm.guestPrograms;
    rootOverlay = vm.rootOverlay;
    crosvm = vm.crosvm;
  };

  # The whole document. `guests` maps VM name to what cfg.guestBuilder returned for it.
  configDocument = { cfg, userUid, guests }: stripNulls {
    inherit (cfg) user isolatedPciDevices crosvm enableBashIntegration;
    inherit userUid;
    hostNetworking = cfg.hostNetworking;
    "vm-switch" = cfg.vm-switch;
    nixosVms = map (vm: vmDocument guests.${vm.name} vm) cfg.nixosVms;
  };

  quote = v: "\"${toString v}\"";
  duplicates = xs: unique (filter (x: length (filter (y: y == x) xs) > 1) xs);
  # Same rules as the Rust validator (host-launcher config::validate): VM and network names are
  # path components, unit-name parts and TAP-name prefixes; interface names fit IFNAMSIZ.
  isSafeName = n: builtins.match "[a-z]([a-z0-9-]{0,10}[a-z0-9])?" n != null;
  isIfName = n: builtins.match "[A-Za-z0-9_.-]{1,15}" n != null && n != "." && n != ".." && n != "lo";

  # The validator's cross-field rules, as NixOS assertions. Each message names the VM (or option)
  # and quotes the offending value, like `vmsilo check` does with JSON paths.
  checks = { cfg, userUid }: let
    vms = cfg.nixosVms;
    names = map (vm: vm.name) vms;
    ids = map (vm: vm.id) vms;
    taps = tapInterfaces vms;
    macs = concatMap (vm: map (e: { vm = vm.name; inherit (e) ifName; mac = macOf vm e.ifName e.iface; })
      (sortedInterfaces vm)) vms;
    depGraph = lib.toposort (a: b: builtins.elem a.name b.dependsOn) vms;
    perVm = vm: let
      at = "programs.vmsilo.nixosVms.\"${vm.name}\"";
    in [
      {
        assertion = vm.id >= 3 && vm.id <= 255 && lib.mod vm.id 2 == 1;
        message = "${at}.id: ${toString vm.id} is not allowed; VM ids must be odd numbers from 3 to 255.";
      }
      {
        assertion = isSafeName vm.name;
        message = "${at}.name: ${quote vm.name} is not a VM name: use a lowercase letter then lowercase letters, digits or '-' (not last), at most 12 characters; it becomes part of paths, unit and TAP names.";
      }
      {
        assertion = !(builtins.elem "${vm.name}-vm" names);
        message = "${at}.name: ${quote "${vm.name}-vm"} is also a VM name, so unit ${units.vm vm.name} would clash with that VM's command proxy.";
      }
    ] ++ map (dep: {
      assertion = builtins.elem dep names && dep != vm.name;
      message = if dep == vm.name then "${at}.dependsOn: ${quote dep} is the VM itself."
        else "${at}.dependsOn: ${quote dep} is not the name of any VM in programs.vmsilo.nixosVms.";
    }) vm.dependsOn
    ++ concatMap ({ ifName, iface, ... }: let
      iat = "${at}.network.interfaces.${ifName}";
    in [
      {
        assertion = !(iface.tap.hostAddress != null && iface.tap.bridge != null);
        message = "${iat}: tap.hostAddress ${quote iface.tap.hostAddress} and tap.bridge ${quote iface.tap.bridge} are mutually exclusive; set one of them.";
      }
      {
        assertion = iface.type != "tap" || (iface.vmNetwork.name == null
          && !iface.vmNetwork.receiveBroadcast && iface.vmNetwork.routes == [ ]);
        message = "${iat}.vmNetwork: only applies to type \"vm-switch\"; this interface is a TAP (vmNetwork.name ${quote iface.vmNetwork.name}).";
      }
      {
        assertion = iface.type != "vm-switch"
          || (iface.tap.name == null && iface.tap.hostAddress == null && iface.tap.bridge == null);
        message = "${iat}.tap: only applies to type \"tap\"; this interface is a vm-switch port (tap.name ${quote iface.tap.name}, tap.hostAddress ${quote iface.tap.hostAddress}, tap.bridge ${quote iface.tap.bridge}).";
      }
      {
        assertion = iface.type != "vm-switch" || iface.vmNetwork.name != null;
        message = "${iat}: type \"vm-switch\" needs vmNetwork.name.";
      }
      {
        assertion = iface.vmNetwork.name == null || isSafeName iface.vmNetwork.name;
        message = "${iat}.vmNetwork.name: ${quote iface.vmNetwork.name} is not a network name: a lowercase letter then lowercase letters, digits or '-', at most 12 characters.";
      }
      {
        assertion = isIfName ifName;
        message = "${iat}: ${quote ifName} is not a usable interface name (1-15 letters, digits, '-', '_', '.'; not \"lo\").";
      }
      {
        assertion = iface.tap.bridge == null || isIfName iface.tap.bridge;
        message = "${iat}.tap.bridge: ${quote iface.tap.bridge} is not a network interface name.";
      }
      {
        assertion = iface.macAddress == null
          || builtins.match "[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}" iface.macAddress != null;
        message = "${iat}.macAddress: ${quote iface.macAddress} is not a MAC address like 52:54:00:12:34:56.";
      }
    ]) (sortedInterfaces vm);
  in
    [
      {
        assertion = userUid != null;
        message = "programs.vmsilo.user: user ${quote cfg.user} needs an explicit users.users.${cfg.user}.uid.";
      }
      {
        assertion = !cfg.hostNetworking.nat.enable || cfg.hostNetworking.nat.interface != "";
        message = "programs.vmsilo.hostNetworking.nat.interface: NAT is enabled but no external interface is set.";
      }
      {
        assertion = depGraph ? result;
        message = "programs.vmsilo.nixosVms: dependsOn has a cycle: ${
          lib.concatMapStringsSep " -> " (vm: quote vm.name) (depGraph.cycle or [ ])}.";
      }
    ]
    ++ map (id: {
      assertion = false;
      message = "programs.vmsilo.nixosVms: id ${toString id} is used by ${
        lib.concatMapStringsSep " and " quote (map (vm: vm.name) (filter (vm: vm.id == id) vms))}; ids must be unique.";
    }) (duplicates ids)
    ++ map (n: {
      assertion = false;
      message = "programs.vmsilo.nixosVms: name ${quote n} is used by more than one VM.";
    }) (duplicates names)
    ++ map (t: {
      assertion = false;
      message = "programs.vmsilo.nixosVms: TAP name ${quote t} is used by ${
        lib.concatMapStringsSep " and " (x: "${x.vm}.${x.ifName}") (filter (x: x.name == t) taps)}; TAP names must be unique.";
    }) (duplicates (map (t: t.name) taps))
    ++ map (t: {
      assertion = stringLength t.name <= 15;
      message = "programs.vmsilo.nixosVms.\"${t.vm}\".network.interfaces.${t.ifName}.tap.name: ${quote t.name} is longer than 15 characters (IFNAMSIZ); set a shorter tap.name.";
    }) taps
    ++ map (m: {
      assertion = false;
      message = "programs.vmsilo.nixosVms: MAC ${quote m} is used by ${
        lib.concatMapStringsSep " and " (x: "${x.vm}.${x.ifName}") (filter (x: x.mac == m) macs)}; MAC addresses must be unique.";
    }) (duplicates (map (m: m.mac) macs))
    ++ concatMap perVm vms;
in
{
  inherit paths units derivedMac macOf sortedInterfaces tapName tapInterfaces switchNetworks
    vmSwitchNetworksOf parseCidr normalizeBdf sharedHomePath configDocument vmDocument checks
    isSafeName isIfName;
}
