# The host NixOS module (`nixosModules.default`): option declarations plus one file per concern.
{
  imports = [
    ./options.nix
    ./host/assertions.nix
    ./host/config-json.nix
    ./host/guests.nix
    ./host/units.nix
    ./host/networking.nix
    ./host/vfio.nix
    ./host/polkit.nix
    ./host/dirs.nix
    ./host/packages.nix
    ./host/desktop.nix
    ./host/tray.nix
    ./host/completion.nix
    ./host/kwin.nix
  ];
}
