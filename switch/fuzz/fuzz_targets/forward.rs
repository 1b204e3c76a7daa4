//! Fuzz the guest-facing parsing and forwarding core: any frame a guest can send goes through
//! offload header validation, classification (validation, proxy ARP/ND, routing) and, for the
//! receiving side, checksum completion / segmentation. Nothing may panic, and a forwarded frame
//! must carry the sender's MAC. Run: `cargo +nightly fuzz run forward` in `switch/fuzz`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vm_switch::forward::{Forwarder, Verdict};
use vm_switch::offload::{self, Offloads};
use vm_switch::peer::PeerConfig;

fn peer(json: &str) -> PeerConfig {
    PeerConfig::from_json(Path::new("fuzz"), json).expect("static peer config")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Peer files are hostile input too.
    if mode == 0xff {
        if let Ok(text) = std::str::from_utf8(rest) {
            let _ = PeerConfig::from_json(Path::new("/fuzz/x.json"), text);
        }
        return;
    }
    let make = || {
        let mut f = Forwarder::new(peer(
            r#"{"name":"a","mac":"52:54:00:00:00:0a","ipv4":["10.1.0.1/24"],"ipv6":["fd00::a/64"]}"#,
        ));
        f.upsert_peer(1, peer(r#"{"name":"b","mac":"52:54:00:00:00:0b","ipv4":["10.1.0.2/24"],"ipv6":["fd00::b/64"],"receiveBroadcast":true}"#));
        f.upsert_peer(2, peer(r#"{"name":"r","mac":"52:54:00:00:00:0c","ipv4":["10.1.0.254/24"],"routes":["0.0.0.0/0","::/0"]}"#));
        f
    };
    let mut f = make();
    let neg = Offloads {
        tx_csum: mode & 1 != 0,
        tx_tso4: mode & 2 != 0,
        tx_tso6: mode & 4 != 0,
        tx_ecn: mode & 8 != 0,
        rx_csum: mode & 16 != 0,
        rx_tso4: mode & 32 != 0,
        rx_tso6: mode & 64 != 0,
        rx_ecn: false,
    };
    let mut pkt = rest.to_vec();
    // Judging a frame from its first bytes (as the TX path does for large frames) must agree
    // with judging it whole.
    let cut = offload::HDR + vm_switch::forward::MIN_HEAD + usize::from(mode.rotate_left(3)) % 64;
    let mut head = rest[..cut.min(rest.len())].to_vec();
    let head_ok = rest.len() >= offload::HDR && offload::validate_head(&mut head, rest.len(), neg);
    if pkt.len() < offload::HDR || !offload::validate(&mut pkt, neg) {
        assert!(!head_ok);
        return;
    }
    assert!(head_ok);
    assert_eq!(head[..], pkt[..head.len()]);
    let mut g = make();
    let hv = g.classify_head(&mut head[offload::HDR..], pkt.len() - offload::HDR);
    let v = f.classify(&mut pkt[offload::HDR..]);
    assert_eq!(hv, v);
    assert_eq!(head[..], pkt[..head.len()]);
    match v {
        Verdict::Unicast(_) | Verdict::Broadcast => {
            assert_eq!(
                &pkt[offload::HDR + 6..offload::HDR + 12],
                &[0x52, 0x54, 0, 0, 0, 0x0a]
            );
            let _ = offload::adapt(pkt, Offloads::default());
        }
        Verdict::Reply(r) => assert!(r.len() >= 42),
        Verdict::Drop(_) => {}
    }
});
