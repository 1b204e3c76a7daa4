# Guest interfaces: names pinned to the MACs the host derives (the agent also applies the
# vmsilo.ifname kernel parameters), then addresses, routes and nameservers per interface.
{ lib, vmsiloVm, ... }:
let
  vlib = import ../lib.nix { inherit lib; };
  ifaces = vmsiloVm.network.interfaces;
  routesOf = routes: lib.mapAttrsToList (dst: r: { Destination = dst; Gateway = r.via; }) routes;
in
{
  networking.useNetworkd = true;
  networking.useDHCP = false;
  networking.nameservers = vmsiloVm.network.nameservers;

  systemd.network.links = lib.mapAttrs' (ifName: iface: lib.nameValuePair "10-vmsilo-${ifName}" {
    matchConfig.PermanentMACAddress = vlib.macOf vmsiloVm ifName iface;
    linkConfig.Name = ifName;
  }) ifaces;

  systemd.network.networks = lib.mapAttrs' (ifName: iface: lib.nameValuePair "10-vmsilo-${ifName}" {
    matchConfig.Name = ifName;
    address = iface.addresses ++ iface.v6Addresses;
    routes = routesOf iface.routes ++ routesOf iface.v6Routes;
    networkConfig.DHCP = if iface.dhcp then "yes" else "no";
    linkConfig.RequiredForOnline = "no";
  }) ifaces;
}
