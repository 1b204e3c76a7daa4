//! Byte-level Ethernet, ARP, IPv4, IPv6 and ICMPv6 helpers.
//!
//! Every accessor bounds-checks: frames come from guests and are hostile.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::peer::MacAddr;

/// Ethernet header length (no VLAN tag).
pub const ETH_HLEN: usize = 14;
/// EtherType for IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType for ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType for IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 next-header value of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 neighbour solicitation.
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 neighbour advertisement.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;

/// Read a big-endian u16 at `off`, if in bounds.
pub fn be16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

/// The six bytes at `off` as a MAC, if in bounds.
pub fn mac_at(f: &[u8], off: usize) -> Option<MacAddr> {
    let b = f.get(off..off + 6)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(b);
    Some(MacAddr(m))
}

/// IPv4 address at `off`.
pub fn ipv4_at(f: &[u8], off: usize) -> Option<Ipv4Addr> {
    let b = f.get(off..off + 4)?;
    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// IPv6 address at `off`.
pub fn ipv6_at(f: &[u8], off: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = f.get(off..off + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// Ones'-complement sum of `data` folded into 32 bits (not yet complemented).
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Fold and complement a running sum into the Internet checksum.
pub fn csum_finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Build an ARP reply to `request` saying `target_ip` is at `answer_mac`.
///
/// `request` must already have been checked to be an Ethernet/IPv4 ARP request.
pub fn arp_reply(request: &[u8], answer_mac: MacAddr) -> Option<Vec<u8>> {
    let a = request.get(ETH_HLEN..ETH_HLEN + 28)?;
    let sender_mac = &a[8..14];
    let sender_ip = &a[14..18];
    let target_ip = &a[24..28];
    let mut out = Vec::with_capacity(60);
    out.extend_from_slice(sender_mac); // eth dst
    out.extend_from_slice(&answer_mac.0); // eth src
    out.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]); // htype, ptype, hlen, plen, op=reply
    out.extend_from_slice(&answer_mac.0);
    out.extend_from_slice(target_ip);
    out.extend_from_slice(sender_mac);
    out.extend_from_slice(sender_ip);
    out.resize(60, 0); // minimum Ethernet payload
    Some(out)
}

/// Build a neighbour advertisement answering a solicitation from `(req_mac, req_ip)` for
/// `target` at `answer_mac`. An unspecified `req_ip` (DAD) gets an all-nodes advert.
pub fn neighbor_advert(
    req_mac: MacAddr,
    req_ip: Ipv6Addr,
    target: Ipv6Addr,
    answer_mac: MacAddr,
) -> Vec<u8> {
    let (dst_mac, dst_ip, solicited) = if req_ip.is_unspecified() {
        (
            MacAddr([0x33, 0x33, 0, 0, 0, 1]),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            false,
        )
    } else {
        (req_mac, req_ip, true)
    };
    let mut icmp = Vec::with_capacity(32);
    icmp.push(ND_NEIGHBOR_ADVERT);
    icmp.push(0);
    icmp.extend_from_slice(&[0, 0]); // checksum
    let flags: u8 = if solicited { 0x60 } else { 0x20 }; // S|O or O (not a router)
    icmp.extend_from_slice(&[flags, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address option, 8 bytes
    icmp.extend_from_slice(&answer_mac.0);
    let sum = icmpv6_pseudo_sum(target, dst_ip, icmp.len() as u32);
    let c = csum_finish(csum_add(sum, &icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());

    let mut out = Vec::with_capacity(ETH_HLEN + 40 + icmp.len());
    out.extend_from_slice(&dst_mac.0);
    out.extend_from_slice(&answer_mac.0);
    out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    out.push(IPPROTO_ICMPV6);
    out.push(255);
    out.extend_from_slice(&target.octets());
    out.extend_from_slice(&dst_ip.octets());
    out.extend_from_slice(&icmp);
    out
}

/// Partial checksum of the IPv6 pseudo header for ICMPv6.
pub fn icmpv6_pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, len: u32) -> u32 {
    let mut s = csum_add(0, &src.octets());
    s = csum_add(s, &dst.octets());
    s = csum_add(s, &len.to_be_bytes());
    csum_add(s, &[0, 0, 0, IPPROTO_ICMPV6])
}

/// A 5-tuple hash key of an IP frame (addresses, protocol, ports), for FQ-CoDel flow
/// classification; non-IP frames hash on their MAC header.
pub fn flow_hash(frame: &[u8], seed: u64) -> u64 {
    // FNV-1a over the tuple bytes, seeded; fast and good enough for bucket spreading.
    let mut h: u64 = 0xcbf29ce484222325 ^ seed;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    match be16(frame, 12) {
        Some(ETH_P_IPV4) => {
            let ip = &frame[ETH_HLEN..];
            let ihl = usize::from(ip.first().copied().unwrap_or(0) & 0x0f) * 4;
            let proto = ip.get(9).copied().unwrap_or(0);
            eat(ip.get(12..20).unwrap_or(&[]));
            eat(&[proto]);
            if matches!(proto, IPPROTO_TCP | IPPROTO_UDP) {
                eat(ip.get(ihl..ihl + 4).unwrap_or(&[]));
            }
        }
        Some(ETH_P_IPV6) => {
            let ip = &frame[ETH_HLEN..];
            let proto = ip.get(6).copied().unwrap_or(0);
            eat(ip.get(8..40).unwrap_or(&[]));
            eat(&[proto]);
            if matches!(proto, IPPROTO_TCP | IPPROTO_UDP) {
                eat(ip.get(40..44).unwrap_or(&[]));
            }
        }
        _ => eat(frame.get(..ETH_HLEN).unwrap_or(frame)),
    }
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checksum_known_vector() {
        // RFC 1071 example bytes.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(csum_finish(csum_add(0, &data)), !0xddf2);
    }

    #[test]
    fn neighbor_advert_checksum_verifies() {
        let na = neighbor_advert(
            MacAddr([2, 0, 0, 0, 0, 1]),
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 2]),
        );
        let icmp = &na[ETH_HLEN + 40..];
        let sum = icmpv6_pseudo_sum(
            "fd00::2".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            icmp.len() as u32,
        );
        assert_eq!(csum_finish(csum_add(sum, icmp)), 0);
    }

    #[test]
    fn flow_hash_separates_ports() {
        let mut a = vec![0u8; 60];
        a[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        a[14] = 0x45;
        a[23] = IPPROTO_UDP;
        let mut b = a.clone();
        b[34] = 1;
        assert_ne!(flow_hash(&a, 1), flow_hash(&b, 1));
        assert_eq!(flow_hash(&a, 1), flow_hash(&a.clone(), 1));
    }
}
