//! vm-switch end to end: real QEMU guests (TCG here) on the real `vm-switch` binary.
//!
//! Needs qemu-system-x86, busybox-static, a Debian kernel and iperf3 (see
//! `../shared/vmtest/README.md`). Guests boot in parallel on a shared 2-core machine, so
//! timeouts are generous.

#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vmsilo_tests::switch::{PeerSpec, SwitchProcess, boot_guest};

const A_MAC: &str = "52:54:00:5e:00:0a";
const B_MAC: &str = "52:54:00:5e:00:0b";
const C_MAC: &str = "52:54:00:5e:00:0c";

/// Extra switch flags for the e2e runs (`VM_SWITCH_E2E_FLAGS`, space separated), e.g. to run
/// with `--no-sandbox` where user namespaces are unavailable.
fn switch_flags() -> Vec<String> {
    std::env::var("VM_SWITCH_E2E_FLAGS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn start_switch(net: &str) -> SwitchProcess {
    start_switch_env(net, &[])
}

fn start_switch_env(net: &str, env: &[(&str, &str)]) -> SwitchProcess {
    let flags = switch_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    SwitchProcess::start_with_env(net, &flags, env)
}

#[test]
fn two_guests_ping_both_ways_and_transfer_a_file_intact() {
    let sw = start_switch("pair");
    sw.add_peer(&PeerSpec::new("a", A_MAC, "10.1.0.1/24"));
    sw.add_peer(&PeerSpec::new("b", B_MAC, "10.1.0.2/24"));
    sw.wait_socket("a");
    sw.wait_socket("b");

    let b_script = r#"
        rm -f /tmp/in; mkfifo /tmp/in; sleep 100000 > /tmp/in & sp=$!
        while :; do nc -l -p 5001 < /tmp/in > /tmp/recv; [ -s /tmp/recv ] && break; done
        kill $sp
        echo "RECV_SUM sum=$(md5sum < /tmp/recv | cut -d' ' -f1) bytes=$(wc -c < /tmp/recv)"
        vt_ping 10.1.0.1 5 0.2 || exit 1
        vt_done_signal 10.1.0.1 5999
    "#;
    let a_script = r#"
        vt_wait_peer 10.1.0.2 120 || exit 1
        vt_ping 10.1.0.2 5 0.2 || exit 1
        dd if=/dev/urandom of=/tmp/f bs=65536 count=64 2>/dev/null
        echo "SENT_SUM sum=$(md5sum < /tmp/f | cut -d' ' -f1) bytes=$(wc -c < /tmp/f)"
        until printf '' | nc -w 1 10.1.0.2 5001 2>/dev/null; do sleep 0.2; done
        sleep 0.5
        nc -w 5 10.1.0.2 5001 < /tmp/f
        vt_done_wait 5999 180
    "#;
    let b = boot_guest("sw-b", &sw.socket("b"), "10.1.0.2/24", B_MAC, b_script, 400);
    let a = boot_guest("sw-a", &sw.socket("a"), "10.1.0.1/24", A_MAC, a_script, 400);
    let (ra, rb) = (a.wait(), b.wait());
    let log = sw.log_text();
    assert_eq!(ra.code, 0, "guest a: {:#?}\nswitch log:\n{log}", ra.lines);
    assert_eq!(rb.code, 0, "guest b: {:#?}\nswitch log:\n{log}", rb.lines);
    assert_eq!(
        ra.field("PING_OK", "loss_pct").as_deref(),
        Some("0"),
        "{:?}",
        ra.lines
    );
    assert_eq!(
        rb.field("PING_OK", "loss_pct").as_deref(),
        Some("0"),
        "{:?}",
        rb.lines
    );
    let sent = ra.field("SENT_SUM", "sum").unwrap();
    assert_eq!(
        rb.field("RECV_SUM", "sum"),
        Some(sent),
        "file corrupted in transit"
    );
    assert_eq!(rb.field("RECV_SUM", "bytes").as_deref(), Some("4194304"));
}

#[test]
fn broadcast_only_to_receivers_spoofing_dropped_and_reboot_reconnects() {
    let mut sw = start_switch("trio");
    sw.add_peer(&PeerSpec::new("a", A_MAC, "10.1.0.1/24"));
    sw.add_peer(&PeerSpec {
        receive_broadcast: true,
        ..PeerSpec::new("b", B_MAC, "10.1.0.2/24")
    });
    sw.add_peer(&PeerSpec::new("c", C_MAC, "10.1.0.3/24"));
    for vm in ["a", "b", "c"] {
        sw.wait_socket(vm);
    }

    // Broadcast: a sends DHCP discovers (0.0.0.0 -> 255.255.255.255, UDP); a receiver without a
    // DHCP server counts them in the kernel's Udp IgnoredMulti counter.
    let b_script = r#"
        vt_done_wait 5999 600 || exit 1
        echo "BCAST_RX n=$(awk '/^Udp:/ { if (h) print $9; h = 1 }' /proc/net/snmp)"
    "#;
    // c (first boot): on a's go, ping a twice for real, then three times from b's address.
    let c1_script = r#"
        vt_done_wait 5998 300 || exit 1
        echo "BCAST_RX n=$(awk '/^Udp:/ { if (h) print $9; h = 1 }' /proc/net/snmp)"
        vt_ping 10.1.0.1 2 0.2 || exit 1
        ip addr add 10.1.0.2/32 dev eth0
        ping -c 3 -i 0.2 -W 2 -I 10.1.0.2 10.1.0.1 > /dev/null 2>&1
        ip addr del 10.1.0.2/32 dev eth0
        vt_done_signal 10.1.0.1 5999
    "#;
    // c (after "reboot"): a fresh QEMU on the same socket.
    let c2_script = r#"
        vt_wait_peer 10.1.0.1 120 || exit 1
        vt_ping 10.1.0.1 3 0.2 || exit 1
        vt_done_wait 5997 300
    "#;
    let a_script = r#"
        echos() { awk '/^Icmp:/ { if (h) print $10; h = 1 }' /proc/net/snmp; }
        vt_wait_peer 10.1.0.2 180 || exit 1
        vt_wait_peer 10.1.0.3 180 || exit 1
        udhcpc -i eth0 -n -q -t 3 -T 1 -s /bin/true > /dev/null 2>&1
        e0=$(echos)
        vt_done_signal 10.1.0.3 5998 || exit 1
        vt_done_wait 5999 300 || exit 1
        echo "ECHOS_FROM_C n=$(( $(echos) - e0 ))"
        echo "REBOOT_WINDOW_START"
        vt_ping 10.1.0.2 60 0.5
        vt_wait_peer 10.1.0.3 300 || exit 1
        echo "REBOOTED_PEER_UP"
        vt_ping 10.1.0.3 3 0.2 || exit 1
        vt_done_signal 10.1.0.3 5997
        vt_done_signal 10.1.0.2 5999
    "#;
    let b = boot_guest(
        "sw-b3",
        &sw.socket("b"),
        "10.1.0.2/24",
        B_MAC,
        b_script,
        900,
    );
    let c1 = boot_guest(
        "sw-c3",
        &sw.socket("c"),
        "10.1.0.3/24",
        C_MAC,
        c1_script,
        600,
    );
    let a = boot_guest(
        "sw-a3",
        &sw.socket("a"),
        "10.1.0.1/24",
        A_MAC,
        a_script,
        900,
    );

    let titles = {
        let t = Instant::now();
        loop {
            let titles = sw.child_titles();
            if titles.len() == 3 || t.elapsed() > Duration::from_secs(30) {
                break titles;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for vm in ["a", "b", "c"] {
        assert!(
            titles
                .iter()
                .any(|t| t == &format!("vm-switch(trio): {vm}")),
            "no child titled for {vm}: {titles:?}"
        );
    }

    let rc1 = c1.wait();
    assert_eq!(
        rc1.code,
        0,
        "first boot of c: {:#?}\n{}",
        rc1.lines,
        sw.log_text()
    );
    // "Reboot": a new QEMU for c connects to the same socket while a keeps pinging b.
    let c2 = boot_guest(
        "sw-c3b",
        &sw.socket("c"),
        "10.1.0.3/24",
        C_MAC,
        c2_script,
        600,
    );
    let rc2 = c2.wait();
    let ra = a.wait();
    let rb = b.wait();
    let log = sw.log_text();
    assert!(sw.alive(), "vm-switch main process died; log:\n{log}");
    assert_eq!(ra.code, 0, "guest a: {:#?}\nswitch log:\n{log}", ra.lines);
    assert_eq!(rb.code, 0, "guest b: {:#?}", rb.lines);
    assert_eq!(
        rc2.code, 0,
        "rebooted c: {:#?}\nswitch log:\n{log}",
        rc2.lines
    );

    // The discovers reached b (receiveBroadcast) and not c.
    let b_rx: u32 = rb.field("BCAST_RX", "n").unwrap().parse().unwrap();
    let c_rx: u32 = rc1.field("BCAST_RX", "n").unwrap().parse().unwrap();
    assert!(b_rx >= 1, "b never saw the broadcast: {:?}", rb.lines);
    assert_eq!(c_rx, 0, "c received broadcast without receiveBroadcast");
    // Of c's five pings, only the two with its own source reached a.
    assert_eq!(
        ra.field("ECHOS_FROM_C", "n").as_deref(),
        Some("2"),
        "spoofed pings delivered? {:?}",
        ra.lines
    );
    assert!(
        log.lines().any(|l| l.contains("vm=c")
            && l.contains("spoofed_ip=")
            && !l.contains("spoofed_ip=0 ")),
        "c's spoofed frames not counted:\n{log}"
    );
    // a↔b kept working while c rebooted (no loss over 60 pings at 0.5 s).
    let loss: Vec<String> = ra
        .tagged("PING_OK")
        .iter()
        .filter(|l| l.contains("peer=10.1.0.2"))
        .map(|l| l.to_string())
        .collect();
    assert!(
        loss.iter()
            .any(|l| l.contains("tx=60") && l.contains("loss_pct=0")),
        "a↔b disturbed during c's reboot: {loss:?}"
    );
    assert!(
        ra.tagged("PING_OK")
            .iter()
            .any(|l| l.contains("peer=10.1.0.3")),
        "rebooted c not reachable: {:?}",
        ra.lines
    );
}

#[test]
fn a_forbidden_syscall_kills_only_that_child_and_the_peer_comes_back() {
    // c's first child calls socket() on its first guest frame; seccomp (kill) must end that
    // child alone, main must fork a new one, and QEMU's reconnect must land on it.
    let mut sw = start_switch_env("jail", &[("VM_SWITCH_TEST_SECCOMP_PROBE", "c")]);
    sw.add_peer(&PeerSpec::new("a", A_MAC, "10.1.0.1/24"));
    sw.add_peer(&PeerSpec::new("b", B_MAC, "10.1.0.2/24"));
    sw.add_peer(&PeerSpec::new("c", C_MAC, "10.1.0.3/24"));
    for vm in ["a", "b", "c"] {
        sw.wait_socket(vm);
    }
    let a_script = r#"
        vt_wait_peer 10.1.0.2 180 || exit 1
        vt_ping 10.1.0.2 40 0.5 > /tmp/pb &
        pp=$!
        vt_wait_peer 10.1.0.3 300 || exit 1
        vt_ping 10.1.0.3 3 0.2 || exit 1
        wait $pp; cat /tmp/pb
        vt_done_signal 10.1.0.2 5999
        vt_done_signal 10.1.0.3 5999
    "#;
    let wait_script = "vt_done_wait 5999 600";
    let b = boot_guest(
        "sw-bj",
        &sw.socket("b"),
        "10.1.0.2/24",
        B_MAC,
        wait_script,
        900,
    );
    let c = boot_guest(
        "sw-cj",
        &sw.socket("c"),
        "10.1.0.3/24",
        C_MAC,
        wait_script,
        900,
    );
    let a = boot_guest(
        "sw-aj",
        &sw.socket("a"),
        "10.1.0.1/24",
        A_MAC,
        a_script,
        900,
    );
    let (ra, rb, rc) = (a.wait(), b.wait(), c.wait());
    let log = sw.log_text();
    assert!(sw.alive(), "main died:\n{log}");
    assert_eq!(ra.code, 0, "guest a: {:#?}\nswitch log:\n{log}", ra.lines);
    assert_eq!(rb.code, 0, "guest b: {:#?}", rb.lines);
    assert_eq!(rc.code, 0, "guest c: {:#?}\nswitch log:\n{log}", rc.lines);
    let died: Vec<&str> = log.lines().filter(|l| l.contains("child died")).collect();
    assert!(
        died.iter()
            .any(|l| l.contains("vm=c") && l.contains("SIGSYS")),
        "c's child was not killed by seccomp:\n{log}"
    );
    assert!(
        died.iter().all(|l| l.contains("vm=c")),
        "another child died:\n{log}"
    );
    assert!(
        ra.tagged("PING_OK")
            .iter()
            .any(|l| l.contains("peer=10.1.0.2") && l.contains("loss_pct=0")),
        "a↔b disturbed: {:?}",
        ra.lines
    );
}
