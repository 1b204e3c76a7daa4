//! `vmsilo demo`: the bundled quick-start example brought up for real, as tiny VMs.
//!
//! The demo uses the product's own path the way a user does: it writes a configuration document,
//! starts `vm-switch` for a network, puts each VM's command socket behind `vmsilo proxy` with
//! socket activation (as systemd would), and then runs `vm-run` against stopped VMs, which start
//! on demand through `vmsilo vm run` on the QEMU backend. It prints a transcript with timings and
//! exits non-zero if any step did not do what it should.
//!
//! What differs from a NixOS host, and why: guests are a Debian kernel with a busybox initramfs
//! (see [`guest`]) rather than NixOS images; the example's TAP uplinks would change the host's
//! network, so the VMs that have them are put on a vm-switch network `demo` instead; there is no
//! compositor here, so the VMs get no GPU.

mod guest;
mod interrupt;
mod prereq;

use std::fmt::Write as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::config::{self, Config};
use crate::paths::Paths;
use crate::qemu::Accel;

/// Subnet of the demo's vm-switch network.
const DEMO_NET: &str = "demo";

/// Arguments of `vmsilo demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of idleness after which the demo VMs power off (their autoShutdown.after).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(5..=600))]
    pub idle: u64,

    /// Keep the work directory (config, logs, guest image) instead of removing it.
    #[arg(long)]
    pub keep: bool,

    /// Work directory; default a new directory under /tmp.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Debian kernel tree for the guests (boot/vmlinuz-*, lib/modules/*).
    #[arg(long, env = "VMSILO_KROOT", default_value = "/opt/vmsilo-test/kroot")]
    pub kroot: PathBuf,

    /// shared/vmtest, whose build-initramfs.sh makes the guests' base initramfs.
    #[arg(long, value_name = "DIR")]
    pub vmtest: Option<PathBuf>,

    /// Directory holding vmsilo, vm-run, vm-switch and a static vmsilo-agent; default: build them
    /// from this source tree with cargo.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Don't install missing packages even when running as root; just list them.
    #[arg(long)]
    pub no_install: bool,

    /// QEMU accelerator for the demo VMs.
    #[arg(long, value_enum, default_value_t = DemoAccel::Auto)]
    pub accel: DemoAccel,
}

/// The `--accel` choices of `vmsilo demo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoAccel {
    /// KVM when /dev/kvm is usable hardware KVM that can boot stock kernels, else TCG.
    Auto,
    /// Hardware virtualisation (/dev/kvm).
    Kvm,
    /// Software emulation: slow, works everywhere.
    Tcg,
}

/// The accelerator the demo VMs get and why, in words for the transcript. `auto` decides as
/// `vmsilo vm run` does without `--accel` ([`Accel::detect`]), and says what it found.
fn choose_accel(requested: DemoAccel, dev_kvm: &Path, sys_module: &Path) -> (Accel, String) {
    match requested {
        DemoAccel::Kvm => (Accel::Kvm, "KVM (--accel kvm)".to_owned()),
        DemoAccel::Tcg => (Accel::Tcg, "TCG (--accel tcg)".to_owned()),
        DemoAccel::Auto => {
            let kvm = dev_kvm.display();
            let open = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dev_kvm);
            let (accel, why) = match open {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (Accel::Tcg, format!("TCG: there is no {kvm}"))
                }
                Err(e) => (
                    Accel::Tcg,
                    format!("TCG: {kvm} cannot be opened read-write ({e})"),
                ),
                Ok(_) if sys_module.join("kvm_pvm").exists() => (
                    Accel::Tcg,
                    format!(
                        "TCG: {kvm} is KVM-PVM (module kvm_pvm is loaded), which cannot boot stock kernels"
                    ),
                ),
                Ok(_) => (Accel::Kvm, format!("KVM: {kvm} is usable hardware KVM")),
            };
            (accel, format!("{why} (--accel kvm or tcg to choose)"))
        }
    }
}

