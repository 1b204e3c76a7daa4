//! Checksum and TCP segmentation offload between guests.
//!
//! Frames travel between children with their `virtio_net_hdr_v1`. A sender that negotiated
//! `CSUM`/`HOST_TSO*` may hand over a frame with a partial checksum or a 64 KiB TCP super-frame;
//! it is passed to the receiving guest whole when that guest negotiated the matching
//! `GUEST_CSUM`/`GUEST_TSO*` feature (the common case: no per-segment work at all). Otherwise the
//! receiving child completes the checksum or segments the frame in software.
//!
//! Headers come from hostile guests: [`validate`] checks them on the sending side, and
//! segmentation re-checks every offset it uses.

use crate::frame::{self, ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`.
pub const GSO_ECN: u8 = 0x80;
/// Length of `virtio_net_hdr_v1`.
pub const HDR: usize = 12;

/// The fields of `virtio_net_hdr_v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// NEEDS_CSUM / DATA_VALID.
    pub flags: u8,
    /// GSO type (+ ECN bit).
    pub gso_type: u8,
    /// Length of the headers to replicate per segment.
    pub hdr_len: u16,
    /// Segment payload size (MSS).
    pub gso_size: u16,
    /// Where checksumming starts (from the Ethernet header).
    pub csum_start: u16,
    /// Where the checksum goes, relative to `csum_start`.
    pub csum_offset: u16,
    /// Buffers used (mergeable RX only).
    pub num_buffers: u16,
}

impl VnetHdr {
    /// Parse the header at the start of `pkt` (callers guarantee `pkt.len() >= HDR`).
    pub fn parse(pkt: &[u8]) -> VnetHdr {
        let u = |o: usize| u16::from_le_bytes([pkt[o], pkt[o + 1]]);
        VnetHdr {
            flags: pkt[0],
            gso_type: pkt[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }

    /// Serialize into the first 12 bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        out[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
    }
}

/// Offload features a guest negotiated, as the datapath needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// The guest may send partial checksums (`CSUM`).
    pub tx_csum: bool,
    /// The guest may send TCPv4 GSO frames (`HOST_TSO4`).
    pub tx_tso4: bool,
    /// The guest may send TCPv6 GSO frames (`HOST_TSO6`).
    pub tx_tso6: bool,
    /// The guest may send ECN-marked GSO frames (`HOST_ECN`).
    pub tx_ecn: bool,
    /// The guest accepts partial checksums (`GUEST_CSUM`).
    pub rx_csum: bool,
    /// The guest accepts TCPv4 GSO frames (`GUEST_TSO4`).
    pub rx_tso4: bool,
    /// The guest accepts TCPv6 GSO frames (`GUEST_TSO6`).
    pub rx_tso6: bool,
    /// The guest accepts ECN GSO frames (`GUEST_ECN`).
    pub rx_ecn: bool,
}

/// Where the TCP header of a frame starts, if it is IPv4/IPv6 (no extension headers) + TCP.
fn tcp_offset(f: &[u8]) -> Option<(usize, bool)> {
    match frame::be16(f, 12)? {
        ETH_P_IPV4 => {
            let ihl = usize::from(*f.get(ETH_HLEN)? & 0x0f) * 4;
            (ihl >= 20 && *f.get(ETH_HLEN + 9)? == IPPROTO_TCP).then_some((ETH_HLEN + ihl, true))
        }
        ETH_P_IPV6 => (*f.get(ETH_HLEN + 6)? == IPPROTO_TCP).then_some((ETH_HLEN + 40, false)),
        _ => None,
    }
}

/// Check (and normalise) the header of a frame a guest transmitted, given what it negotiated.
/// Returns false when the frame must be dropped.
pub fn validate(pkt: &mut [u8], neg: Offloads) -> bool {
    let total = pkt.len();
    validate_head(pkt, total, neg)
}

