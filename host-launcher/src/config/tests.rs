#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;

fn base() -> Value {
    serde_json::from_str(EXAMPLE_VM_SWITCH).unwrap()
}

/// Apply `edit` to the vm-switch example and return every issue `vmsilo check` would print.
fn issues_after(edit: impl FnOnce(&mut Value)) -> Vec<Issue> {
    let mut doc = base();
    edit(&mut doc);
    match from_value(&doc, "test") {
        Ok(_) => Vec::new(),
        Err(err) => err.issues().to_vec(),
    }
}

fn ptr<'a>(doc: &'a mut Value, pointer: &str) -> &'a mut Value {
    doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the example"))
}

#[test]
fn both_examples_are_valid() {
    let quick = from_json_str(EXAMPLE_QUICKSTART).unwrap();
    assert_eq!(
        quick.vm_names().collect::<Vec<_>>(),
        ["banking", "shopping", "personal"]
    );
    let switch = from_json_str(EXAMPLE_VM_SWITCH).unwrap();
    assert_eq!(switch.nixos_vms.len(), 3);
}

#[test]
fn shared_examples_match_the_bundled_copies() {
    // The bundled copies must not drift from the examples the spec's tables were written from.
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/examples");
    if let Ok(text) = std::fs::read_to_string(shared.join("quickstart.json")) {
        assert_eq!(text, EXAMPLE_QUICKSTART);
    }
}

