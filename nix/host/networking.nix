# Host side of TAP interfaces (persistent TAPs owned by the user, host address or bridge) and NAT
# for TAPs that carry a host address.
{ config, lib, ... }:
let
  cfg = config.programs.vmsilo;
  vlib = import ../lib.nix { inherit lib; };
  taps = vlib.tapInterfaces cfg.nixosVms;
  addressed = lib.filter (t: t.hostAddress != null) taps;
  bridged = lib.filter (t: t.bridge != null) taps;
  addrOf = t: vlib.parseCidr t.hostAddress;
in
{
  config = lib.mkIf cfg.enable {
    networking.interfaces = lib.listToAttrs (map (t: lib.nameValuePair t.name ({
      virtual = true;
      virtualType = "tap";
      virtualOwner = cfg.user;
    } // lib.optionalAttrs (t.hostAddress != null) (let a = addrOf t; in
      if a.isV6 then { ipv6.addresses = [ { inherit (a) address prefixLength; } ]; }
      else { ipv4.addresses = [ { inherit (a) address prefixLength; } ]; }
    ))) taps);

    networking.bridges = lib.mkMerge (map (t: {
      ${t.bridge}.interfaces = [ t.name ];
    }) bridged);

    networking.nat = lib.mkIf cfg.hostNetworking.nat.enable {
      enable = true;
      externalInterface = cfg.hostNetworking.nat.interface;
      internalInterfaces = map (t: t.name) addressed;
    };
  };
}