/// The `--accel` value of `vmsilo vm run` for `accel`.
fn accel_arg(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

/// The transcript: timestamped lines on stdout, and a tally of checks.
struct Transcript {
    start: Instant,
    passed: Vec<String>,
    failed: Vec<String>,
}

impl Transcript {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            passed: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// A timestamped line; further lines of `text` are indented under it.
    fn say(&self, text: impl AsRef<str>) {
        let mut lines = text.as_ref().lines();
        println!(
            "[{:7.1}s] {}",
            self.start.elapsed().as_secs_f64(),
            lines.next().unwrap_or_default()
        );
        for line in lines {
            println!("            {line}");
        }
    }

    fn detail(&self, text: impl AsRef<str>) {
        for line in text.as_ref().lines() {
            println!("            {line}");
        }
    }

    fn check(&mut self, what: &str, ok: bool, why: impl AsRef<str>) {
        if ok {
            self.say(format!("ok: {what}"));
            self.passed.push(what.to_owned());
        } else {
            self.say(format!("FAILED: {what}: {}", why.as_ref()));
            self.failed.push(what.to_owned());
        }
    }
}

/// The binaries the demo drives.
struct Bins {
    vmsilo: PathBuf,
    vm_run: PathBuf,
    vm_switch: PathBuf,
    agent: PathBuf,
}

fn source_tree() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    root.join("Cargo.toml").is_file().then_some(root)
}