#[test]
fn spec_defaults_are_applied() {
    let config = from_json_str(EXAMPLE_QUICKSTART).unwrap();
    let personal = config.vm("personal").unwrap();
    assert_eq!(personal.memory, 4096);
    assert_eq!(personal.color.to_string(), "#ff0000");
    assert!(!personal.auto_shutdown.enable);
    assert_eq!(personal.auto_shutdown.after, 60);
    assert!(!personal.auto_start);
    assert!(personal.root_disk_readonly);
    assert_eq!(personal.shared_home, SharedHome::Default);
    assert!(personal.gpu.is_some());
    assert!(personal.sound.is_none());
    assert_eq!(personal.root_overlay.kind, OverlayType::Qcow2);
    assert_eq!(personal.root_overlay.size, "10G");
    assert_eq!(personal.wayland_proxy, WaylandProxy::Virtwl);
    assert_eq!(personal.vmm, Vmm::Crosvm);
    assert_eq!(personal.vsock.transport, VsockTransport::VhostVsock);
    assert!(personal.network.interfaces.is_empty());
    let shopping = config.vm("shopping").unwrap();
    assert_eq!(
        shopping.auto_shutdown.after, 60,
        "autoShutdown.after defaults when only enable is set"
    );
    assert!(config.enable_bash_integration);
    assert_eq!(config.crosvm.log_level, types::LogLevel::Info);
    let minimal =
        from_json_str(r#"{"user":"u","userUid":1000,"nixosVms":[{"id":3,"name":"a"}]}"#).unwrap();
    let a = &minimal.nixos_vms[0];
    assert_eq!((a.memory, a.cpus), (1024, 2));
    let iface = from_json_str(
        r#"{"user":"u","userUid":1000,"nixosVms":[{"id":3,"name":"a","network":{"interfaces":{"lan":{"vmNetwork":{"name":"lan"}}}}}]}"#,
    )
    .unwrap();
    assert_eq!(
        iface.nixos_vms[0].network.interfaces["lan"].kind,
        InterfaceType::VmSwitch
    );
}

/// One invalid document per rule: (what, edit, path of the issue, words the message must contain).
type Case = (&'static str, fn(&mut Value), &'static str, &'static str);

const CASES: &[Case] = &[
    (
        "unknown top-level key",
        |d| {
            d["enabel"] = json!(true);
        },
        "enabel",
        "unknown option",
    ),
    (
        "unknown VM key",
        |d| {
            d["nixosVms"][0]["memroy"] = json!(1);
        },
        "nixosVms[0].memroy",
        "expected one of",
    ),
    (
        "missing user",
        |d| {
            d.as_object_mut().unwrap().remove("user");
        },
        "user",
        "required",
    ),
    (
        "bad user name",
        |d| {
            d["user"] = json!("Da vid");
        },
        "user",
        "not a user name",
    ),
    (
        "missing userUid",
        |d| {
            d.as_object_mut().unwrap().remove("userUid");
        },
        "userUid",
        "required",
    ),
    (
        "even id",
        |d| {
            d["nixosVms"][1]["id"] = json!(4);
        },
        "nixosVms[1].id",
        "4 is even; VM ids must be odd numbers from 3 to 255",
    ),
    (
        "id out of range",
        |d| {
            d["nixosVms"][1]["id"] = json!(257);
        },
        "nixosVms[1].id",
        "out of range",
    ),
    (
        "id not a number",
        |d| {
            d["nixosVms"][1]["id"] = json!("five");
        },
        "nixosVms[1].id",
        "expected an odd whole number from 3 to 255, found a string",
    ),
    (
        "duplicate id",
        |d| {
            d["nixosVms"][2]["id"] = json!(5);
        },
        "nixosVms[2].id",
        "already the id of VM \"banking\"",
    ),
    (
        "duplicate name",
        |d| {
            d["nixosVms"][2]["name"] = json!("banking");
        },
        "nixosVms[2].name",
        "names must be unique",
    ),
    (
        "unsafe name",
        |d| {
            d["nixosVms"][2]["name"] = json!("../etc");
        },
        "nixosVms[2].name",
        "not a VM name",
    ),
    (
        "name too long for TAP names",
        |d| {
            d["nixosVms"][2]["name"] = json!("averyverylongname");
        },
        "nixosVms[2].name",
        "at most 12",
    ),
    (
        "comma in a disk path",
        |d| {
            d["nixosVms"][0]["additionalDisks"] = json!([{"path": "/tmp/a,ro=false"}]);
        },
        "nixosVms[0].additionalDisks[0].path",
        "contains ',', which separates crosvm's --block fields",
    ),
    (
        "colon in a shared dir path",
        |d| {
            d["nixosVms"][0]["sharedDirectories"] = json!([{"path": "/srv/a:b", "tag": "x"}]);
        },
        "nixosVms[0].sharedDirectories[0].path",
        "contains ':', which separates crosvm's --shared-dir fields",
    ),
    (
        "comma in a vhost-user socket",
        |d| {
            d["nixosVms"][0]["vhostUser"] = json!([{"type": "fs", "socket": "/run/a,b.sock"}]);
        },
        "nixosVms[0].vhostUser[0].socket",
        "separates crosvm's --vhost-user fields",
    ),
    (
        "missing name",
        |d| {
            d["nixosVms"][2].as_object_mut().unwrap().remove("name");
        },
        "nixosVms[2].name",
        "required",
    ),
    (
        "memory too small",
        |d| {
            d["nixosVms"][0]["memory"] = json!(0);
        },
        "nixosVms[0].memory",
        "out of range",
    ),
    (
        "cpus zero",
        |d| {
            d["nixosVms"][0]["cpus"] = json!(0);
        },
        "nixosVms[0].cpus",
        "out of range",
    ),
    (
        "bad colour",
        |d| {
            d["nixosVms"][0]["color"] = json!("#12345");
        },
        "nixosVms[0].color",
        "not a colour",
    ),
    (
        "NAT without interface",
        |d| {
            d["hostNetworking"]["nat"]["interface"] = json!("");
        },
        "hostNetworking.nat.interface",
        "required when hostNetworking.nat.enable",
    ),
    (
        "hostAddress and bridge",
        |d| {
            d["nixosVms"][0]["network"]["interfaces"]["wan"]["tap"]["bridge"] = json!("br0");
        },
        "nixosVms[0].network.interfaces.wan.tap",
        "mutually exclusive",
    ),
    (
        "vm-switch without network name",
        |d| {
            ptr(d, "/nixosVms/1/network/interfaces/internal/vmNetwork")
                .as_object_mut()
                .unwrap()
                .remove("name");
        },
        "nixosVms[1].network.interfaces.internal.vmNetwork.name",
        "required",
    ),
    (
        "vm-switch without vmNetwork",
        |d| {
            ptr(d, "/nixosVms/1/network/interfaces/internal")
                .as_object_mut()
                .unwrap()
                .remove("vmNetwork");
        },
        "nixosVms[1].network.interfaces.internal.vmNetwork.name",
        "required for type = \"vm-switch\"",
    ),
    (
        "vmNetwork on a TAP",
        |d| {
            d["nixosVms"][0]["network"]["interfaces"]["wan"]["vmNetwork"] = json!({"name": "x"});
        },
        "nixosVms[0].network.interfaces.wan.vmNetwork",
        "only applies to type = \"vm-switch\"",
    ),
    (
        "bad interface type",
        |d| {
            d["nixosVms"][0]["network"]["interfaces"]["wan"]["type"] = json!("bridge");
        },
        "nixosVms[0].network.interfaces.wan.type",
        "allowed: \"tap\", \"vm-switch\"",
    ),
    (
        "dependsOn unknown VM",
        |d| {
            d["nixosVms"][1]["dependsOn"] = json!(["routr"]);
        },
        "nixosVms[1].dependsOn[0]",
        "no VM is named \"routr\"",
    ),
    (
        "dependsOn itself",
        |d| {
            d["nixosVms"][1]["dependsOn"] = json!(["banking"]);
        },
        "nixosVms[1].dependsOn[0]",
        "this VM itself",
    ),
    (
        "dependsOn cycle",
        |d| {
            d["nixosVms"][0]["dependsOn"] = json!(["banking"]);
            d["nixosVms"][1]["dependsOn"] = json!(["shopping"]);
            d["nixosVms"][2]["dependsOn"] = json!(["router"]);
        },
        "nixosVms[0].dependsOn",
        "dependency cycle: router -> banking -> shopping -> router",
    ),
    (
        "duplicate MAC",
        |d| {
            d["nixosVms"][1]["network"]["interfaces"]["internal"]["macAddress"] =
                json!("52:ab:cd:ef:12:34");
        },
        "nixosVms[2].network.interfaces.internal.macAddress",
        "also used by interface banking.internal",
    ),
    (
        "multicast MAC",
        |d| {
            d["nixosVms"][2]["network"]["interfaces"]["internal"]["macAddress"] =
                json!("01:00:5e:00:00:01");
        },
        "nixosVms[2].network.interfaces.internal.macAddress",
        "multicast",
    ),
    (
        "duplicate TAP name",
        |d| {
            d["nixosVms"][1]["network"]["interfaces"]["wan"] =
                json!({"type": "tap", "tap": {"name": "router-1"}});
        },
        "nixosVms[1].network.interfaces.wan.tap.name",
        "TAP names must be unique",
    ),
    (
        "TAP name too long",
        |d| {
            d["nixosVms"][0]["network"]["interfaces"]["wan"]["tap"]["name"] =
                json!("a-very-long-tap-name");
        },
        "nixosVms[0].network.interfaces.wan.tap.name",
        "1-15 characters",
    ),
    (
        "bad address",
        |d| {
            d["nixosVms"][1]["network"]["interfaces"]["internal"]["addresses"] =
                json!(["10.1.0.1"]);
        },
        "nixosVms[1].network.interfaces.internal.addresses[0]",
        "not an address with prefix",
    ),
    (
        "IPv6 in addresses",
        |d| {
            d["nixosVms"][1]["network"]["interfaces"]["internal"]["addresses"] =
                json!(["fd00::1/64"]);
        },
        "nixosVms[1].network.interfaces.internal.addresses[0]",
        "not an IPv4 address",
    ),
    (
        "route gateway off-subnet",
        |d| {
            d["nixosVms"][1]["network"]["interfaces"]["internal"]["routes"]["0.0.0.0/0"]["via"] =
                json!("10.2.0.1");
        },
        "nixosVms[1].network.interfaces.internal.routes[\"0.0.0.0/0\"].via",
        "not on this interface's subnets",
    ),
    (
        "route without via",
        |d| {
            d["nixosVms"][1]["network"]["interfaces"]["internal"]["routes"]["0.0.0.0/0"] =
                json!({});
        },
        "nixosVms[1].network.interfaces.internal.routes[\"0.0.0.0/0\"].via",
        "required",
    ),
    (
        "bad route destination",
        |d| {
            d["nixosVms"][1]["network"]["interfaces"]["internal"]["routes"] =
                json!({"default": {"via": "10.1.0.254"}});
        },
        "nixosVms[1].network.interfaces.internal.routes.default",
        "not an address with prefix",
    ),
    (
        "two peers claim one address",
        |d| {
            d["nixosVms"][2]["network"]["interfaces"]["internal"]["addresses"] =
                json!(["10.1.0.1/24"]);
        },
        "nixosVms[2].network.interfaces.internal.addresses",
        "also claimed by banking.internal",
    ),
    (
        "bad nameserver",
        |d| {
            d["nixosVms"][0]["network"]["nameservers"] = json!(["one.one.one.one"]);
        },
        "nixosVms[0].network.nameservers[0]",
        "not an IP address",
    ),
    (
        "bad PCI address",
        |d| {
            d["nixosVms"][0]["pciDevices"] = json!([{"path": "1:0:0"}]);
        },
        "nixosVms[0].pciDevices[0].path",
        "not a PCI address",
    ),
    (
        "PCI device not isolated",
        |d| {
            d["nixosVms"][0]["pciDevices"] = json!([{"path": "01:00.0"}]);
        },
        "nixosVms[0].pciDevices[0].path",
        "not in isolatedPciDevices",
    ),
    (
        "PCI device in two VMs",
        |d| {
            d["isolatedPciDevices"] = json!(["01:00.0"]);
            d["nixosVms"][0]["pciDevices"] = json!([{"path": "01:00.0"}]);
            d["nixosVms"][1]["pciDevices"] = json!([{"path": "0000:01:00.0"}]);
        },
        "nixosVms[1].pciDevices[0].path",
        "also passed to VM \"router\"",
    ),
    (
        "bad IOMMU mode",
        |d| {
            d["isolatedPciDevices"] = json!(["01:00.0"]);
            d["nixosVms"][0]["pciDevices"] = json!([{"path": "01:00.0", "iommu": "yes"}]);
        },
        "nixosVms[0].pciDevices[0].iommu",
        "not an IOMMU mode",
    ),
    (
        "disk without path",
        |d| {
            d["nixosVms"][0]["additionalDisks"] = json!([{"ro": true}]);
        },
        "nixosVms[0].additionalDisks[0].path",
        "required",
    ),
    (
        "disk option typo",
        |d| {
            d["nixosVms"][0]["additionalDisks"] =
                json!([{"path": "/tmp/d.qcow2", "blocksize": 4096}]);
        },
        "nixosVms[0].additionalDisks[0].blocksize",
        "crosvm --block has no option `blocksize`",
    ),
    (
        "disk id too long",
        |d| {
            d["nixosVms"][0]["additionalDisks"] =
                json!([{"path": "/tmp/d.qcow2", "id": "an-id-longer-than-twenty"}]);
        },
        "nixosVms[0].additionalDisks[0].id",
        "20 characters",
    ),
    (
        "relative disk path",
        |d| {
            d["nixosVms"][0]["additionalDisks"] = json!([{"path": "data.qcow2"}]);
        },
        "nixosVms[0].additionalDisks[0].path",
        "absolute path",
    ),
    (
        "gpu option typo",
        |d| {
            d["nixosVms"][0]["gpu"] = json!({"context_types": "cross-domain"});
        },
        "nixosVms[0].gpu.context_types",
        "crosvm --gpu has no option",
    ),
    (
        "gpu width without height",
        |d| {
            d["nixosVms"][0]["gpu"] = json!({"width": 1920});
        },
        "nixosVms[0].gpu",
        "width and height must be given together",
    ),
    (
        "sound backend",
        |d| {
            d["nixosVms"][0]["sound"] = json!({"backend": "jack"});
        },
        "nixosVms[0].sound.backend",
        "not a sound backend",
    ),
    (
        "shared dir without tag",
        |d| {
            d["nixosVms"][0]["sharedDirectories"] = json!([{"path": "/srv/x"}]);
        },
        "nixosVms[0].sharedDirectories[0].tag",
        "required",
    ),
    (
        "shared dir tag clashes with home",
        |d| {
            d["nixosVms"][0]["sharedDirectories"] = json!([{"path": "/srv/x", "tag": "home"}]);
        },
        "nixosVms[0].sharedDirectories[0]",
        "used by sharedHome",
    ),
    (
        "shared dir option typo",
        |d| {
            d["nixosVms"][0]["sharedDirectories"] =
                json!([{"path": "/srv/x", "tag": "x", "uid_map": "0 0 1"}]);
        },
        "nixosVms[0].sharedDirectories[0].uid_map",
        "crosvm --shared-dir has no option",
    ),
    (
        "relative sharedHome",
        |d| {
            d["nixosVms"][0]["sharedHome"] = json!("home/router");
        },
        "nixosVms[0].sharedHome",
        "absolute path",
    ),
    (
        "vhost-user type",
        |d| {
            d["nixosVms"][0]["vhostUser"] = json!([{"type": "nett", "socket": "/run/x.sock"}]);
        },
        "nixosVms[0].vhostUser[0].type",
        "not a vhost-user device type",
    ),
    (
        "log level",
        |d| {
            d["crosvm"] = json!({"logLevel": "verbose"});
        },
        "crosvm.logLevel",
        "allowed: error, warn, info, debug, trace",
    ),
    (
        "overlay type",
        |d| {
            d["nixosVms"][0]["rootOverlay"] = json!({"type": "btrfs"});
        },
        "nixosVms[0].rootOverlay.type",
        "allowed: \"qcow2\", \"tmpfs\"",
    ),
    (
        "overlay size",
        |d| {
            d["nixosVms"][0]["rootOverlay"] = json!({"size": "ten gigs"});
        },
        "nixosVms[0].rootOverlay.size",
        "not a size",
    ),
    (
        "wayland proxy",
        |d| {
            d["nixosVms"][0]["waylandProxy"] = json!("weston");
        },
        "nixosVms[0].waylandProxy",
        "not a Wayland proxy",
    ),
    (
        "vmm",
        |d| {
            d["nixosVms"][0]["vmm"] = json!("firecracker");
        },
        "nixosVms[0].vmm",
        "allowed: \"crosvm\", \"qemu\"",
    ),
    (
        "vsock transport",
        |d| {
            d["nixosVms"][0]["vsock"] = json!({"transport": "tcp"});
        },
        "nixosVms[0].vsock.transport",
        "not a vsock transport",
    ),
    (
        "autoShutdown.after zero",
        |d| {
            d["nixosVms"][0]["autoShutdown"] = json!({"enable": true, "after": 0});
        },
        "nixosVms[0].autoShutdown.after",
        "out of range",
    ),
    (
        "wrong type for bool",
        |d| {
            d["nixosVms"][0]["autoStart"] = json!("yes");
        },
        "nixosVms[0].autoStart",
        "expected true or false",
    ),
    (
        "interface name too long",
        |d| {
            let i = ptr(d, "/nixosVms/0/network/interfaces")
                .as_object_mut()
                .unwrap();
            let wan = i.remove("wan").unwrap();
            i.insert("a-very-long-interface".into(), wan);
        },
        "nixosVms[0].network.interfaces.a-very-long-interface",
        "not a usable interface name",
    ),
    (
        "two ports on one network",
        |d| {
            d["nixosVms"][1]["network"]["interfaces"]["second"] =
                json!({"type": "vm-switch", "vmNetwork": {"name": "internal"}});
        },
        "nixosVms[1].network.interfaces.second.vmNetwork.name",
        "one port per VM per network",
    ),
    (
        "kernel param with newline",
        |d| {
            d["nixosVms"][0]["kernelParams"] = json!(["quiet\nsplash"]);
        },
        "nixosVms[0].kernelParams[0]",
        "control characters",
    ),
    (
        "nixosVms not a list",
        |d| {
            d["nixosVms"] = json!({"router": {}});
        },
        "nixosVms",
        "expected a list",
    ),
];

#[test]
fn every_rule_names_the_path_and_what_is_allowed() {
    let mut failures = Vec::new();
    for (what, edit, path, words) in CASES {
        let issues = issues_after(edit);
        let hit = issues
            .iter()
            .any(|i| i.path == *path && i.message.contains(words));
        if !hit {
            failures.push(format!(
                "{what}: wanted `{path}: …{words}…`, got {issues:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(CASES.len() >= 20);
}

#[test]
fn all_problems_are_reported_together() {
    let issues = issues_after(|d| {
        d["nixosVms"][0]["id"] = json!(2);
        d["nixosVms"][1]["color"] = json!("nope");
        d["nixosVms"][2]["dependsOn"] = json!(["ghost"]);
    });
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
        // In path order, although nixosVms[1].color is found while reading and
        // nixosVms[0].id only when validating.
        [
            "nixosVms[0].id",
            "nixosVms[1].color",
            "nixosVms[2].dependsOn[0]"
        ]
    );
}

#[test]
fn errors_display_every_issue() {
    let err = from_json_str(
        r#"{"user":"u","userUid":1,"nixosVms":[{"id":2,"name":"a"},{"id":2,"name":"b"}]}"#,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("the document has 2 problems:"), "{text}");
    assert!(text.contains("nixosVms[0].id: 2 is even"), "{text}");
    assert!(text.contains("nixosVms[1].id: 2 is even"), "{text}");
}

#[test]
fn syntax_errors_say_where() {
    let err = from_json_str("{\n  \"user\": \"u\",,\n}").unwrap_err();
    assert!(
        matches!(err, ConfigError::Syntax { line: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn free_form_options_are_kept_and_mapped() {
    let config = from_json_str(
        r#"{"user":"u","userUid":1000,"isolatedPciDevices":["01:00.0"],"nixosVms":[{"id":3,"name":"a",
            "additionalDisks":[{"path":"/tmp/data.qcow2","ro":false,"sparse":true,"block-size":4096,"id":"data","direct":false}],
            "pciDevices":[{"path":"01:00.0","iommu":"on"}],
            "sharedDirectories":[{"path":"/shared/personal","id":"home2","uidmap":"0 0 65535"}],
            "sound":true}]}"#,
    )
    .unwrap();
    let vm = &config.nixos_vms[0];
    assert_eq!(vm.additional_disks[0].options.len(), 5);
    assert_eq!(
        vm.pci_devices[0].options["iommu"],
        Scalar::Str("viommu".into())
    );
    assert_eq!(vm.shared_directories[0].tag, "home2");
    assert_eq!(
        vm.shared_directories[0].options["type"],
        Scalar::Str("fs".into())
    );
    assert_eq!(vm.sound.as_ref().unwrap().backend, SoundBackend::Pipewire);
}

#[test]
fn null_means_default() {
    let config = from_json_str(
        r#"{"user":"u","userUid":1000,"nixosVms":[{"id":3,"name":"a","kernel":null,"rootDisk":null,"network":{"interfaces":{"wan":{"type":"tap","macAddress":null,"tap":{"name":null,"hostAddress":"10.0.0.254/24","bridge":null}}}}}]}"#,
    )
    .unwrap();
    assert!(config.nixos_vms[0].kernel.is_none());
}

#[test]
fn default_source_prefers_explicit_then_system_then_bundled() {
    let dir = tempfile::tempdir().unwrap();
    let system = dir.path().join("config.json");
    let (_, source) = load_or_default_from(None, &system).unwrap();
    assert_eq!(source, Source::BundledExample);
    std::fs::write(&system, EXAMPLE_VM_SWITCH).unwrap();
    let (config, source) = load_or_default_from(None, &system).unwrap();
    assert_eq!(source, Source::File(system.clone()));
    assert!(config.vm("router").is_some());
    let missing = dir.path().join("missing.json");
    assert!(matches!(
        load_or_default_from(Some(&missing), &system),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn duplicate_keys_are_rejected_with_their_position() {
    let err =
        from_json_str("{\"user\": \"david\",\n \"user\": \"eve\", \"userUid\": 1000}").unwrap_err();
    match &err {
        ConfigError::Syntax {
            line: 2, source, ..
        } => {
            assert!(
                source.to_string().contains("\"user\" appears twice"),
                "{source}"
            );
        }
        other => panic!("{other:?}"),
    }
    let nested = r#"{"user":"u","userUid":1,"nixosVms":[{"id":3,"name":"a","id":5}]}"#;
    assert!(matches!(
        from_json_str(nested),
        Err(ConfigError::Syntax { .. })
    ));
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let text = format!("\u{feff}{EXAMPLE_QUICKSTART}");
    assert!(from_json_str(&text).is_ok());
}

#[test]
fn the_document_must_be_an_object() {
    for text in ["[]", "null", "3", "\"x\""] {
        let err = from_json_str(text).unwrap_err();
        let issues = err.issues();
        assert_eq!(issues.len(), 1, "{text}: {issues:?}");
        assert_eq!(issues[0].path, "");
        assert!(
            err.to_string()
                .contains("(top level): expected an attribute set"),
            "{err}"
        );
    }
}

#[test]
fn only_regular_files_of_bounded_size_are_read() {
    assert!(matches!(
        load(std::path::Path::new("/dev/zero")),
        Err(ConfigError::Read { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(load(dir.path()), Err(ConfigError::Read { .. })));
    let big = dir.path().join("big.json");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(MAX_DOCUMENT_BYTES + 1).unwrap();
    let err = load(&big).unwrap_err();
    assert!(
        crate::error_chain(&err).contains("larger than 16 MiB"),
        "{err}"
    );
}
