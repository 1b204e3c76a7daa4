//! Ethernet/IPv4/UDP and ARP frames as the load generator's VMs send and receive them.
//!
//! Every generated frame is a valid IPv4/UDP datagram (correct IP header checksum, UDP checksum
//! 0 as IPv4 allows) so that an L3 switch that validates sources and routes by IP forwards it.
//! The first 16 payload bytes carry a [`Stamp`]: magic, kind, sending VM, sequence number and a
//! send timestamp, which is all the receiver needs to count frames and measure latency.

use std::net::Ipv4Addr;

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Offset of the UDP payload in our frames (Ethernet + IPv4 without options + UDP).
pub const PAYLOAD_OFFSET: usize = ETH_HLEN + 20 + 8;
/// Bytes of [`Stamp`] at the start of the payload.
pub const STAMP_LEN: usize = 16;
/// Smallest frame the generator builds: headers plus the stamp.
pub const MIN_FRAME: usize = PAYLOAD_OFFSET + STAMP_LEN;
/// Largest frame: a full 1500-byte IP MTU plus the Ethernet header.
pub const MAX_FRAME: usize = 1514;
/// Identifies our frames among anything else a backend might deliver.
pub const MAGIC: u16 = 0x564c;
/// UDP destination port of the bulk flows.
pub const BULK_PORT: u16 = 9000;
/// UDP destination port of the latency probes (a separate 5-tuple, so FQ-CoDel sees a new flow).
pub const PROBE_PORT: u16 = 9001;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;

/// One side of a flow: the VM's NIC MAC and IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The VM NIC's unicast MAC.
    pub mac: [u8; 6],
    /// The VM's IPv4 address.
    pub ip: Ipv4Addr,
}

/// What kind of frame a stamp marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Part of the saturating flow.
    Bulk,
    /// A timestamped latency probe of the sparse flow.
    Probe,
}

/// The generator's payload header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Bulk or probe.
    pub kind: Kind,
    /// Index of the sending VM.
    pub from: u8,
    /// Per-flow sequence number (probes only; bulk frames carry 0).
    pub seq: u32,
    /// Send time in ns since the process-wide epoch (probes only).
    pub sent_ns: u64,
}

/// Parse a MAC written as `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 1071 Internet checksum over `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Build an Ethernet/IPv4/UDP frame of exactly `size` bytes from `src` to `dst_ip` via
/// `dst_mac`. `size` is clamped to `MIN_FRAME..=MAX_FRAME`; the payload after the stamp is a
/// fixed byte pattern.
pub fn udp_frame(
    src: &Endpoint,
    dst_mac: [u8; 6],
    dst_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    size: usize,
    stamp: &Stamp,
) -> Vec<u8> {
    let size = size.clamp(MIN_FRAME, MAX_FRAME);
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src.mac);
    f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    let ip_len = (size - ETH_HLEN) as u16;
    let ip = &mut f[ETH_HLEN..ETH_HLEN + 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.ip.octets());
    ip[16..20].copy_from_slice(&dst_ip.octets());
    let csum = inet_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut f[ETH_HLEN + 20..PAYLOAD_OFFSET];
    udp[0..2].copy_from_slice(&src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    for (i, byte) in f[MIN_FRAME..].iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    write_stamp(&mut f, stamp);
    f
}

/// Write `stamp` into a frame built by [`udp_frame`] (in place, e.g. to re-stamp a probe).
pub fn write_stamp(frame: &mut [u8], stamp: &Stamp) {
    let s = &mut frame[PAYLOAD_OFFSET..MIN_FRAME];
    s[0..2].copy_from_slice(&MAGIC.to_be_bytes());
    s[2] = match stamp.kind {
        Kind::Bulk => 0,
        Kind::Probe => 1,
    };
    s[3] = stamp.from;
    s[4..8].copy_from_slice(&stamp.seq.to_be_bytes());
    s[8..16].copy_from_slice(&stamp.sent_ns.to_be_bytes());
}

/// The parts of a received frame the receiver checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src_ip: Ipv4Addr,
    /// IPv4 destination.
    pub dst_ip: Ipv4Addr,
    /// UDP destination port.
    pub dst_port: u16,
    /// The generator's stamp.
    pub stamp: Stamp,
}

/// Parse the first [`MIN_FRAME`] bytes of a received frame; `None` for anything that is not one
/// of ours (wrong ethertype, not UDP, bad IP checksum, no magic).
pub fn parse_udp(frame: &[u8]) -> Option<Received> {
    if frame.len() < MIN_FRAME
        || frame[12..14] != ETH_P_IPV4.to_be_bytes()
        || frame[ETH_HLEN] != 0x45
        || frame[ETH_HLEN + 9] != 17
        || inet_checksum(&frame[ETH_HLEN..ETH_HLEN + 20]) != 0
    {
        return None;
    }
    let s = &frame[PAYLOAD_OFFSET..MIN_FRAME];
    if s[0..2] != MAGIC.to_be_bytes() {
        return None;
    }
    let kind = match s[2] {
        0 => Kind::Bulk,
        1 => Kind::Probe,
        _ => return None,
    };
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[0..6]);
    let ip4 = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    Some(Received {
        dst_mac,
        src_ip: ip4(ETH_HLEN + 12),
        dst_ip: ip4(ETH_HLEN + 16),
        dst_port: u16::from_be_bytes([frame[ETH_HLEN + 22], frame[ETH_HLEN + 23]]),
        stamp: Stamp {
            kind,
            from: s[3],
            seq: u32::from_be_bytes([s[4], s[5], s[6], s[7]]),
            sent_ns: u64::from_be_bytes([s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]]),
        },
    })
}