fn cargo(src: &Path, args: &[&str], rustflags: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(src);
    if let Some(flags) = rustflags {
        cmd.env("RUSTFLAGS", flags);
    }
    let st = interrupt::status(&mut cmd, "cargo build")
        .context("cannot run cargo (needed to build the demo's tools from source)")?;
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

fn binaries(args: &DemoArgs, t: &Transcript) -> Result<Bins> {
    if let Some(dir) = &args.bin_dir {
        let bins = Bins {
            vmsilo: dir.join("vmsilo"),
            vm_run: dir.join("vm-run"),
            vm_switch: dir.join("vm-switch"),
            agent: dir.join("vmsilo-agent"),
        };
        for bin in [&bins.vmsilo, &bins.vm_run, &bins.vm_switch, &bins.agent] {
            if !bin.is_file() {
                bail!("{} is missing", bin.display());
            }
        }
        return Ok(bins);
    }
    let src = source_tree().context(
        "no source tree to build from; pass --bin-dir with vmsilo, vm-run, vm-switch and a static vmsilo-agent",
    )?;
    // Build in the profile this vmsilo was built with, so a debug `cargo run` reuses the
    // artifacts `cargo test` already made.
    let (profile, dir) = if cfg!(debug_assertions) {
        ("dev", "debug")
    } else {
        ("release", "release")
    };
    t.say(format!(
        "building vmsilo, vm-run, vm-switch and a static vmsilo-agent (cargo, {dir})"
    ));
    cargo(
        &src,
        &[
            "build",
            "-q",
            "--profile",
            profile,
            "-p",
            "vmsilo",
            "-p",
            "vm-switch",
            "--bins",
        ],
        None,
    )?;
    // The agent runs in a guest without our host's libraries: link it statically. An explicit
    // --target keeps the flag away from build scripts and proc macros.
    let host = "x86_64-unknown-linux-gnu";
    cargo(
        &src,
        &[
            "build",
            "-q",
            "--profile",
            profile,
            "-p",
            "vmsilo-guest",
            "--bin",
            "vmsilo-agent",
            "--target",
            host,
            "--target-dir",
            "target/static",
        ],
        Some("-C target-feature=+crt-static"),
    )?;
    let out = src.join("target").join(dir);
    Ok(Bins {
        vmsilo: out.join("vmsilo"),
        vm_run: out.join("vm-run"),
        vm_switch: out.join("vm-switch"),
        agent: src.join(format!("target/static/{host}/{dir}/vmsilo-agent")),
    })
}

/// Each demo VM with its address on the demo network, if it is networked.
type Addresses = Vec<(String, Option<String>)>;

/// The quick-start example as demo VMs: QEMU, hybrid vsock, no GPU or shared home, a short idle
/// timeout, and vm-switch in place of TAP uplinks.
fn demo_config(image: &guest::GuestImage, idle: u64) -> Result<(Value, Addresses)> {
    let mut doc: Value = serde_json::from_str(config::EXAMPLE_QUICKSTART)?;
    doc["hostNetworking"] = json!({ "nat": { "enable": false } });
    let mut addresses = Vec::new();
    let vms = doc["nixosVms"]
        .as_array_mut()
        .context("the example has no nixosVms")?;
    let mut host = 1;
    for vm in vms.iter_mut() {
        let name = vm["name"].as_str().unwrap_or_default().to_owned();
        let online = vm["network"]["interfaces"]
            .as_object()
            .is_some_and(|i| !i.is_empty());
        let mut params = vec![
            format!("vmsilo.demo.name={name}"),
            format!("vmsilo.demo.idle={idle}"),
        ];
        let address = online.then(|| {
            let a = format!("10.77.0.{host}");
            host += 1;
            a
        });
        if let Some(a) = &address {
            vm["network"] = json!({ "interfaces": { "lan": {
                "type": "vm-switch",
                "addresses": [format!("{a}/24")],
                "vmNetwork": { "name": DEMO_NET, "receiveBroadcast": true }
            }}});
            params.push(format!("vmsilo.demo.addr=lan,{a}/24"));
        }
        let obj = vm.as_object_mut().context("a VM is not an object")?;
        obj.insert("memory".into(), json!(256));
        obj.insert("cpus".into(), json!(1));
        obj.insert("vmm".into(), json!("qemu"));
        obj.insert("vsock".into(), json!({ "transport": "vhost-user" }));
        obj.insert("gpu".into(), json!(false));
        obj.insert("sharedHome".into(), json!(false));
        obj.insert("rootOverlay".into(), json!({ "type": "tmpfs" }));
        obj.insert("kernel".into(), json!(image.kernel));
        obj.insert("initramfs".into(), json!(image.initramfs));
        obj.insert("rootDisk".into(), json!({ "path": image.root_disk }));
        obj.insert(
            "autoShutdown".into(),
            json!({ "enable": true, "after": idle }),
        );
        obj.insert("kernelParams".into(), json!(params));
        obj.remove("guestPrograms");
        addresses.push((name, address));
    }
    Ok((doc, addresses))
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Guard {
    name: String,
    child: Child,
}

impl Guard {
    /// Start `cmd` as `name`, known to the signal cleanup.
    fn spawn(cmd: &mut Command, name: String) -> Result<Self> {
        let child = interrupt::spawn(cmd, &name).with_context(|| format!("cannot start {name}"))?;
        Ok(Self { name, child })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
        interrupt::forget(&self.child);
        tracing::debug!("stopped {}", self.name);
    }
}

fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Start `vmsilo proxy <vm>` as systemd socket activation would: the listening command socket as
/// fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = the proxy's own pid.
fn start_proxy(
    bins: &Bins,
    paths: &Paths,
    cfg: &Path,
    vm: &str,
    start: &str,
    log: &Path,
) -> Result<Guard> {
    let socket = paths.command_socket(vm);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let mut cmd = crate::proxy::socket_activated(&bins.vmsilo, &listener);
    cmd.arg("proxy")
        .arg("--config")
        .arg(cfg)
        .arg(vm)
        .arg("--start-command")
        .arg(start)
        .arg("--agent-timeout")
        .arg("300")
        .env("VMSILO_RUN_DIR", &paths.run_dir)
        .env("VMSILO_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    let guard = Guard::spawn(&mut cmd, format!("vmsilo proxy {vm}"))?;
    drop(listener);
    Ok(guard)
}

/// Run `vm-run` as a user would, with the demo's runtime directory.
fn vm_run(
    bins: &Bins,
    paths: &Paths,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<(Output, Duration)> {
    let started = Instant::now();
    let mut cmd = Command::new(&bins.vm_run);
    cmd.args(args)
        .env("VMSILO_RUN_DIR", &paths.run_dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = interrupt::spawn(&mut cmd, "vm-run").context("cannot run vm-run")?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(data)?;
    }
    let pid = child.id();
    let out = child.wait_with_output();
    interrupt::forget_pid(pid);
    let out = out?;
    Ok((out, started.elapsed()))
}

fn show(t: &Transcript, cmdline: &str, out: &Output, took: Duration) {
    t.say(format!("$ {cmdline}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.trim().is_empty() {
        t.detail(stdout.trim_end());
    }
    if !stderr.trim().is_empty() {
        let mut text = String::new();
        for line in stderr.trim_end().lines() {
            let _ = writeln!(text, "stderr: {line}");
        }
        t.detail(text.trim_end());
    }
    t.detail(format!(
        "exit {} after {:.2} s",
        out.status
            .code()
            .map_or_else(|| "by signal".to_owned(), |c| c.to_string()),
        took.as_secs_f64()
    ));
}

/// Whether the VM service of `vm` is running (it removes its runtime dir on exit).
fn vm_up(paths: &Paths, vm: &str) -> bool {
    paths.vm_run_dir(vm).exists()
}

fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Run the demo; the exit code says whether every check passed.
pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    let mut t = Transcript::new();
    // Before any thread or process exists, so all of them leave the signals to its thread.
    interrupt::install(t.start).context("cannot take over SIGINT and SIGTERM")?;
    t.say("vmsilo demo: the bundled quick-start example as tiny VMs on the QEMU backend");
    let (accel, why) = choose_accel(args.accel, Path::new("/dev/kvm"), Path::new("/sys/module"));
    t.say(format!("accelerator: {why}"));

    let mut tmp = None;
    let work = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.canonicalize()?
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("vmsilo-demo.")
                .tempdir()
                .context("cannot create the work directory")?;
            let path = dir.path().canonicalize()?;
            if !args.keep {
                interrupt::set_temp_work_dir(Some(path.clone()));
            }
            tmp = Some(dir);
            path
        }
    };
    t.say(format!("work directory: {}", work.display()));
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    interrupt::set_logs(logs.clone());
    let install_log = logs.join("install.log");
    let tools = match prereq::ensure(&args.kroot, !args.no_install, &install_log, &mut |m| {
        t.say(m)
    }) {
        Ok(tools) => tools,
        Err(e) => {
            if install_log.exists() {
                // The error names the log; it must outlive the demo.
                interrupt::set_temp_work_dir(None);
                if let Some(dir) = tmp.take() {
                    let _ = dir.keep();
                }
            }
            return Err(e);
        }
    };
    let vmtest = match &args.vmtest {
        Some(dir) => dir.clone(),
        None => source_tree()
            .map(|s| s.join("../shared/vmtest"))
            .filter(|d| d.join("build-initramfs.sh").exists())
            .context("cannot find shared/vmtest beside the source tree; pass --vmtest DIR")?,
    };
    let bins = binaries(args, &t)?;

    let image = guest::build(&work, &tools.kroot, &vmtest, &bins.agent)?;
    t.say(format!(
        "guest: {} + initramfs with vmsilo-agent ({} KiB)",
        image.kernel.display(),
        std::fs::metadata(&image.initramfs)?.len() / 1024
    ));

    let root = work.join("root");
    let paths = Paths::under(&root);
    for dir in [
        &paths.run_dir,
        &paths.state_dir,
        &paths.switch_net_dir(DEMO_NET),
    ] {
        std::fs::create_dir_all(dir)?;
    }
    let (doc, addresses) = demo_config(&image, args.idle)?;
    let cfg_path = paths.config_file.clone();
    std::fs::create_dir_all(cfg_path.parent().unwrap_or(&root))?;
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&doc)?)?;
    let config: Config = match config::load(&cfg_path) {
        Ok(c) => c,
        Err(e) => bail!(
            "the demo configuration is invalid: {}",
            crate::error_chain(&e)
        ),
    };
    t.say(format!(
        "configuration: {} (vmsilo check: valid)",
        cfg_path.display()
    ));
    for (name, address) in &addresses {
        match address {
            Some(a) => t.detail(format!(
                "{name}: vm-switch network {DEMO_NET:?}, {a}/24 (its TAP uplink replaced)"
            )),
            None => t.detail(format!("{name}: offline, as configured")),
        }
    }

    let mut switch = Command::new(&bins.vm_switch);
    switch
        .args(["--name", DEMO_NET, "--config-dir"])
        .arg(paths.switch_net_dir(DEMO_NET))
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.join("vm-switch.log"))?);
    let _switch = Guard::spawn(&mut switch, "vm-switch".into())?;
    t.say(format!(
        "vm-switch {DEMO_NET:?} running (config dir {})",
        paths.switch_net_dir(DEMO_NET).display()
    ));

    let mut proxies = Vec::new();
    for vm in config.vm_names() {
        let start = format!(
            "echo $$ > {pid} && exec {vmsilo} vm run {vm} --root {root} --config {cfg} --accel {accel} --qemu {qemu} --vhost-device-vsock {vsock} >> {log} 2>&1",
            pid = sh(&logs.join(format!("{vm}.service.pid"))),
            vmsilo = sh(&bins.vmsilo),
            root = sh(&root),
            cfg = sh(&cfg_path),
            qemu = sh(&tools.qemu),
            vsock = sh(&tools.vhost_device_vsock),
            log = sh(&logs.join(format!("{vm}.service.log"))),
            accel = accel_arg(accel),
        );
        proxies.push(start_proxy(
            &bins,
            &paths,
            &cfg_path,
            vm,
            &start,
            &logs.join(format!("{vm}.proxy.log")),
        )?);
    }
    t.say(format!(
        "command sockets listening in {} (socket activation)",
        paths.run_dir.display()
    ));

    let result = scenario(&mut t, &bins, &paths, &addresses, args.idle);
    if let Err(e) = &result {
        t.check(
            "the demo ran to the end",
            false,
            crate::error_chain(e.as_ref()),
        );
    }

    // Stop whatever still runs: the VM services first (clean guest shutdown), then the rest.
    // Nothing of theirs may outlive the demo or find its work directory gone.
    let services: Vec<(String, i32)> = config
        .vm_names()
        .filter_map(|vm| service_pid(&logs, vm).map(|pid| (vm.to_owned(), pid)))
        .collect();
    let stubborn = stop_services(
        &services,
        |vm| vm_up(&paths, vm),
        Duration::from_secs(60),
        Duration::from_secs(20),
    );
    drop(proxies);
    drop(_switch);
    t.check(
        "every VM stopped and its runtime directory was removed",
        stubborn.is_empty(),
        format!(
            "a VM service was still running: {}",
            stubborn
                .iter()
                .map(|(vm, how)| format!("{vm} ({how})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    t.say(format!(
        "{} passed, {} failed",
        t.passed.len(),
        t.failed.len()
    ));
    if args.keep || args.work_dir.is_some() {
        if let Some(dir) = tmp {
            let _ = dir.keep();
        }
        t.say(format!("work directory kept: {}", work.display()));
    } else {
        drop(tmp);
        t.say("cleaned up the work directory");
    }
    Ok(if t.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The pid of `vm`'s service, if it was ever started (its start command records it).
fn service_pid(logs: &Path, vm: &str) -> Option<i32> {
    std::fs::read_to_string(logs.join(format!("{vm}.service.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` runs (a zombie does not count: it only waits for its parent).
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// State and parent pid from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; the fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// `pid` and all its descendants, parents before children.
fn process_tree(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                && let Some((_, ppid)) = proc_stat(p)
            {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut at = 0;
    while at < tree.len() {
        let parent = tree[at];
        tree.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(p, _)| *p),
        );
        at += 1;
    }
    tree
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// Stop VM services (`(vm, pid)`): SIGTERM, which powers the guest off; for those still running
/// after `first` (`up` says whether the VM still is), a second SIGTERM, on which the service kills
/// its VMM; after `second`, SIGKILL for the service and every process under it (the VMM, the
/// vsock backend), so nothing outlives the demo. Returns the VMs that needed more than the first
/// SIGTERM, with what it took.
fn stop_services(
    services: &[(String, i32)],
    up: impl Fn(&str) -> bool,
    first: Duration,
    second: Duration,
) -> Vec<(String, &'static str)> {
    use nix::sys::signal::Signal;
    let running = |list: &[(String, i32)]| -> Vec<(String, i32)> {
        list.iter()
            .filter(|(vm, pid)| alive(*pid) || up(vm))
            .cloned()
            .collect()
    };
    for (_, pid) in running(services) {
        if alive(pid) {
            signal(pid, Signal::SIGTERM);
        }
    }
    wait_for(|| running(services).is_empty(), first);
    let slow = running(services);
    for (vm, pid) in &slow {
        if alive(*pid) {
            tracing::warn!(vm = %vm, pid, "VM service still running; asking again");
            signal(*pid, Signal::SIGTERM);
        }
    }
    wait_for(|| running(&slow).is_empty(), second);
    let stuck = running(&slow);
    // A service that is gone but left its runtime dir has nothing left to kill (and its pid may
    // belong to someone else by now).
    for (vm, pid) in stuck.iter().filter(|(_, pid)| alive(*pid)) {
        let tree = process_tree(*pid);
        tracing::warn!(vm = %vm, ?tree, "VM service does not stop; killing it and its children");
        // Stop them all first, so none reacts to another's death, then kill.
        for p in &tree {
            signal(*p, Signal::SIGSTOP);
        }
        for p in tree.iter().rev() {
            signal(*p, Signal::SIGKILL);
        }
        wait_for(|| tree.iter().all(|p| !alive(*p)), Duration::from_secs(5));
    }
    slow.into_iter()
        .map(|(vm, pid)| {
            let how = if stuck.iter().any(|(_, p)| *p == pid) {
                "killed with its children"
            } else {
                "stopped on a second SIGTERM"
            };
            (vm, how)
        })
        .collect()
}

fn sh(p: &Path) -> String {
    crate::crosvm::shell_quote(&p.to_string_lossy())
}

/// The user-visible part: what a person would do with vmsilo, checked step by step.
fn scenario(
    t: &mut Transcript,
    bins: &Bins,
    paths: &Paths,
    addresses: &[(String, Option<String>)],
    idle: u64,
) -> Result<()> {
    let online: Vec<(&str, &str)> = addresses
        .iter()
        .filter_map(|(n, a)| a.as_deref().map(|a| (n.as_str(), a)))
        .collect();
    let offline: Vec<&str> = addresses
        .iter()
        .filter(|(_, a)| a.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    let [(first, _), (second, second_addr), ..] = online.as_slice() else {
        bail!("the example needs two networked VMs");
    };

    t.check(
        &format!("{first} is stopped before anything asks for it"),
        !vm_up(paths, first),
        "it is already running",
    );
    let (out, took) = vm_run(bins, paths, &[first, "--", "uname", "-sr"], None)?;
    show(
        t,
        &format!("vm-run {first} -- uname -sr        # {first} is stopped: it starts on demand"),
        &out,
        took,
    );
    t.check(
        &format!("vm-run started {first} on demand and returned the command's output"),
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("Linux "),
        format!("status {}", out.status),
    );
    t.check(
        &format!("{first}'s VM service is running"),
        vm_up(paths, first),
        "no runtime directory",
    );

    let (out, took) = vm_run(
        bins,
        paths,
        &[
            first,
            "--",
            "sh",
            "-c",
            "echo \"hello from $(hostname)\"; echo to-stderr >&2; exit 3",
        ],
        None,
    )?;
    show(
        t,
        &format!(
            "vm-run {first} -- sh -c 'echo \"hello from $(hostname)\"; echo to-stderr >&2; exit 3'"
        ),
        &out,
        took,
    );
    t.check(
        "stdout, stderr and the exit code come back separately",
        out.status.code() == Some(3)
            && String::from_utf8_lossy(&out.stdout).trim() == format!("hello from {first}")
            && String::from_utf8_lossy(&out.stderr).contains("to-stderr"),
        format!("status {}", out.status),
    );

    let (out, took) = vm_run(
        bins,
        paths,
        &[first, "--", "tr", "a-z", "A-Z"],
        Some(b"typed on the host\n"),
    )?;
    show(
        t,
        &format!("echo 'typed on the host' | vm-run {first} -- tr a-z A-Z"),
        &out,
        took,
    );
    t.check(
        "stdin reaches the guest program",
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "TYPED ON THE HOST",
        format!("status {}", out.status),
    );

    let (out, took) = vm_run(
        bins,
        paths,
        &[second, "--", "ip", "-4", "-o", "addr", "show", "lan"],
        None,
    )?;
    show(
        t,
        &format!("vm-run {second} -- ip -4 -o addr show lan      # starts {second}"),
        &out,
        took,
    );
    t.check(
        &format!("{second} started on demand with its interface named from the config"),
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(second_addr),
        format!("status {}", out.status),
    );

    let (out, took) = vm_run(
        bins,
        paths,
        &[first, "--", "ping", "-c", "3", "-W", "5", second_addr],
        None,
    )?;
    show(
        t,
        &format!("vm-run {first} -- ping -c 3 {second_addr}     # across vm-switch"),
        &out,
        took,
    );
    t.check(
        &format!("{first} reaches {second} through vm-switch"),
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("3 packets received"),
        format!("status {}", out.status),
    );

    if let Some(lonely) = offline.first() {
        let (out, took) = vm_run(
            bins,
            paths,
            &[lonely, "--", "sh", "-c", "ls /sys/class/net"],
            None,
        )?;
        show(
            t,
            &format!("vm-run {lonely} -- ls /sys/class/net        # {lonely} is offline"),
            &out,
            took,
        );
        t.check(
            &format!("{lonely} has no network interface but loopback"),
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .eq(["lo"]),
            format!("status {}", out.status),
        );
    }

    t.say(format!(
        "waiting for auto-shutdown ({idle} s after the last command)..."
    ));
    let waited = Instant::now();
    let all: Vec<&str> = addresses.iter().map(|(n, _)| n.as_str()).collect();
    let down = wait_for(
        || all.iter().all(|vm| !vm_up(paths, vm)),
        Duration::from_secs(idle * 4 + 60),
    );
    t.check(
        &format!(
            "every VM powered itself off after {idle} s idle ({:.1} s after the last command)",
            waited.elapsed().as_secs_f64()
        ),
        down,
        "a VM is still running",
    );

    let (out, took) = vm_run(bins, paths, &[first, "--", "true"], None)?;
    show(
        t,
        &format!("vm-run {first} -- true          # {first} was shut down: it starts again"),
        &out,
        took,
    );
    t.check(
        &format!("{first} starts again on the next vm-run"),
        out.status.success(),
        format!("status {}", out.status),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn auto_accelerator_matches_the_vm_service_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        let modules = dir.path().join("module");
        std::fs::create_dir(&modules).unwrap();
        let auto = || choose_accel(DemoAccel::Auto, &kvm, &modules);
        let (accel, why) = auto();
        assert_eq!(accel, Accel::Tcg);
        assert!(why.starts_with("TCG: there is no "), "{why}");
        std::fs::write(&kvm, b"").unwrap();
        let (accel, why) = auto();
        assert_eq!(accel, Accel::detect(&kvm, &modules));
        assert!(
            why.starts_with("KVM: ") && why.contains("usable hardware KVM"),
            "{why}"
        );
        std::fs::create_dir(modules.join("kvm_pvm")).unwrap();
        let (accel, why) = auto();
        assert_eq!(accel, Accel::detect(&kvm, &modules));
        assert!(why.starts_with("TCG: ") && why.contains("KVM-PVM"), "{why}");
        assert_eq!(
            choose_accel(DemoAccel::Kvm, &kvm, &modules),
            (Accel::Kvm, "KVM (--accel kvm)".to_owned())
        );
    }

    /// A "service" that ignores SIGTERM, with a child that does too (a QEMU stuck before its main
    /// loop): both are gone after `stop_services`, and the VM is reported.
    #[test]
    fn stop_services_kills_a_stuck_service_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let child_pid = dir.path().join("child");
        let mut service = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '' TERM; sleep 300 & echo $! > {}; exec sleep 300",
                child_pid.display()
            ))
            .spawn()
            .unwrap();
        assert!(wait_for(|| child_pid.exists(), Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(100));
        let grandchild: i32 = std::fs::read_to_string(&child_pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = i32::try_from(service.id()).unwrap();
        assert!(alive(pid) && alive(grandchild));
        assert!(process_tree(pid).contains(&grandchild));
        let begun = Instant::now();
        let stubborn = stop_services(
            &[("stuck".to_owned(), pid)],
            |_| false,
            Duration::from_millis(500),
            Duration::from_millis(500),
        );
        assert!(begun.elapsed() < Duration::from_secs(5));
        assert_eq!(stubborn, [("stuck".to_owned(), "killed with its children")]);
        assert!(!alive(pid), "service killed");
        assert!(!alive(grandchild), "its child killed too");
        service.wait().unwrap();
    }

    #[test]
    fn stop_services_leaves_a_well_behaved_service_alone_after_one_sigterm() {
        let mut service = Command::new("sleep").arg("300").spawn().unwrap();
        let pid = i32::try_from(service.id()).unwrap();
        let stubborn = stop_services(
            &[("fine".to_owned(), pid)],
            |_| false,
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
        assert!(stubborn.is_empty(), "{stubborn:?}");
        assert!(!service.wait().unwrap().success(), "ended by SIGTERM");
    }
}
