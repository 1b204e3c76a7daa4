//! Rules that relate several fields or several VMs, checked after the document has been read.
//!
//! Each rule reports at the JSON path of the value a user would change to fix it.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::model::{Config, InterfaceType, SharedHome, Vm};
use crate::config::reader::{Issues, join};
use crate::derive::{self, IFNAME_MAX};

/// Longest VM name: keeps unit names, socket paths and default TAP names (`<vm>-<n>`) in bounds.
pub const VM_NAME_MAX: usize = 12;

pub(crate) fn config(issues: &Issues, config: &Config) {
    user(issues, config);
    nat(issues, config);
    let mut ids = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (i, vm) in config.nixos_vms.iter().enumerate() {
        let base = format!("nixosVms[{i}]");
        id(issues, &base, vm, &mut ids);
        name(issues, &base, vm, &mut names);
        interfaces(issues, &base, vm);
        shared(issues, &base, vm);
        for (j, param) in vm.kernel_params.iter().enumerate() {
            if param.is_empty() || param.chars().any(char::is_control) {
                issues.push(
                    format!("{base}.kernelParams[{j}]"),
                    format!(
                        "{param:?} is not a kernel parameter (empty or has control characters)"
                    ),
                );
            }
        }
    }
    unit_name_clashes(issues, config);
    depends_on(issues, config);
    macs_and_taps(issues, config);
    switch_networks(issues, config);
    pci(issues, config);
}

fn user(issues: &Issues, config: &Config) {
    let name = &config.user;
    let ok = name.len() <= 32
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_lowercase() || c == '_' || (i > 0 && (c.is_ascii_digit() || c == '-'))
        });
    if !name.is_empty() && !ok {
        issues.push(
            "user",
            format!(
                "{name:?} is not a user name (lowercase letters, digits, '-', '_'; at most 32)"
            ),
        );
    }
    if config.user_uid.is_none() && !issues.contains_path("userUid") {
        issues.push(
            "userUid",
            "required: the UID of `user`, which must be set explicitly (users.users.<name>.uid)",
        );
    }
}

fn nat(issues: &Issues, config: &Config) {
    let nat = &config.host_networking.nat;
    if nat.enable && nat.interface.is_empty() {
        issues.push(
            "hostNetworking.nat.interface",
            "required when hostNetworking.nat.enable is true: the uplink interface, e.g. \"eth0\"",
        );
    } else if !nat.interface.is_empty() && !is_ifname(&nat.interface) {
        issues.push(
            "hostNetworking.nat.interface",
            format!("{:?} is not a network interface name", nat.interface),
        );
    }
}

fn id(issues: &Issues, base: &str, vm: &Vm, seen: &mut BTreeMap<u32, String>) {
    let at = format!("{base}.id");
    if issues.contains_path(&at) {
        return; // missing or not a number: the reader said so already
    }
    if !(3..=255).contains(&vm.id) || vm.id.is_multiple_of(2) {
        let why = if vm.id.is_multiple_of(2) {
            "is even"
        } else {
            "is out of range"
        };
        issues.push(
            at,
            format!("{} {why}; VM ids must be odd numbers from 3 to 255", vm.id),
        );
        return;
    }
    if let Some(other) = seen.insert(vm.id, vm.name.clone()) {
        issues.push(
            at,
            format!(
                "{} is already the id of VM {other:?}; ids (vsock CIDs) must be unique",
                vm.id
            ),
        );
    }
}

/// Whether `name` can be a VM name: a path component, a unit-name part and a TAP-name prefix.
pub fn is_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= VM_NAME_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

fn name(issues: &Issues, base: &str, vm: &Vm, seen: &mut BTreeMap<String, u32>) {
    if vm.name.is_empty() {
        return; // reported as missing by the reader
    }
    let at = format!("{base}.name");
    if !is_vm_name(&vm.name) {
        issues.push(
            at,
            format!(
                "{:?} is not a VM name: use a lowercase letter then lowercase letters, digits or '-', not ending with '-', at most {VM_NAME_MAX} characters (it becomes part of paths, unit and TAP names)",
                vm.name
            ),
        );
        return;
    }
    if let Some(other) = seen.insert(vm.name.clone(), vm.id) {
        issues.push(
            at,
            format!(
                "{:?} is already the name of the VM with id {other}; names must be unique",
                vm.name
            ),
        );
    }
}