/// A broadcast ARP request from `src` asking who has `target`.
pub fn arp_request(src: &Endpoint, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&src.mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    let a = &mut f[ETH_HLEN..ETH_HLEN + 28];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    a[2..4].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    a[8..14].copy_from_slice(&src.mac);
    a[14..18].copy_from_slice(&src.ip.octets());
    a[24..28].copy_from_slice(&target.octets());
    f
}

/// If `frame` is an ARP reply saying `target` is at some MAC, that MAC.
pub fn parse_arp_reply(frame: &[u8], target: Ipv4Addr) -> Option<[u8; 6]> {
    if frame.len() < ETH_HLEN + 28 || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let a = &frame[ETH_HLEN..ETH_HLEN + 28];
    if a[6..8] != 2u16.to_be_bytes() || a[14..18] != target.octets() {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&a[8..14]);
    Some(mac)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: Endpoint = Endpoint {
        mac: [0x52, 0x54, 0, 0, 0, 0x0a],
        ip: Ipv4Addr::new(10, 9, 0, 1),
    };

    #[test]
    fn udp_frame_round_trips_and_has_valid_ip_checksum() {
        let stamp = Stamp {
            kind: Kind::Probe,
            from: 3,
            seq: 77,
            sent_ns: 123_456_789,
        };
        let dst = [0x52, 0x54, 0, 0, 0, 0x0b];
        for size in [MIN_FRAME, 64, 1514] {
            let f = udp_frame(
                &A,
                dst,
                Ipv4Addr::new(10, 9, 0, 2),
                40000,
                PROBE_PORT,
                size,
                &stamp,
            );
            assert_eq!(f.len(), size);
            assert_eq!(inet_checksum(&f[ETH_HLEN..ETH_HLEN + 20]), 0);
            assert_eq!(
                u16::from_be_bytes([f[ETH_HLEN + 2], f[ETH_HLEN + 3]]) as usize,
                size - ETH_HLEN
            );
            let r = parse_udp(&f).unwrap();
            assert_eq!(r.dst_mac, dst);
            assert_eq!(r.src_ip, A.ip);
            assert_eq!(r.dst_ip, Ipv4Addr::new(10, 9, 0, 2));
            assert_eq!(r.dst_port, PROBE_PORT);
            assert_eq!(r.stamp, stamp);
        }
    }

    #[test]
    fn parse_rejects_corrupted_frames() {
        let stamp = Stamp {
            kind: Kind::Bulk,
            from: 0,
            seq: 0,
            sent_ns: 0,
        };
        let f = udp_frame(&A, [1; 6], Ipv4Addr::new(10, 9, 0, 2), 1, 2, 64, &stamp);
        let mut bad_csum = f.clone();
        bad_csum[ETH_HLEN + 8] ^= 1;
        assert!(parse_udp(&bad_csum).is_none());
        let mut bad_magic = f.clone();
        bad_magic[PAYLOAD_OFFSET] ^= 1;
        assert!(parse_udp(&bad_magic).is_none());
        assert!(parse_udp(&f[..MIN_FRAME - 1]).is_none());
        assert!(parse_udp(&arp_request(&A, Ipv4Addr::new(10, 9, 0, 2))).is_none());
    }

    #[test]
    fn arp_reply_is_recognised_only_for_the_target() {
        let mut reply = arp_request(&A, Ipv4Addr::new(10, 9, 0, 2));
        reply[ETH_HLEN + 7] = 2;
        reply[ETH_HLEN + 8..ETH_HLEN + 14].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        reply[ETH_HLEN + 14..ETH_HLEN + 18].copy_from_slice(&[10, 9, 0, 2]);
        assert_eq!(
            parse_arp_reply(&reply, Ipv4Addr::new(10, 9, 0, 2)),
            Some([2, 0, 0, 0, 0, 9])
        );
        assert_eq!(parse_arp_reply(&reply, Ipv4Addr::new(10, 9, 0, 3)), None);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("52:54:00:00:00:0a"), Some(A.mac));
        assert_eq!(format_mac(&A.mac), "52:54:00:00:00:0a");
        assert_eq!(parse_mac("52:54:00:00:00"), None);
        assert_eq!(parse_mac("52:54:00:00:00:0a:01"), None);
        assert_eq!(parse_mac("52:54:00:00:00:zz"), None);
    }
}
