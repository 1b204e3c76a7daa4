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
    let flags = switch_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    SwitchProcess::start(net, &flags)
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

    // b receives broadcast, c does not; both answer broadcast pings if they get them.
    let b_script = r#"
        echo 0 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts
        vt_done_wait 5999 600
    "#;
    // c (first boot): wait for a's go, then send one spoofed and one genuine datagram to a.
    let c1_script = r#"
        echo 0 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts
        vt_done_wait 5998 300 || exit 1
        vt_ping 10.1.0.1 2 0.2 || exit 1
        ip addr add 10.1.0.2/32 dev eth0
        echo SPOOF | nc -u -s 10.1.0.2 -w 1 10.1.0.1 7000
        ip addr del 10.1.0.2/32 dev eth0
        sleep 1
        echo LEGIT | nc -u -w 1 10.1.0.1 7000
        vt_done_signal 10.1.0.1 5999
    "#;
    // c (after "reboot"): a fresh QEMU on the same socket.
    let c2_script = r#"
        vt_wait_peer 10.1.0.1 120 || exit 1
        vt_ping 10.1.0.1 3 0.2
    "#;
    let a_script = r#"
        nc -u -l -p 7000 > /tmp/udp 2>/dev/null &
        vt_wait_peer 10.1.0.2 180 || exit 1
        vt_wait_peer 10.1.0.3 180 || exit 1
        ping -b -c 3 -W 3 10.1.0.255 > /tmp/bc 2>&1
        echo "BCAST from_b=$(grep -c 'from 10.1.0.2' /tmp/bc) from_c=$(grep -c 'from 10.1.0.3' /tmp/bc)"
        vt_done_signal 10.1.0.3 5998 || exit 1
        vt_done_wait 5999 300 || exit 1
        sleep 1
        echo "UDP_GOT $(tr '\n' ' ' < /tmp/udp)"
        echo "REBOOT_WINDOW_START"
        vt_ping 10.1.0.2 60 0.5
        vt_wait_peer 10.1.0.3 300 || exit 1
        echo "REBOOTED_PEER_UP"
        vt_ping 10.1.0.3 3 0.2 || exit 1
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

    // Broadcast reached b (who answered) and not c.
    let from_b: u32 = ra.field("BCAST", "from_b").unwrap().parse().unwrap();
    let from_c: u32 = ra.field("BCAST", "from_c").unwrap().parse().unwrap();
    assert!(from_b >= 1, "b never saw the broadcast: {:?}", ra.lines);
    assert_eq!(from_c, 0, "c received broadcast without receiveBroadcast");
    // The spoofed datagram was dropped; the genuine one arrived.
    let udp = ra.tagged("UDP_GOT").join(" ");
    assert!(udp.contains("LEGIT"), "genuine datagram lost: {udp}");
    assert!(!udp.contains("SPOOF"), "spoofed datagram delivered: {udp}");
    assert!(log.contains("spoofed_ip="), "counters not logged:\n{log}");
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
