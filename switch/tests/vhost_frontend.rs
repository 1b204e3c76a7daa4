//! vm-switch through its real vhost-user interface, driven by our own frontend (no QEMU):
//! forwarding, proxy ARP, spoof drops, hostile descriptor chains, and a seccomp violation that
//! kills one child while the others keep forwarding.

#![allow(clippy::unwrap_used)]

#[path = "support/vfront.rs"]
mod vfront;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfront::{GuestMem, Port, Vring, connect, parse_udp_frame, udp_frame};

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
const MAC_C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0c];
const QSIZE: u16 = 64;
const BUF: usize = 2048;

struct Switch {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Switch {
    fn start(env: &[(&str, &str)]) -> Switch {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        std::fs::create_dir(&dir).unwrap();
        for (n, mac, ip) in [
            ("a", "52:54:00:00:00:0a", "10.1.0.1/24"),
            ("b", "52:54:00:00:00:0b", "10.1.0.2/24"),
            ("c", "52:54:00:00:00:0c", "10.1.0.3/24"),
        ] {
            std::fs::write(
                dir.join(format!("{n}.json")),
                format!(r#"{{"name":"{n}","mac":"{mac}","ipv4":["{ip}"]}}"#),
            )
            .unwrap();
        }
        let log = tmp.path().join("switch.log");
        let child = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
            .args(["--name", "fe", "--log-level", "info", "--config-dir"])
            .arg(&dir)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Switch {
            child,
            dir,
            log,
            _tmp: tmp,
        }
    }

    fn sock(&self, vm: &str) -> PathBuf {
        self.dir.join(format!("{vm}.sock"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Vm {
    mem: GuestMem,
    port: Port,
}

fn vm(sock: &Path) -> Vm {
    let mem = GuestMem::new(4 << 20);
    let fe = connect(sock, Duration::from_secs(20));
    let port = Port::setup(fe, &mem, 0, QSIZE, BUF);
    Vm { mem, port }
}

fn send(v: &mut Vm, n: usize, src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], seq0: u64) -> usize {
    let mut seq = seq0;
    let mut sent = 0;
    let t = Instant::now();
    while sent < n && t.elapsed() < Duration::from_secs(10) {
        sent += v.port.send_burst(&v.mem, n - sent, &mut |buf| {
            seq += 1;
            udp_frame(buf, 100, src_mac, [0xff; 6], src, dst, 4000, seq, 0)
        });
    }
    sent
}

/// Receive for up to `wait`, returning the frames (Ethernet, no vnet header).
fn recv_for(v: &mut Vm, wait: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let t = Instant::now();
    while t.elapsed() < wait {
        v.port.recv(&v.mem, &mut |f| out.push(f.to_vec()));
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

fn arp_request(buf: &mut [u8], mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> usize {
    buf[..60].fill(0);
    buf[..6].copy_from_slice(&[0xff; 6]);
    buf[6..12].copy_from_slice(&mac);
    buf[12..14].copy_from_slice(&[8, 6]);
    buf[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    buf[22..28].copy_from_slice(&mac);
    buf[28..32].copy_from_slice(&sender);
    buf[38..42].copy_from_slice(&target);
    60
}

#[test]
fn frames_are_switched_validated_and_answered() {
    let sw = Switch::start(&[]);
    let mut a = vm(&sw.sock("a"));
    let mut b = vm(&sw.sock("b"));
    // Give main time to hand out the rings between the two children.
    std::thread::sleep(Duration::from_millis(300));

    assert_eq!(send(&mut a, 50, MAC_A, [10, 1, 0, 1], [10, 1, 0, 2], 0), 50);
    let got = recv_for(&mut b, Duration::from_millis(800));
    assert_eq!(got.len(), 50, "log:\n{}", sw.log());
    for (i, f) in got.iter().enumerate() {
        assert_eq!(&f[..6], &MAC_B, "destination MAC rewritten to b's");
        assert_eq!(&f[6..12], &MAC_A);
        assert_eq!(parse_udp_frame(f).unwrap().0, i as u64 + 1, "in order");
    }

    // Spoofed IP and spoofed MAC: dropped.
    send(&mut a, 10, MAC_A, [10, 1, 0, 3], [10, 1, 0, 2], 100);
    send(&mut a, 10, MAC_C, [10, 1, 0, 1], [10, 1, 0, 2], 200);
    assert!(recv_for(&mut b, Duration::from_millis(400)).is_empty());
    // ... and reported at the default log level, naming the VM.
    let log = sw.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("vm=a")
            && l.contains("source MAC or IP is not its own")),
        "{log}"
    );

    // Proxy ARP: a asks for b, gets b's MAC from the switch.
    a.port.send_burst(&a.mem, 1, &mut |buf| {
        arp_request(buf, MAC_A, [10, 1, 0, 1], [10, 1, 0, 2])
    });
    let replies = recv_for(&mut a, Duration::from_millis(400));
    assert_eq!(replies.len(), 1, "one ARP reply");
    let r = &replies[0];
    assert_eq!(&r[12..14], &[8, 6]);
    assert_eq!(&r[20..22], &[0, 2], "ARP reply");
    assert_eq!(&r[22..28], &MAC_B);
    assert!(
        recv_for(&mut b, Duration::from_millis(100)).is_empty(),
        "ARP never flooded"
    );
}

#[test]
fn hostile_descriptor_chains_do_not_hurt_the_switch_or_other_peers() {
    let sw = Switch::start(&[]);
    let mut a = vm(&sw.sock("a"));
    let mut b = vm(&sw.sock("b"));
    let mut c = vm(&sw.sock("c"));
    std::thread::sleep(Duration::from_millis(300));

    // c posts garbage TX chains: outside guest memory, zero length, a self-loop, huge length,
    // a bogus head index, and an RX ring of zero-sized buffers.
    let mem = &c.mem;
    let tx = &mut c.port.tx;
    let bad: [(u64, u32, u16, u16); 5] = [
        (1 << 40, 1500, 0, 0),              // far outside memory
        (tx.buf(1) as u64, 0, 0, 0),        // zero length
        (tx.buf(2) as u64, 100, 1, 2),      // NEXT flag pointing at itself
        (tx.buf(3) as u64, u32::MAX, 0, 0), // 4 GiB
        ((4 << 20) - 10, 1500, 0, 0),       // straddles the end of memory
    ];
    let mut heads = Vec::new();
    for (k, (addr, len, flags, next)) in bad.iter().enumerate() {
        let i = k as u16 + 1;
        let next = if *next == 2 { i } else { *next };
        mem.put_desc(tx.desc, i, *addr, *len, *flags, next);
        heads.push(i);
    }
    heads.push(QSIZE + 7); // head index beyond the table
    for h in heads {
        let slot = usize::from(tx.next_avail % tx.size);
        mem.write(tx.avail + 4 + 2 * slot, &h.to_le_bytes());
        tx.next_avail = tx.next_avail.wrapping_add(1);
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    mem.write(tx.avail + 2, &tx.next_avail.to_le_bytes());
    let _ = tx.kick.write(1);
    std::thread::sleep(Duration::from_millis(300));

    // a and b still talk.
    assert_eq!(send(&mut a, 30, MAC_A, [10, 1, 0, 1], [10, 1, 0, 2], 0), 30);
    assert_eq!(
        recv_for(&mut b, Duration::from_millis(800)).len(),
        30,
        "log:\n{}",
        sw.log()
    );
    // No child died.
    assert!(!sw.log().contains("child died"), "log:\n{}", sw.log());
    // A garbage frame stream from a valid buffer (random bytes) is dropped, not delivered.
    let mut x: u32 = 12345;
    b.port.send_burst(&b.mem, 40, &mut |buf| {
        for byte in buf[..200].iter_mut() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *byte = (x >> 16) as u8;
        }
        buf[6..12].copy_from_slice(&MAC_B); // even with the right source MAC
        200
    });
    assert!(recv_for(&mut a, Duration::from_millis(300)).is_empty());
    assert!(!sw.log().contains("child died"), "log:\n{}", sw.log());
    drop(c);
}

#[test]
fn a_seccomp_violation_kills_only_that_child_and_the_peer_reconnects() {
    let sw = Switch::start(&[("VM_SWITCH_TEST_SECCOMP_PROBE", "c")]);
    let mut a = vm(&sw.sock("a"));
    let mut b = vm(&sw.sock("b"));
    let mut c = vm(&sw.sock("c"));
    std::thread::sleep(Duration::from_millis(300));
    // c's first frame makes its child call socket(): killed by seccomp.
    send(&mut c, 1, MAC_C, [10, 1, 0, 3], [10, 1, 0, 1], 0);
    let t = Instant::now();
    while !sw.log().contains("SIGSYS") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no SIGSYS:\n{}",
            sw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // a and b are untouched.
    assert_eq!(send(&mut a, 20, MAC_A, [10, 1, 0, 1], [10, 1, 0, 2], 0), 20);
    assert_eq!(recv_for(&mut b, Duration::from_millis(600)).len(), 20);
    // c's VMM reconnects (as QEMU does) and lands on a fresh child.
    drop(c);
    let mut c = vm(&sw.sock("c"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(send(&mut c, 10, MAC_C, [10, 1, 0, 3], [10, 1, 0, 1], 0), 10);
    assert_eq!(
        recv_for(&mut a, Duration::from_millis(600)).len(),
        10,
        "log:\n{}",
        sw.log()
    );
    let died = sw
        .log()
        .lines()
        .filter(|l| l.contains("child died"))
        .count();
    assert_eq!(died, 1, "only c's first child died:\n{}", sw.log());
    let _ = Vring::footprint(QSIZE, BUF);
}

#[test]
fn crosvm_rules_mq_config_mac_event_idx_and_any_queue_size() {
    use vhost::VhostBackend;
    use vhost::vhost_user::VhostUserFrontend;
    use vhost::vhost_user::message::{
        VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    };
    let sw = Switch::start(&[]);
    let mut fe = connect(&sw.sock("a"), Duration::from_secs(20));
    fe.set_owner().unwrap();
    let feats = fe.get_features().unwrap();
    for bit in [32u32, 29, 15, 5, 0, 1, 7, 11] {
        // VERSION_1, EVENT_IDX, MRG_RXBUF, MAC, CSUM, GUEST_CSUM, GUEST_TSO4, HOST_TSO4
        assert!(
            feats & (1 << bit) != 0,
            "feature bit {bit} not offered: {feats:#x}"
        );
    }
    assert!(feats & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
    let pf = fe.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG));
    fe.set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG)
        .unwrap();
    assert_eq!(
        fe.get_queue_num().unwrap(),
        2,
        "one RX/TX pair, not crosvm's default of 3"
    );
    let (_, mac) = fe
        .get_config(0, 6, VhostUserConfigFlags::WRITABLE, &[0u8; 6])
        .unwrap();
    assert_eq!(mac, MAC_A.to_vec(), "MAC readable through GET_CONFIG");
    drop(fe);

    // A VMM that picks 1024-entry queues on one side and 256 on the other is served.
    let t = Instant::now();
    // The first connection above ended that child; main forks a fresh one for this one.
    let mem = GuestMem::new(16 << 20);
    let fe = connect(&sw.sock("a"), Duration::from_secs(20));
    let port = Port::setup(fe, &mem, 0, 1024, BUF);
    let mut a = Vm { mem, port };
    let mut b = vm(&sw.sock("b"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        send(&mut a, 500, MAC_A, [10, 1, 0, 1], [10, 1, 0, 2], 0),
        500
    );
    let mut got = 0;
    while got < 500 && t.elapsed() < Duration::from_secs(20) {
        got += recv_for(&mut b, Duration::from_millis(100)).len();
    }
    assert_eq!(got, 500, "log:\n{}", sw.log());
}

#[test]
fn many_peers_at_once_exchange_rings_only_once_their_vms_connect() {
    // 120 peer files before start-up, as after a restart of the switch: brokering rings between
    // children whose VMs are not connected used to pile up ~43k descriptors in flight and hit
    // the kernel's per-user limit (ETOOMANYREFS), losing rings.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..120u8 {
        std::fs::write(
            dir.join(format!("p{i:03}.json")),
            format!(
                r#"{{"name":"p{i:03}","mac":"52:54:00:00:01:{i:02x}","ipv4":["10.2.0.{}/24"]}}"#,
                i + 1
            ),
        )
        .unwrap();
    }
    let log = tmp.path().join("switch.log");
    let child = Command::new(env!("CARGO_BIN_EXE_vm-switch"))
        .args(["--name", "many", "--log-level", "info", "--config-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let sw = Switch {
        child,
        dir,
        log,
        _tmp: tmp,
    };
    let t = Instant::now();
    while !(0..120).all(|i| sw.sock(&format!("p{i:03}")).exists()) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "sockets missing; log:\n{}",
            sw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mac = |i: u8| [0x52, 0x54, 0, 0, 1, i];
    let mut a = vm(&sw.sock("p007"));
    let mut b = vm(&sw.sock("p099"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        send(&mut a, 20, mac(7), [10, 2, 0, 8], [10, 2, 0, 100], 0),
        20
    );
    assert_eq!(
        send(&mut b, 20, mac(99), [10, 2, 0, 100], [10, 2, 0, 8], 0),
        20
    );
    let got_b = recv_for(&mut b, Duration::from_millis(800));
    let got_a = recv_for(&mut a, Duration::from_millis(300));
    let log = sw.log();
    assert_eq!((got_a.len(), got_b.len()), (20, 20), "log:\n{log}");
    for bad in [
        "cannot pass ring",
        "cannot send BufferReady",
        "ERROR",
        "WARN",
    ] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
}

#[test]
fn warnings_inside_the_sandbox_name_the_real_config_path() {
    let sw = Switch::start(&[]);
    let _a = vm(&sw.sock("a"));
    std::fs::write(sw.dir.join("zz.json"), "{ not json").unwrap();
    let real = sw.dir.join("zz.json").display().to_string();
    let t = Instant::now();
    while !sw.log().contains(&real) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{real} not named; log:\n{}",
            sw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !sw.log().contains("/config/"),
        "sandbox path leaked:\n{}",
        sw.log()
    );
}

#[test]
fn absolute_links_inside_the_config_directory_work_in_the_sandbox() {
    let sw = Switch::start(&[]);
    let sub = sw.dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("d.json"),
        r#"{"name":"d","mac":"52:54:00:00:00:0d","ipv4":["10.1.0.4/24"]}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink(sub.join("d.json"), sw.dir.join("d.json")).unwrap();
    let outside = sw.dir.parent().unwrap().join("o.json");
    std::fs::write(
        &outside,
        r#"{"name":"o","mac":"52:54:00:00:00:0e","ipv4":["10.1.0.5/24"]}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, sw.dir.join("o.json")).unwrap();
    let t = Instant::now();
    while !(sw.sock("d").exists() && sw.log().contains("outside the config directory")) {
        assert!(t.elapsed() < Duration::from_secs(15), "log:\n{}", sw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = sw.log();
    let line = log
        .lines()
        .find(|l| l.contains("outside the config directory"))
        .unwrap();
    assert!(
        line.contains(&sw.dir.join("o.json").display().to_string()),
        "{line}"
    );
    assert!(!sw.sock("o").exists());
}