/// Whether `name` is a valid Linux network interface name.
pub fn is_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn interfaces(issues: &Issues, base: &str, vm: &Vm) {
    let ifaces = &vm.network.interfaces;
    let ifbase = format!("{base}.network.interfaces");
    if ifaces.len() > usize::from(derive::LAST_PCI_SLOT - derive::FIRST_NET_PCI_SLOT) + 1 {
        issues.push(
            ifbase.clone(),
            format!(
                "{} interfaces; at most {} fit in PCI slots {}-{}",
                ifaces.len(),
                derive::LAST_PCI_SLOT - derive::FIRST_NET_PCI_SLOT + 1,
                derive::FIRST_NET_PCI_SLOT,
                derive::LAST_PCI_SLOT
            ),
        );
    }
    for (name, iface) in ifaces {
        let at = join(&ifbase, name);
        if !is_ifname(name) || name == "lo" {
            issues.push(
                at.clone(),
                format!("{name:?} is not a usable interface name (1-15 letters, digits, '-', '_', '.'; not \"lo\")"),
            );
        }
        match iface.kind {
            InterfaceType::Tap => {
                if iface.tap.host_address.is_some() && iface.tap.bridge.is_some() {
                    issues.push(
                        format!("{at}.tap"),
                        "hostAddress and bridge are mutually exclusive: give the TAP an address or add it to a bridge",
                    );
                }
                if let Some(bridge) = &iface.tap.bridge
                    && !is_ifname(bridge)
                {
                    issues.push(
                        format!("{at}.tap.bridge"),
                        format!("{bridge:?} is not a network interface name"),
                    );
                }
                if iface.vm_network.is_some() {
                    issues.push(
                        format!("{at}.vmNetwork"),
                        "only applies to type = \"vm-switch\"; this interface is a TAP",
                    );
                }
            }
            InterfaceType::VmSwitch => {
                match &iface.vm_network {
                    None => issues.push(
                        format!("{at}.vmNetwork.name"),
                        "required for type = \"vm-switch\": the vm-switch network to join",
                    ),
                    Some(net) if !net.name.is_empty() && !is_vm_name(&net.name) => issues.push(
                        format!("{at}.vmNetwork.name"),
                        format!(
                            "{:?} is not a network name: a lowercase letter then lowercase letters, digits or '-', not ending with '-', at most {VM_NAME_MAX} characters",
                            net.name
                        ),
                    ),
                    Some(_) => {}
                }
                let tap = &iface.tap;
                if tap.name.is_some() || tap.host_address.is_some() || tap.bridge.is_some() {
                    issues.push(
                        format!("{at}.tap"),
                        "only applies to type = \"tap\"; this interface is on vm-switch",
                    );
                }
            }
        }
        host_addresses(issues, &at, &iface.addresses);
        gateways(
            issues,
            &at,
            "routes",
            &iface.addresses,
            &iface.routes,
            iface.dhcp,
        );
        gateways(
            issues,
            &at,
            "v6Routes",
            &iface.v6_addresses,
            &iface.v6_routes,
            iface.dhcp,
        );
    }
}

/// An interface needs a host address: not its subnet's network or broadcast address.
fn host_addresses(issues: &Issues, at: &str, addresses: &[crate::config::types::Cidr]) {
    for (i, cidr) in addresses.iter().enumerate() {
        let std::net::IpAddr::V4(addr) = cidr.addr else {
            continue;
        };
        if cidr.prefix >= 31 {
            continue; // point-to-point and host routes have no network/broadcast address
        }
        let host_bits = u32::MAX >> cidr.prefix;
        let which = match u32::from(addr) & host_bits {
            0 => "the network address",
            bits if bits == host_bits => "the broadcast address",
            _ => continue,
        };
        issues.push(
            format!("{at}.addresses[{i}]"),
            format!("{cidr} is {which} of its subnet; give the interface a host address in it"),
        );
    }
}