/// [`validate`] from the first bytes of a frame of `total` bytes (virtio-net header included);
/// `pkt` must be the whole frame or hold at least the Ethernet, IP and TCP headers.
pub fn validate_head(pkt: &mut [u8], total: usize, neg: Offloads) -> bool {
    if pkt.len() < HDR + ETH_HLEN || total < pkt.len() {
        return false;
    }
    let flen = total - HDR;
    let mut h = VnetHdr::parse(pkt);
    h.num_buffers = 0;
    h.flags &= F_NEEDS_CSUM; // DATA_VALID is meaningless on TX
    let f = &pkt[HDR..];
    if h.flags & F_NEEDS_CSUM != 0 {
        let start = usize::from(h.csum_start);
        if !neg.tx_csum || start + usize::from(h.csum_offset) + 2 > flen || start < ETH_HLEN {
            return false;
        }
    } else {
        h.csum_start = 0;
        h.csum_offset = 0;
    }
    let ecn = h.gso_type & GSO_ECN != 0;
    match h.gso_type & !GSO_ECN {
        GSO_NONE if !ecn => {
            h.gso_size = 0;
            h.hdr_len = 0;
        }
        t @ (GSO_TCPV4 | GSO_TCPV6) => {
            let allowed = if t == GSO_TCPV4 {
                neg.tx_tso4
            } else {
                neg.tx_tso6
            };
            let Some((l4, v4)) = tcp_offset(f) else {
                return false;
            };
            if !allowed
                || (ecn && !neg.tx_ecn)
                || v4 != (t == GSO_TCPV4)
                || h.flags & F_NEEDS_CSUM == 0
                || h.gso_size == 0
                || usize::from(h.csum_start) != l4
                || h.csum_offset != 16
                || l4 + 20 > flen
            {
                return false;
            }
        }
        _ => return false,
    }
    h.write(pkt);
    true
}

/// Complete a partial checksum in software (`NEEDS_CSUM` for a guest without `GUEST_CSUM`).
pub fn finish_checksum(pkt: &mut [u8]) -> bool {
    let mut h = VnetHdr::parse(pkt);
    let f = &mut pkt[HDR..];
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > f.len() {
        return false;
    }
    let c = frame::csum_finish(frame::csum_add(0, &f[start..]));
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    h.flags &= !F_NEEDS_CSUM;
    h.write(pkt);
    true
}

