{
  description = "vmsilo: Qubes-style security domains as crosvm VMs on NixOS + KDE Plasma";

  # The KWin patch is written against KWin 6.3.6; nix/packages/kwin.nix pins that release and
  # refuses a nixpkgs whose Plasma is not 6.3.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f (import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      }));
    in
    {
      overlays.default = import ./nix/packages/overlay.nix;

      # The module adds the KWin overlay itself (programs.vmsilo.patchKwin) and builds the
      # vmsilo packages with callPackage when pkgs has no `vmsilo` attribute.
      nixosModules.default = ./nix/module.nix;

      packages = forAllSystems (pkgs: {
        inherit (pkgs) vmsilo vm-switch vmsilo-guest;
        kwin = pkgs.kdePackages.kwin;
        # The default guest root image (no guestPrograms, no guestConfig).
        guest-image = (import ./nix/guest/build.nix {
          inherit pkgs lib;
          vm = builtins.head (lib.evalModules {
            modules = [
              ./nix/options.nix
              { _module.args.pkgs = pkgs; programs.vmsilo = { user = "user"; nixosVms = [ { id = 3; name = "default"; } ]; }; }
            ];
          }).config.programs.vmsilo.nixosVms;
          hostCfg = { guestAgentPackage = pkgs.vmsilo-guest; };
        }).rootImage;
        default = pkgs.vmsilo;
      });

      checks = forAllSystems (pkgs: {
        inherit (pkgs) vmsilo vm-switch vmsilo-guest;
        kwin = pkgs.kdePackages.kwin;
      });
    };
}