fn gateways(
    issues: &Issues,
    at: &str,
    key: &str,
    addresses: &[crate::config::types::Cidr],
    routes: &BTreeMap<crate::config::types::Cidr, std::net::IpAddr>,
    dhcp: bool,
) {
    if dhcp || addresses.is_empty() {
        return;
    }
    for (dest, via) in routes {
        if !addresses.iter().any(|a| a.contains(*via)) {
            let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            issues.push(
                format!("{}.via", join(&format!("{at}.{key}"), &dest.to_string())),
                format!(
                    "gateway {via} is not on this interface's subnets ({}), so the guest cannot reach it",
                    list.join(", ")
                ),
            );
        }
    }
}

fn shared(issues: &Issues, base: &str, vm: &Vm) {
    let mut tags = BTreeSet::new();
    if vm.shared_home != SharedHome::Disabled {
        tags.insert("home".to_owned());
    }
    for (j, dir) in vm.shared_directories.iter().enumerate() {
        if !tags.insert(dir.tag.clone()) {
            let why = if dir.tag == "home" && vm.shared_home != SharedHome::Disabled {
                "is used by sharedHome; pick another tag or set sharedHome = false"
            } else {
                "is already used by another shared directory of this VM"
            };
            issues.push(
                format!("{base}.sharedDirectories[{j}]"),
                format!("tag {:?} {why}", dir.tag),
            );
        }
    }
}

/// `vmsilo-<a>-vm.service` runs VM `a`, and `vmsilo-<a>-vm.service` is also the proxy of a VM
/// named `<a>-vm`: the two names cannot coexist.
fn unit_name_clashes(issues: &Issues, config: &Config) {
    let names: BTreeSet<&str> = config.vm_names().collect();
    for (i, vm) in config.nixos_vms.iter().enumerate() {
        if let Some(base) = vm.name.strip_suffix("-vm")
            && names.contains(base)
        {
            issues.push(
                format!("nixosVms[{i}].name"),
                format!(
                    "{:?} clashes with VM {base:?}: both would use the unit vmsilo-{}.service",
                    vm.name, vm.name
                ),
            );
        }
    }
}

fn depends_on(issues: &Issues, config: &Config) {
    let names: BTreeSet<&str> = config.vm_names().collect();
    for (i, vm) in config.nixos_vms.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for (j, dep) in vm.depends_on.iter().enumerate() {
            let at = format!("nixosVms[{i}].dependsOn[{j}]");
            if *dep == vm.name {
                issues.push(at, format!("{dep:?} is this VM itself"));
            } else if !names.contains(dep.as_str()) {
                let known: Vec<&str> = names.iter().copied().collect();
                issues.push(
                    at,
                    format!("no VM is named {dep:?}; VMs: {}", known.join(", ")),
                );
            } else if !seen.insert(dep) {
                issues.push(at, format!("{dep:?} is listed twice"));
            }
        }
    }
    // Depth-first search for a cycle, reported once at the first VM of the cycle found.
    let edges: BTreeMap<&str, Vec<&str>> = config
        .nixos_vms
        .iter()
        .map(|vm| {
            (
                vm.name.as_str(),
                vm.depends_on
                    .iter()
                    .map(String::as_str)
                    .filter(|d| *d != vm.name)
                    .collect(),
            )
        })
        .collect();
    let mut done = BTreeSet::new();
    for (i, vm) in config.nixos_vms.iter().enumerate() {
        let mut stack = vec![vm.name.as_str()];
        if let Some(cycle) = find_cycle(&edges, &mut stack, &mut done) {
            issues.push(
                format!("nixosVms[{i}].dependsOn"),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            );
            return;
        }
    }
}

fn find_cycle<'a>(
    edges: &BTreeMap<&'a str, Vec<&'a str>>,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<&'a str>> {
    let node = *stack.last()?;
    if done.contains(node) {
        return None;
    }
    for next in edges.get(node).into_iter().flatten() {
        if let Some(pos) = stack.iter().position(|n| n == next) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(next);
            return Some(cycle);
        }
        stack.push(next);
        if let Some(cycle) = find_cycle(edges, stack, done) {
            return Some(cycle);
        }
        stack.pop();
    }
    done.insert(node);
    None
}

