//! Drives the `vmsilo` binary the way a user does: `check` and `plan` on real documents.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vmsilo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args(args)
        .env_remove("VMSILO_LOG")
        .output()
        .unwrap()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/examples")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_both_examples() {
    for name in ["quickstart.json", "vm-switch-network.json"] {
        let path = examples().join(name);
        let out = vmsilo(&["check", path.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("valid (3 VMs)"));
    }
}

#[test]
fn check_rejects_each_invalid_document_naming_the_path() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for doc in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let expect = std::fs::read_to_string(doc.with_extension("expect")).unwrap();
        let out = vmsilo(&["check", doc.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", doc.display());
        assert!(
            stderr.contains(expect.trim()),
            "{}: expected `{}` in:\n{stderr}",
            doc.display(),
            expect.trim()
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} invalid documents");
}

#[test]
fn check_reports_a_missing_file() {
    let out = vmsilo(&["check", "/nonexistent/config.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/config.json"));
}

#[test]
fn no_config_uses_the_bundled_example_and_says_so() {
    if Path::new("/etc/vmsilo/config.json").exists() {
        // On a vmsilo host the system document wins; the library test covers the fallback.
        let out = vmsilo(&["plan"]);
        assert!(text(&out.stderr).contains("using /etc/vmsilo/config.json"));
        return;
    }
    let out = vmsilo(&["plan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("using the bundled quick-start example"));
    let stdout = text(&out.stdout);
    for vm in ["banking", "shopping", "personal"] {
        assert!(stdout.contains(&format!("== VM {vm} ")), "{stdout}");
    }
    assert!(
        stdout.contains("network: offline"),
        "personal has no interfaces"
    );
}

#[test]
fn plan_for_an_unknown_vm_lists_the_vms() {
    let path = examples().join("quickstart.json");
    let out = vmsilo(&["plan", path.to_str().unwrap(), "--vm", "bankng"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no VM is named \"bankng\"; VMs: banking, shopping, personal")
    );
}

fn plan_json(name: &str, extra: &[&str]) -> serde_json::Value {
    let path = examples().join(name);
    let mut args = vec!["plan", path.to_str().unwrap(), "--json"];
    args.extend(extra);
    let out = vmsilo(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The source is the path the test ran with, which differs between checkouts.
    plan["source"] = serde_json::Value::String(name.to_owned());
    plan
}

#[test]
fn plan_json_quickstart_is_pinned() {
    insta::assert_json_snapshot!("plan_quickstart", plan_json("quickstart.json", &[]));
}

#[test]
fn plan_json_vm_switch_network_is_pinned() {
    insta::assert_json_snapshot!(
        "plan_vm_switch_network",
        plan_json("vm-switch-network.json", &[])
    );
}

#[test]
fn plan_for_one_vm_keeps_its_networks() {
    let plan = plan_json("vm-switch-network.json", &["--vm", "banking"]);
    assert_eq!(plan["vms"].as_array().unwrap().len(), 1);
    assert_eq!(plan["switchNetworks"][0]["name"], "internal");
    assert_eq!(plan["vms"][0]["switchPorts"][0]["pciAddress"], "00:16.0");
}

/// Check every flag after `run` against the form DESIGN.md gives for it; `user_extra` are the
/// document's own extraRunArgs, passed through verbatim.
fn check_crosvm_argv(argv: &[String], user_extra: &[&str]) {
    let deprecated = [
        "--cid",
        "--tap-name",
        "--tap-fd",
        "--host_ip",
        "--netmask",
        "--mac",
        "--rwdisk",
        "--disk",
        "--root",
    ];
    assert_eq!(argv[0], "crosvm");
    let run = argv.iter().position(|a| a == "run").expect("no `run`");
    let globals = &argv[1..run];
    assert!(
        globals.windows(2).any(|w| w[0] == "--log-level"),
        "log level goes before run"
    );
    let kernel = argv.last().unwrap();
    assert!(kernel.starts_with('/'), "kernel must come last: {kernel}");
    let mut i = run + 1;
    while i < argv.len() - 1 {
        let flag = argv[i].as_str();
        if user_extra.contains(&flag) {
            i += 1; // the user's own extraRunArgs pass through untouched
            continue;
        }
        assert!(!deprecated.contains(&flag), "deprecated flag {flag}");
        let value = argv[i + 1].as_str();
        let ok = match flag {
            "--mem" | "--cpus" => value.parse::<u32>().is_ok(),
            "--vsock" => value
                .strip_prefix("cid=")
                .is_some_and(|c| c.parse::<u32>().is_ok()),
            "--block" => {
                value.starts_with('/') && value.split(',').skip(1).all(|kv| kv.contains('='))
            }
            "--net" => {
                let keys: Vec<&str> = value
                    .split(',')
                    .map(|kv| kv.split('=').next().unwrap())
                    .collect();
                keys == ["tap-name", "mac", "pci-address"] && value.contains("pci-address=00:")
            }
            "--vhost-user" => value.starts_with("type=") && value.contains(",socket=/"),
            "--vfio" => value.starts_with("/sys/bus/pci/devices/") && !value.contains("iommu=on"),
            "--shared-dir" => {
                let fields: Vec<&str> = value.split(':').collect();
                fields.len() >= 3 && fields[0].starts_with('/') && fields.contains(&"type=fs")
            }
            "--gpu" => {
                value.starts_with("context-types=")
                    && !value.contains("width=")
                    && !value.contains("height=")
            }
            "--wayland-sock" | "--socket" | "--initrd" => value.starts_with('/'),
            "--serial" => value.starts_with("type=file,path=/") && value.contains("console=true"),
            "--params" => value.contains("console=ttyS0"),
            other => panic!("unexpected flag {other} {value}"),
        };
        assert!(ok, "{flag} {value} is not in DESIGN.md's syntax");
        i += 2;
    }
}

#[test]
fn every_crosvm_flag_matches_the_design_syntax() {
    for name in ["quickstart.json", "vm-switch-network.json"] {
        let plan = plan_json(name, &[]);
        for vm in plan["vms"].as_array().unwrap() {
            let argv: Vec<String> = serde_json::from_value(vm["command"].clone()).unwrap();
            check_crosvm_argv(&argv, &[]);
        }
    }
}

#[test]
fn every_option_reaches_the_crosvm_command() {
    let doc = r#"{"user":"david","userUid":1000,
      "crosvm":{"logLevel":"warn","extraArgs":["--syslog-tag","vmsilo"],"extraRunArgs":["--disable-sandbox"]},
      "isolatedPciDevices":["01:00.0"],
      "nixosVms":[{"id":9,"name":"full","memory":2048,"cpus":3,"color":"navy",
        "kernel":"/nix/store/k-linux/bzImage","initramfs":"/nix/store/i-initrd/initrd",
        "rootDisk":{"path":"/nix/store/r-root/root.img","direct":true},"rootDiskReadonly":true,
        "additionalDisks":[{"path":"/tmp/data.qcow2","ro":false,"sparse":true,"block-size":4096,"id":"data","direct":false}],
        "sharedHome":"/home/david/vm-full",
        "sharedDirectories":[{"path":"/shared/personal","id":"docs","uidmap":"0 0 65535","gidmap":"0 0 65535"}],
        "pciDevices":[{"path":"01:00.0","iommu":"on"}],
        "gpu":{"context-types":"cross-domain","width":1920,"height":1080},
        "sound":{"backend":"pulse","capture":true},
        "vhostUser":[{"type":"fs","socket":"/run/virtiofsd.sock"}],
        "kernelParams":["quiet"],
        "rootOverlay":{"type":"tmpfs"},
        "vsock":{"transport":"vhost-user"},
        "autoShutdown":{"enable":true,"after":30},
        "crosvm":{"logLevel":"debug","extraArgs":["--extra-global"],"extraRunArgs":["--extra-run"]},
        "network":{"interfaces":{
          "wan":{"type":"tap","tap":{"bridge":"br0"},"dhcp":true},
          "lan":{"type":"vm-switch","addresses":["10.5.0.2/24"],"v6Addresses":["fd05::2/64"],"vmNetwork":{"name":"lan"}}}}}]}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.json");
    std::fs::write(&path, doc).unwrap();
    let out = vmsilo(&["plan", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let argv: Vec<String> = serde_json::from_value(plan["vms"][0]["command"].clone()).unwrap();
    check_crosvm_argv(&argv, &["--disable-sandbox", "--extra-run"]);
    let line = argv.join(" ");
    let expected = [
        "crosvm --log-level debug --syslog-tag vmsilo --extra-global run",
        "--mem 2048 --cpus 3",
        "--vhost-user type=vsock,socket=/run/vmsilo/full/vhost-vsock.sock",
        "--block /nix/store/r-root/root.img,direct=true,ro=true",
        "--block /tmp/data.qcow2,block-size=4096,direct=false,id=data,ro=false,sparse=true",
        "--vhost-user type=net,socket=/run/vm-switch/lan/full.sock,pci-address=00:16.0,max-queue-size=1024",
        "--net tap-name=full-1,mac=",
        ",pci-address=00:17.0",
        "--vfio /sys/bus/pci/devices/0000:01:00.0/,iommu=viommu",
        "--shared-dir /home/david/vm-full:home:type=fs",
        "--shared-dir /shared/personal:docs:gidmap=0 0 65535:type=fs:uidmap=0 0 65535",
        "--gpu context-types=cross-domain,displays=[[mode=windowed[1920,1080]]]",
        "--wayland-sock /run/vmsilo/full/wayland-0",
        "--vhost-user type=sound,socket=/run/vmsilo/full/sound.sock",
        "--vhost-user type=fs,socket=/run/virtiofsd.sock",
        "--serial type=file,path=/run/vmsilo/full-console,input=/run/vmsilo/full-console,num=1,console=true",
        "--socket /run/vmsilo/full/crosvm.sock",
        "--initrd /nix/store/i-initrd/initrd --disable-sandbox --extra-run /nix/store/k-linux/bzImage",
    ];
    for piece in expected {
        assert!(line.contains(piece), "missing `{piece}` in\n{line}");
    }
    assert!(
        !line.contains("overlay.qcow2"),
        "tmpfs overlay needs no disk"
    );
    assert!(
        !line.contains("--vsock"),
        "vhost-user vsock replaces --vsock"
    );
    let params = &plan["vms"][0]["kernelParams"];
    let params: Vec<String> = serde_json::from_value(params.clone()).unwrap();
    assert_eq!(params.last().unwrap(), "quiet", "user parameters come last");
    assert!(params.iter().any(|p| p.starts_with("vmsilo.ifname=lan,")));
    assert_eq!(plan["vms"][0]["textColor"], "#ffffff", "white text on navy");
}

/// Runs `vmsilo ARGS`, failing the test instead of hanging when it doesn't finish.
fn vmsilo_within(args: &[&std::ffi::OsStr], secs: u64) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args(args)
        .env_remove("VMSILO_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(out) => out,
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("vmsilo {args:?} did not finish within {secs} s");
        }
    }
}

#[test]
fn check_and_plan_refuse_a_fifo_instead_of_waiting_for_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cfg.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let link = dir.path().join("link-to-fifo.json");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    for (cmd, path) in [("check", &fifo), ("plan", &link)] {
        let out = vmsilo_within(&[cmd.as_ref(), path.as_os_str()], 20);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: cannot read {}: not a regular file (a FIFO)\n",
                path.display()
            )
        );
    }
    let out = vmsilo_within(&["check".as_ref(), "/dev/zero".as_ref()], 20);
    assert_eq!(
        text(&out.stderr),
        "error: cannot read /dev/zero: not a regular file (a character device)\n"
    );
}

#[test]
fn check_lists_problems_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("c.json");
    // nixosVms[2]'s bad type is found while reading, nixosVms[0]'s and nixosVms[10]'s name only
    // when validating; the report is still ordered by path, indices as numbers.
    let mut vms: Vec<serde_json::Value> = (0..11)
        .map(|i| serde_json::json!({ "id": 3 + 2 * i, "name": format!("vm{i}") }))
        .collect();
    vms[0]["name"] = "bad-".into();
    vms[2]["memory"] = "lots".into();
    vms[10]["name"] = "Bad".into();
    let config = serde_json::json!({ "user": "david", "userUid": 1000, "nixosVms": vms });
    std::fs::write(&doc, config.to_string()).unwrap();
    let out = vmsilo(&["check", doc.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let paths: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - ")?.split(':').next())
        .collect();
    assert_eq!(
        paths,
        [
            "nixosVms[0].name",
            "nixosVms[2].memory",
            "nixosVms[10].name"
        ],
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "\"bad-\" is not a VM name: use a lowercase letter then lowercase letters, digits or '-', not ending with '-'"
        ),
        "{stderr}"
    );
}