/// Split a TCP GSO frame into MSS-sized frames with full checksums and plain headers.
pub fn segment(pkt: &[u8]) -> Option<Vec<Vec<u8>>> {
    let h = VnetHdr::parse(pkt);
    let f = pkt.get(HDR..)?;
    let (l4, v4) = tcp_offset(f)?;
    let doff = usize::from(*f.get(l4 + 12)? >> 4) * 4;
    let hl = l4 + doff;
    if doff < 20 || hl > f.len() {
        return None;
    }
    let mss = usize::from(h.gso_size);
    if mss == 0 {
        return None;
    }
    let payload = &f[hl..];
    let seq0 = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().ok()?);
    let id0 = if v4 { frame::be16(f, ETH_HLEN + 4)? } else { 0 };
    let flags0 = f[l4 + 13];
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(mss).collect()
    };
    let n = chunks.len();
    let mut out = Vec::with_capacity(n);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut s = Vec::with_capacity(HDR + hl + chunk.len());
        s.extend_from_slice(&[0u8; HDR]);
        s.extend_from_slice(&f[..hl]);
        s.extend_from_slice(chunk);
        let g = &mut s[HDR..];
        let total = g.len();
        if v4 {
            let ip_len = (total - ETH_HLEN) as u16;
            g[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&ip_len.to_be_bytes());
            g[ETH_HLEN + 4..ETH_HLEN + 6]
                .copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            g[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
            let c = frame::csum_finish(frame::csum_add(0, &g[ETH_HLEN..l4]));
            g[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            let pl = (total - ETH_HLEN - 40) as u16;
            g[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&pl.to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        g[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut fl = flags0;
        if i + 1 < n {
            fl &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        if i > 0 {
            fl &= !0x80; // CWR only on the first
        }
        g[l4 + 13] = fl;
        g[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let tcp_len = (total - l4) as u32;
        let mut sum = if v4 {
            let mut s = frame::csum_add(0, &g[ETH_HLEN + 12..ETH_HLEN + 20]);
            s = frame::csum_add(s, &[0, IPPROTO_TCP]);
            frame::csum_add(s, &(tcp_len as u16).to_be_bytes())
        } else {
            let mut s = frame::csum_add(0, &g[ETH_HLEN + 8..ETH_HLEN + 40]);
            s = frame::csum_add(s, &tcp_len.to_be_bytes());
            frame::csum_add(s, &[0, 0, 0, IPPROTO_TCP])
        };
        sum = frame::csum_add(sum, &g[l4..]);
        let c = frame::csum_finish(sum);
        g[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        out.push(s);
    }
    Some(out)
}

/// What a receiving guest gets for one frame from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Adapted {
    /// The frame (possibly checksummed in place) as is.
    AsIs,
    /// These frames instead (software segmentation).
    Segments(Vec<Vec<u8>>),
    /// Nothing: the frame is malformed.
    Drop,
}

/// Whether [`adapt_in_place`] would hand this frame (given its virtio-net header) to a guest
/// with offloads `neg` unchanged, so it can be copied straight from the ring into the guest.
pub fn passes_unchanged(hdr: &[u8], neg: Offloads) -> bool {
    if hdr.len() < HDR {
        return false;
    }
    let h = VnetHdr::parse(hdr);
    let ecn = h.gso_type & GSO_ECN != 0;
    match h.gso_type & !GSO_ECN {
        GSO_NONE => h.flags & F_NEEDS_CSUM == 0 || neg.rx_csum,
        t => {
            (match t {
                GSO_TCPV4 => neg.rx_tso4,
                GSO_TCPV6 => neg.rx_tso6,
                _ => false,
            }) && (!ecn || neg.rx_ecn)
                && neg.rx_csum
        }
    }
}

/// In-place variant of [`adapt`] for the delivery path: no copy unless segmenting.
pub fn adapt_in_place(pkt: &mut [u8], neg: Offloads) -> Adapted {
    if pkt.len() < HDR + ETH_HLEN {
        return Adapted::Drop;
    }
    let h = VnetHdr::parse(pkt);
    let ecn = h.gso_type & GSO_ECN != 0;
    match h.gso_type & !GSO_ECN {
        GSO_NONE => {
            if h.flags & F_NEEDS_CSUM != 0 && !neg.rx_csum && !finish_checksum(pkt) {
                return Adapted::Drop;
            }
            Adapted::AsIs
        }
        t => {
            let ok = match t {
                GSO_TCPV4 => neg.rx_tso4,
                GSO_TCPV6 => neg.rx_tso6,
                _ => false,
            } && (!ecn || neg.rx_ecn)
                && neg.rx_csum;
            if ok {
                Adapted::AsIs
            } else {
                match segment(pkt) {
                    Some(v) => Adapted::Segments(v),
                    None => Adapted::Drop,
                }
            }
        }
    }
}

/// Make a frame from a peer acceptable to a guest with offloads `neg`: unchanged when the
/// guest takes it as is, else checksummed or segmented. `None` = drop.
pub fn adapt(pkt: Vec<u8>, neg: Offloads) -> Option<Vec<Vec<u8>>> {
    if pkt.len() < HDR + ETH_HLEN {
        return None;
    }
    let h = VnetHdr::parse(&pkt);
    let ecn = h.gso_type & GSO_ECN != 0;
    match h.gso_type & !GSO_ECN {
        GSO_NONE => {
            let mut pkt = pkt;
            if h.flags & F_NEEDS_CSUM != 0 && !neg.rx_csum && !finish_checksum(&mut pkt) {
                return None;
            }
            Some(vec![pkt])
        }
        t => {
            let ok = match t {
                GSO_TCPV4 => neg.rx_tso4,
                GSO_TCPV6 => neg.rx_tso6,
                _ => false,
            } && (!ecn || neg.rx_ecn)
                && neg.rx_csum;
            if ok { Some(vec![pkt]) } else { segment(&pkt) }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A TCP/IPv4 GSO frame as Linux hands it over: pseudo-header sum in the checksum field.
    fn gso_v4(payload: usize, mss: u16) -> Vec<u8> {
        let mut f = vec![0u8; HDR + ETH_HLEN + 20 + 20 + payload];
        let g = &mut f[HDR..];
        g[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ip = ETH_HLEN;
        g[ip] = 0x45;
        let tot = (20 + 20 + payload) as u16;
        g[ip + 2..ip + 4].copy_from_slice(&tot.to_be_bytes());
        g[ip + 4..ip + 6].copy_from_slice(&100u16.to_be_bytes());
        g[ip + 8] = 64;
        g[ip + 9] = IPPROTO_TCP;
        g[ip + 12..ip + 16].copy_from_slice(&[10, 1, 0, 1]);
        g[ip + 16..ip + 20].copy_from_slice(&[10, 1, 0, 2]);
        let l4 = ip + 20;
        g[l4 + 4..l4 + 8].copy_from_slice(&1000u32.to_be_bytes());
        g[l4 + 12] = 5 << 4;
        g[l4 + 13] = 0x18 | 0x01; // PSH ACK FIN
        for (i, b) in g[l4 + 20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: 16,
            num_buffers: 0,
        };
        h.write(&mut f);
        f
    }

    fn tcp_checksum_ok(seg: &[u8]) -> bool {
        let g = &seg[HDR..];
        let l4 = ETH_HLEN + 20;
        let tcp_len = (g.len() - l4) as u16;
        let mut s = frame::csum_add(0, &g[ETH_HLEN + 12..ETH_HLEN + 20]);
        s = frame::csum_add(s, &[0, IPPROTO_TCP]);
        s = frame::csum_add(s, &tcp_len.to_be_bytes());
        s = frame::csum_add(s, &g[l4..]);
        frame::csum_finish(s) == 0 && frame::csum_finish(frame::csum_add(0, &g[ETH_HLEN..l4])) == 0
    }

    #[test]
    fn passes_unchanged_is_exactly_when_adapt_leaves_the_frame_alone() {
        // Every combination of header kind and guest offloads: the zero-copy path may only be
        // taken when adapt_in_place would neither modify, segment nor drop the frame.
        let mut plain = gso_v4(100, 1448);
        VnetHdr {
            flags: 0,
            gso_type: GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 0,
            csum_offset: 0,
            num_buffers: 0,
        }
        .write(&mut plain);
        let mut partial = gso_v4(100, 1448);
        let mut h = VnetHdr::parse(&partial);
        h.gso_type = GSO_NONE;
        h.gso_size = 0;
        h.write(&mut partial);
        let mut ecn = gso_v4(3000, 1448);
        let mut h = VnetHdr::parse(&ecn);
        h.gso_type |= GSO_ECN;
        h.write(&mut ecn);
        let mut bogus = gso_v4(100, 1448);
        bogus[1] = 0x7f;
        let frames = [plain, partial, gso_v4(3000, 1448), ecn, bogus];
        for bits in 0u8..32 {
            let neg = Offloads {
                rx_csum: bits & 1 != 0,
                rx_tso4: bits & 2 != 0,
                rx_tso6: bits & 4 != 0,
                rx_ecn: bits & 8 != 0,
                tx_csum: bits & 16 != 0,
                ..Offloads::default()
            };
            for (k, f) in frames.iter().enumerate() {
                let mut copy = f.clone();
                let unchanged =
                    matches!(adapt_in_place(&mut copy, neg), Adapted::AsIs) && copy == *f;
                assert_eq!(
                    passes_unchanged(&f[..HDR], neg),
                    unchanged,
                    "frame {k}, offloads {neg:?}"
                );
            }
        }
    }

    #[test]
    fn validate_head_agrees_with_validate() {
        // Headers with offsets inside and beyond the copied head, for every offload set.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let r = next();
            let mut f = gso_v4(200 + (r % 3000) as usize, 1448);
            let h = VnetHdr {
                flags: (r >> 12) as u8 & 3,
                gso_type: [GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_TCPV4 | GSO_ECN, 9]
                    [(r >> 14) as usize % 5],
                hdr_len: 54,
                gso_size: [0, 1448][(r >> 17) as usize % 2],
                csum_start: [34, 54, 300, 3000][(r >> 18) as usize % 4],
                csum_offset: [16, 6, 500][(r >> 20) as usize % 3],
                num_buffers: 7,
            };
            h.write(&mut f);
            let neg = Offloads {
                tx_csum: r >> 22 & 1 != 0,
                tx_tso4: r >> 23 & 1 != 0,
                tx_tso6: r >> 24 & 1 != 0,
                tx_ecn: r >> 25 & 1 != 0,
                ..Offloads::default()
            };
            let mut whole = f.clone();
            let want = validate(&mut whole, neg);
            let cut = 140 + (r >> 26) as usize % 100;
            let mut head = f[..cut].to_vec();
            assert_eq!(
                validate_head(&mut head, f.len(), neg),
                want,
                "{h:?} {neg:?}"
            );
            if want {
                assert_eq!(head[..], whole[..cut], "same normalised header");
            }
        }
    }

    #[test]
    fn segmentation_produces_valid_mss_sized_segments() {
        let pkt = gso_v4(4000, 1448);
        let mut neg = Offloads {
            tx_csum: true,
            tx_tso4: true,
            ..Offloads::default()
        };
        let mut p2 = pkt.clone();
        assert!(validate(&mut p2, neg));
        let segs = adapt(pkt.clone(), Offloads::default()).unwrap();
        assert_eq!(segs.len(), 3);
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(VnetHdr::parse(s), VnetHdr::default());
            assert!(tcp_checksum_ok(s), "segment {i} checksum");
            let g = &s[HDR..];
            let seq = u32::from_be_bytes(g[38..42].try_into().unwrap());
            assert_eq!(seq, 1000 + 1448 * i as u32);
            let fin = g[47] & 1;
            assert_eq!(fin, u8::from(i == 2), "FIN only on the last");
            payload.extend_from_slice(&g[54..]);
        }
        assert_eq!(payload, pkt[HDR + 54..]);
        // A guest that takes TSO gets the frame whole.
        neg.rx_csum = true;
        neg.rx_tso4 = true;
        assert_eq!(adapt(pkt.clone(), neg).unwrap(), vec![pkt]);
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let neg = Offloads {
            tx_csum: true,
            tx_tso4: true,
            ..Offloads::default()
        };
        let mut p = gso_v4(100, 0);
        assert!(!validate(&mut p, neg), "gso_size 0");
        let mut p = gso_v4(100, 500);
        p[1] = GSO_TCPV6;
        assert!(!validate(&mut p, neg), "v6 GSO on a v4 frame");
        let mut p = gso_v4(100, 500);
        p[6..8].copy_from_slice(&60000u16.to_le_bytes());
        assert!(!validate(&mut p, neg), "csum_start out of range");
        let mut p = gso_v4(100, 500);
        assert!(!validate(&mut p, Offloads::default()), "TSO not negotiated");
        // Without offloads negotiated, a clean header passes and is normalised.
        let mut p = vec![0u8; HDR + 60];
        p[HDR + 12..HDR + 14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        p[10] = 7;
        assert!(validate(&mut p, Offloads::default()));
        assert_eq!(VnetHdr::parse(&p), VnetHdr::default());
    }

    #[test]
    fn checksum_completion_matches_a_full_checksum() {
        let mut pkt = gso_v4(700, 1448);
        // Make it a plain NEEDS_CSUM frame with the pseudo-header sum in place.
        pkt[1] = GSO_NONE;
        let g = &mut pkt[HDR..];
        let l4 = ETH_HLEN + 20;
        let mut s = frame::csum_add(0, &g[ETH_HLEN + 12..ETH_HLEN + 20]);
        s = frame::csum_add(s, &[0, IPPROTO_TCP]);
        s = frame::csum_add(s, &((g.len() - l4) as u16).to_be_bytes());
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        g[l4 + 16..l4 + 18].copy_from_slice(&(s as u16).to_be_bytes());
        let mut ip_ok = g.to_vec();
        let c = frame::csum_finish(frame::csum_add(0, &ip_ok[ETH_HLEN..l4]));
        ip_ok[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        g[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        let out = adapt(pkt, Offloads::default()).unwrap();
        assert_eq!(out.len(), 1);
        assert!(tcp_checksum_ok(&out[0]));
        assert_eq!(out[0][0] & F_NEEDS_CSUM, 0);
    }
}