fn macs_and_taps(issues: &Issues, config: &Config) {
    let mut macs = BTreeMap::new();
    let mut taps: BTreeMap<String, String> = BTreeMap::new();
    for (i, vm) in config.nixos_vms.iter().enumerate() {
        for (index, (name, iface)) in vm.network.interfaces.iter().enumerate() {
            let at = join(&format!("nixosVms[{i}].network.interfaces"), name);
            let mac = iface
                .mac_address
                .unwrap_or_else(|| derive::mac_address(&vm.name, name));
            let owner = format!("{}.{name}", vm.name);
            if let Some(other) = macs.insert(mac, owner.clone()) {
                issues.push(
                    format!("{at}.macAddress"),
                    format!("MAC {mac} is also used by interface {other}; MACs must be unique"),
                );
            }
            if iface.kind != InterfaceType::Tap {
                continue;
            }
            let tap = iface
                .tap
                .name
                .clone()
                .unwrap_or_else(|| derive::tap_name(&vm.name, index));
            let tap_at = format!("{at}.tap.name");
            if !is_ifname(&tap) {
                let why = if iface.tap.name.is_none() {
                    " (the default <vm>-<index>); set tap.name"
                } else {
                    ""
                };
                issues.push(
                    tap_at,
                    format!("{tap:?} is not a valid host interface name (1-15 characters){why}"),
                );
            } else if tap == config.host_networking.nat.interface {
                issues.push(tap_at, format!("{tap:?} is the NAT uplink interface"));
            } else if let Some(other) = taps.insert(tap.clone(), owner) {
                issues.push(
                    tap_at,
                    format!(
                        "TAP {tap:?} is also used by interface {other}; TAP names must be unique"
                    ),
                );
            }
        }
    }
}

fn switch_networks(issues: &Issues, config: &Config) {
    // network → (vm, address) claims, to catch two peers claiming one address or a VM joining twice.
    let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut addresses: BTreeMap<(String, std::net::IpAddr), String> = BTreeMap::new();
    for (i, vm) in config.nixos_vms.iter().enumerate() {
        for (name, iface) in &vm.network.interfaces {
            let Some(net) = iface
                .vm_network
                .as_ref()
                .filter(|_| iface.kind == InterfaceType::VmSwitch)
            else {
                continue;
            };
            let at = join(&format!("nixosVms[{i}].network.interfaces"), name);
            if !members
                .entry(net.name.clone())
                .or_default()
                .insert(vm.name.clone())
            {
                issues.push(
                    format!("{at}.vmNetwork.name"),
                    format!("VM {:?} already has an interface on network {:?}; one port per VM per network", vm.name, net.name),
                );
            }
            for addr in iface.addresses.iter().chain(&iface.v6_addresses) {
                let key = (net.name.clone(), addr.addr);
                let owner = format!("{}.{name}", vm.name);
                if let Some(other) = addresses.insert(key, owner) {
                    issues.push(
                        format!("{at}.addresses"),
                        format!("{} is also claimed by {other} on network {:?}; vm-switch routes by address, so each must be unique", addr.addr, net.name),
                    );
                }
            }
        }
    }
}

fn pci(issues: &Issues, config: &Config) {
    let isolated: BTreeSet<_> = config.isolated_pci_devices.iter().copied().collect();
    if isolated.len() != config.isolated_pci_devices.len() {
        issues.push("isolatedPciDevices", "lists a device more than once");
    }
    let mut owners = BTreeMap::new();
    for (i, vm) in config.nixos_vms.iter().enumerate() {
        for (j, dev) in vm.pci_devices.iter().enumerate() {
            let at = format!("nixosVms[{i}].pciDevices[{j}].path");
            if !isolated.contains(&dev.address) {
                issues.push(
                    at.clone(),
                    format!(
                        "{} is not in isolatedPciDevices, so vfio-pci will not claim it",
                        dev.address
                    ),
                );
            }
            if let Some(other) = owners.insert(dev.address, vm.name.clone()) {
                issues.push(
                    at,
                    format!(
                        "{} is also passed to VM {other:?}; a device can belong to one VM",
                        dev.address
                    ),
                );
            }
        }
    }
}
