//! The pure forwarding core: validate a frame from one VM and decide where it goes.
//!
//! No I/O: the caller hands in an Ethernet frame (without the virtio-net header) and gets a
//! [`Verdict`]. Rules:
//! - the source MAC must be the peer's MAC; the source IP (IPv4, IPv6, ARP sender) must be one
//!   of its addresses or inside a route it advertises; otherwise the frame is dropped and counted;
//! - ARP requests and IPv6 neighbour solicitations for an address another peer owns are answered
//!   locally with that peer's MAC (proxy ARP / proxy ND); nothing is flooded;
//! - unicast IP goes to the peer whose address or advertised route is the longest match;
//! - broadcast, IPv4 multicast and IPv6 multicast go to the peers that asked for broadcast.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::frame::{self, ETH_HLEN, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6};
use crate::peer::{Cidr, MacAddr, PeerConfig};

/// Identifies a peer inside one child; assigned by the caller, stable while the peer exists.
pub type PeerSlot = u32;

/// Why a frame was not forwarded; also the index into [`Forwarder::drops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than a header it claims to have, or inconsistent lengths.
    Malformed = 0,
    /// Source MAC is not the peer's MAC.
    SpoofedMac,
    /// Source IP (or ARP sender IP) is not the peer's.
    SpoofedIp,
    /// No peer owns the destination.
    NoRoute,
    /// The longest match is the sender itself.
    Hairpin,
    /// EtherType we do not switch (VLAN, LLDP, ...).
    UnsupportedEtherType,
    /// ARP/ND traffic consumed locally (replies, announcements, unknown targets).
    LocalControl,
}

/// Number of [`DropReason`] variants.
pub const DROP_REASONS: usize = 7;

/// Every drop reason, in counter order.
pub const ALL_DROP_REASONS: [DropReason; DROP_REASONS] = [
    DropReason::Malformed,
    DropReason::SpoofedMac,
    DropReason::SpoofedIp,
    DropReason::NoRoute,
    DropReason::Hairpin,
    DropReason::UnsupportedEtherType,
    DropReason::LocalControl,
];

impl DropReason {
    /// Stable names for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::NoRoute => "no_route",
            DropReason::Hairpin => "hairpin",
            DropReason::UnsupportedEtherType => "unsupported_ethertype",
            DropReason::LocalControl => "local_control",
        }
    }
}

/// What to do with one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send this locally built frame back to the sender (proxy ARP/ND).
    Reply(Vec<u8>),
    /// Forward to this peer; the destination MAC has been rewritten to the peer's.
    Unicast(PeerSlot),
    /// Send to every broadcast-receiving peer except the sender.
    Broadcast,
    /// Do not forward.
    Drop(DropReason),
}

#[derive(Clone, Debug)]
struct Route {
    net: Cidr,
    /// `None` = the sender itself.
    owner: Option<PeerSlot>,
}

/// Per-VM forwarding state: the VM's own config, the other peers and the routing table.
#[derive(Debug)]
pub struct Forwarder {
    me: PeerConfig,
    peers: Vec<(PeerSlot, PeerConfig)>,
    routes: Vec<Route>,
    /// Drop counters indexed by [`DropReason`].
    pub drops: [u64; DROP_REASONS],
}

impl Forwarder {
    /// A forwarder for the VM described by `me`, with no other peers yet.
    pub fn new(me: PeerConfig) -> Self {
        let mut f = Forwarder {
            me,
            peers: Vec::new(),
            routes: Vec::new(),
            drops: [0; DROP_REASONS],
        };
        f.rebuild();
        f
    }

    /// This VM's config.
    pub fn me(&self) -> &PeerConfig {
        &self.me
    }

    /// Replace this VM's own config (its peer file changed).
    pub fn set_me(&mut self, me: PeerConfig) {
        self.me = me;
        self.rebuild();
    }

    /// Add or replace a peer.
    pub fn upsert_peer(&mut self, slot: PeerSlot, cfg: PeerConfig) {
        if let Some(p) = self.peers.iter_mut().find(|(s, _)| *s == slot) {
            p.1 = cfg;
        } else {
            self.peers.push((slot, cfg));
        }
        self.rebuild();
    }

    /// Remove a peer; frames to its addresses are then unroutable.
    pub fn remove_peer(&mut self, slot: PeerSlot) {
        self.peers.retain(|(s, _)| *s != slot);
        self.rebuild();
    }

    /// A peer's config.
    pub fn peer(&self, slot: PeerSlot) -> Option<&PeerConfig> {
        self.peers.iter().find(|(s, _)| *s == slot).map(|(_, c)| c)
    }

    /// Slots of peers that receive broadcast.
    pub fn broadcast_targets(&self) -> impl Iterator<Item = PeerSlot> + '_ {
        self.peers
            .iter()
            .filter(|(_, c)| c.receive_broadcast)
            .map(|(s, _)| *s)
    }

    fn rebuild(&mut self) {
        let mut routes = Vec::new();
        let mut add = |cfg: &PeerConfig, owner: Option<PeerSlot>| {
            for a in &cfg.ipv4 {
                routes.push(Route {
                    net: Cidr {
                        addr: a.addr,
                        len: 32,
                    },
                    owner,
                });
            }
            for a in &cfg.ipv6 {
                routes.push(Route {
                    net: Cidr {
                        addr: a.addr,
                        len: 128,
                    },
                    owner,
                });
            }
            for r in &cfg.routes {
                routes.push(Route { net: *r, owner });
            }
        };
        add(&self.me, None);
        for (slot, cfg) in &self.peers {
            add(cfg, Some(*slot));
        }
        // Longest prefix first; ties keep the sender first (it never forwards to itself), then
        // lower slots, so the choice is deterministic.
        routes.sort_by(|a, b| {
            b.net
                .len
                .cmp(&a.net.len)
                .then(a.owner.is_some().cmp(&b.owner.is_some()))
                .then(a.owner.cmp(&b.owner))
        });
        self.routes = routes;
    }

    /// Longest-prefix match; `Some(None)` means the sender itself owns the destination.
    pub fn lookup(&self, ip: IpAddr) -> Option<Option<PeerSlot>> {
        self.routes
            .iter()
            .find(|r| r.net.contains(ip))
            .map(|r| r.owner)
    }

    fn drop(&mut self, r: DropReason) -> Verdict {
        self.drops[r as usize] += 1;
        Verdict::Drop(r)
    }

    fn unicast_to(&mut self, frame: &mut [u8], ip: IpAddr) -> Verdict {
        match self.lookup(ip) {
            None => self.drop(DropReason::NoRoute),
            Some(None) => self.drop(DropReason::Hairpin),
            Some(Some(slot)) => {
                let Some(mac) = self.peer(slot).map(|p| p.mac) else {
                    return self.drop(DropReason::NoRoute);
                };
                frame[..6].copy_from_slice(&mac.0);
                Verdict::Unicast(slot)
            }
        }
    }

    /// Decide what to do with a frame the VM transmitted. The frame may be modified (destination
    /// MAC rewrite).
    pub fn classify(&mut self, frame: &mut [u8]) -> Verdict {
        let total = frame.len();
        self.classify_head(frame, total)
    }

    /// [`classify`](Self::classify) from the first bytes of a frame of `total` bytes: `head` is
    /// the whole frame or at least its first [`MIN_HEAD`] bytes, which hold every header the
    /// decision reads, so a large frame can be judged before its payload is copied anywhere.
    pub fn classify_head(&mut self, frame: &mut [u8], total: usize) -> Verdict {
        if total < ETH_HLEN
            || total < frame.len()
            || (total > frame.len() && frame.len() < MIN_HEAD)
        {
            return self.drop(DropReason::Malformed);
        }
        let src_mac = frame::mac_at(frame, 6).unwrap_or_default();
        if src_mac != self.me.mac {
            return self.drop(DropReason::SpoofedMac);
        }
        match frame::be16(frame, 12) {
            Some(ETH_P_ARP) => self.classify_arp(frame),
            Some(ETH_P_IPV4) => self.classify_ipv4(frame, total),
            Some(ETH_P_IPV6) => self.classify_ipv6(frame, total),
            _ => self.drop(DropReason::UnsupportedEtherType),
        }
    }

    fn classify_arp(&mut self, frame: &mut [u8]) -> Verdict {
        let Some(a) = frame.get(ETH_HLEN..ETH_HLEN + 28) else {
            return self.drop(DropReason::Malformed);
        };
        if a[0..6] != [0, 1, 8, 0, 6, 4] {
            return self.drop(DropReason::Malformed);
        }
        let op = u16::from_be_bytes([a[6], a[7]]);
        let sender_mac = frame::mac_at(a, 8).unwrap_or_default();
        let sender_ip = frame::ipv4_at(a, 14).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let target_ip = frame::ipv4_at(a, 24).unwrap_or(Ipv4Addr::UNSPECIFIED);
        if sender_mac != self.me.mac {
            return self.drop(DropReason::SpoofedMac);
        }
        if !sender_ip.is_unspecified() && !self.me.owns_source(IpAddr::V4(sender_ip)) {
            return self.drop(DropReason::SpoofedIp);
        }
        if op != 1 {
            return self.drop(DropReason::LocalControl);
        }
        match self.lookup(IpAddr::V4(target_ip)) {
            Some(Some(slot)) => {
                let Some(mac) = self.peer(slot).map(|p| p.mac) else {
                    return self.drop(DropReason::LocalControl);
                };
                match frame::arp_reply(frame, mac) {
                    Some(r) => Verdict::Reply(r),
                    None => self.drop(DropReason::Malformed),
                }
            }
            _ => self.drop(DropReason::LocalControl),
        }
    }

    fn is_v4_broadcast(&self, dst: Ipv4Addr) -> bool {
        dst.is_broadcast()
            || dst.is_multicast()
            || self.me.ipv4.iter().any(|c| c.broadcast_v4() == Some(dst))
    }

    fn classify_ipv4(&mut self, frame: &mut [u8], wire: usize) -> Verdict {
        let ip = &frame[ETH_HLEN..];
        let ip_len = wire - ETH_HLEN;
        if ip_len < 20 || ip[0] >> 4 != 4 {
            return self.drop(DropReason::Malformed);
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ihl < 20 || total < ihl || total > ip_len {
            return self.drop(DropReason::Malformed);
        }
        let src = frame::ipv4_at(ip, 12).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let dst = frame::ipv4_at(ip, 16).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let broadcast = self.is_v4_broadcast(dst);
        // 0.0.0.0 is only a valid source for broadcast (DHCP discovery).
        let src_ok = if src.is_unspecified() {
            broadcast
        } else {
            self.me.owns_source(IpAddr::V4(src))
        };
        if !src_ok {
            return self.drop(DropReason::SpoofedIp);
        }
        if broadcast {
            return Verdict::Broadcast;
        }
        self.unicast_to(frame, IpAddr::V4(dst))
    }

    fn classify_ipv6(&mut self, frame: &mut [u8], wire: usize) -> Verdict {
        let ip = &frame[ETH_HLEN..];
        let ip_len = wire - ETH_HLEN;
        if ip_len < 40 || ip[0] >> 4 != 6 {
            return self.drop(DropReason::Malformed);
        }
        let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        if 40 + payload > ip_len {
            return self.drop(DropReason::Malformed);
        }
        let next = ip[6];
        let src = frame::ipv6_at(ip, 8).unwrap_or(Ipv6Addr::UNSPECIFIED);
        let dst = frame::ipv6_at(ip, 24).unwrap_or(Ipv6Addr::UNSPECIFIED);
        let link_local = |a: Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
        let icmp_type = if next == frame::IPPROTO_ICMPV6 {
            ip.get(40).copied()
        } else {
            None
        };
        // Neighbour discovery, router solicitation and MLD stay on the link: answer NS for
        // other peers' addresses, consume the rest. Link-local and unspecified sources are
        // allowed only here.
        if let Some(t @ 130..=143) = icmp_type {
            let local_src_ok =
                src.is_unspecified() || link_local(src) || self.me.owns_source(IpAddr::V6(src));
            if !local_src_ok {
                return self.drop(DropReason::SpoofedIp);
            }
            if t == frame::ND_NEIGHBOR_SOLICIT {
                return self.answer_ns(frame, src);
            }
            if (133..=137).contains(&t) || dst.is_multicast() {
                return self.drop(DropReason::LocalControl);
            }
        }
        if link_local(src) || src.is_unspecified() {
            // Legitimate on the link (MLD behind a hop-by-hop header, mDNS, ...) but never
            // forwarded.
            return self.drop(DropReason::LocalControl);
        }
        if !self.me.owns_source(IpAddr::V6(src)) {
            return self.drop(DropReason::SpoofedIp);
        }
        if dst.is_multicast() {
            return Verdict::Broadcast;
        }
        if link_local(dst) {
            return self.drop(DropReason::NoRoute);
        }
        self.unicast_to(frame, IpAddr::V6(dst))
    }

    fn answer_ns(&mut self, frame: &[u8], src: Ipv6Addr) -> Verdict {
        let ip = &frame[ETH_HLEN..];
        let Some(target) = frame::ipv6_at(ip, 48) else {
            return self.drop(DropReason::Malformed);
        };
        if ip.get(7) != Some(&255) {
            return self.drop(DropReason::Malformed);
        }
        match self.lookup(IpAddr::V6(target)) {
            Some(Some(slot)) => {
                let Some(mac) = self.peer(slot).map(|p| p.mac) else {
                    return self.drop(DropReason::LocalControl);
                };
                Verdict::Reply(frame::neighbor_advert(self.me.mac, src, target, mac))
            }
            _ => self.drop(DropReason::LocalControl),
        }
    }

    /// Check a frame arriving from peer `from` before handing it to our guest: the sending child
    /// already validated it, but that child serves another (hostile) guest and may be compromised.
    pub fn accept_ingress(&self, from: PeerSlot, frame: &[u8]) -> bool {
        let Some(peer) = self.peer(from) else {
            return false;
        };
        if frame.len() < ETH_HLEN || frame::mac_at(frame, 6) != Some(peer.mac) {
            return false;
        }
        let dst = frame::mac_at(frame, 0).unwrap_or_default();
        dst == self.me.mac || dst.is_multicast()
    }
}

/// Bytes of a frame [`Forwarder::classify_head`] needs when it does not get the whole frame:
/// Ethernet, the longest IPv4 header and the TCP/UDP ports, or IPv6 and a neighbour
/// solicitation's target.
pub const MIN_HEAD: usize = 128;

/// The broadcast MAC, re-exported for tests and callers building frames.
pub const BROADCAST_MAC: MacAddr = MacAddr::BROADCAST;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn peer(json: &str) -> PeerConfig {
        PeerConfig::from_json(Path::new("t"), json).unwrap()
    }

    fn a() -> PeerConfig {
        peer(
            r#"{"name":"a","mac":"02:00:00:00:00:0a","ipv4":["10.1.0.1/24"],"ipv6":["fd00::a/64"]}"#,
        )
    }
    fn b() -> PeerConfig {
        peer(
            r#"{"name":"b","mac":"02:00:00:00:00:0b","ipv4":["10.1.0.2/24"],"ipv6":["fd00::b/64"],"receiveBroadcast":true}"#,
        )
    }
    fn router() -> PeerConfig {
        peer(
            r#"{"name":"r","mac":"02:00:00:00:00:0c","ipv4":["10.1.0.254/24"],"routes":["0.0.0.0/0","192.168.0.0/16","::/0"]}"#,
        )
    }

    fn fwd() -> Forwarder {
        let mut f = Forwarder::new(a());
        f.upsert_peer(1, b());
        f.upsert_peer(2, router());
        f
    }

    fn ipv4(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN + 28];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ip = &mut f[ETH_HLEN..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f
    }

    fn arp_request(sender_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&sender_mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&sender_mac);
        f[28..32].copy_from_slice(&sender);
        f[38..42].copy_from_slice(&target);
        f
    }

    const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];

    #[test]
    fn proxy_arp_answers_with_owner_mac() {
        let mut f = fwd();
        let mut req = arp_request(A_MAC, [10, 1, 0, 1], [10, 1, 0, 2]);
        let Verdict::Reply(r) = f.classify(&mut req) else {
            panic!("no reply")
        };
        assert_eq!(&r[0..6], &A_MAC);
        assert_eq!(&r[6..12], &[2, 0, 0, 0, 0, 0x0b]);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[22..28], &[2, 0, 0, 0, 0, 0x0b]);
        assert_eq!(&r[28..32], &[10, 1, 0, 2]);
        assert_eq!(&r[32..38], &A_MAC);
        assert_eq!(&r[38..42], &[10, 1, 0, 1]);
        // Own address (DAD/gratuitous) is not answered.
        let mut own = arp_request(A_MAC, [0, 0, 0, 0], [10, 1, 0, 1]);
        assert_eq!(
            f.classify(&mut own),
            Verdict::Drop(DropReason::LocalControl)
        );
        // Spoofed sender IP is dropped and counted.
        let mut spoof = arp_request(A_MAC, [10, 1, 0, 2], [10, 1, 0, 254]);
        assert_eq!(f.classify(&mut spoof), Verdict::Drop(DropReason::SpoofedIp));
        assert_eq!(f.drops[DropReason::SpoofedIp as usize], 1);
    }

    #[test]
    fn unicast_longest_prefix_match() {
        let mut f = fwd();
        let mut to_b = ipv4(A_MAC, [10, 1, 0, 1], [10, 1, 0, 2], 1);
        assert_eq!(f.classify(&mut to_b), Verdict::Unicast(1));
        assert_eq!(&to_b[0..6], &[2, 0, 0, 0, 0, 0x0b], "dst MAC rewritten");
        let mut internet = ipv4(A_MAC, [10, 1, 0, 1], [8, 8, 8, 8], 1);
        assert_eq!(f.classify(&mut internet), Verdict::Unicast(2));
        let mut unknown_local = ipv4(A_MAC, [10, 1, 0, 1], [10, 1, 0, 77], 1);
        assert_eq!(
            f.classify(&mut unknown_local),
            Verdict::Unicast(2),
            "default route"
        );
        f.remove_peer(2);
        let mut gone = ipv4(A_MAC, [10, 1, 0, 1], [8, 8, 8, 8], 1);
        assert_eq!(f.classify(&mut gone), Verdict::Drop(DropReason::NoRoute));
        let mut own = ipv4(A_MAC, [10, 1, 0, 1], [10, 1, 0, 1], 1);
        assert_eq!(f.classify(&mut own), Verdict::Drop(DropReason::Hairpin));
    }

    #[test]
    fn more_specific_route_wins_over_default() {
        let mut f = fwd();
        f.upsert_peer(
            3,
            peer(r#"{"name":"lab","mac":"02:00:00:00:00:0d","ipv4":["10.1.0.3/24"],"routes":["192.168.7.0/24"]}"#),
        );
        let mut lab = ipv4(A_MAC, [10, 1, 0, 1], [192, 168, 7, 9], 1);
        assert_eq!(f.classify(&mut lab), Verdict::Unicast(3));
        let mut other = ipv4(A_MAC, [10, 1, 0, 1], [192, 168, 8, 9], 1);
        assert_eq!(f.classify(&mut other), Verdict::Unicast(2));
    }

    #[test]
    fn spoofed_sources_are_dropped_and_counted() {
        let mut f = fwd();
        let mut mac = ipv4([2, 0, 0, 0, 0, 0x0b], [10, 1, 0, 1], [10, 1, 0, 2], 1);
        assert_eq!(f.classify(&mut mac), Verdict::Drop(DropReason::SpoofedMac));
        let mut ip = ipv4(A_MAC, [10, 1, 0, 2], [10, 1, 0, 254], 1);
        assert_eq!(f.classify(&mut ip), Verdict::Drop(DropReason::SpoofedIp));
        let mut zero = ipv4(A_MAC, [0, 0, 0, 0], [10, 1, 0, 2], 1);
        assert_eq!(f.classify(&mut zero), Verdict::Drop(DropReason::SpoofedIp));
        assert_eq!(f.drops[DropReason::SpoofedMac as usize], 1);
        assert_eq!(f.drops[DropReason::SpoofedIp as usize], 2);
        // The router may source anything inside its routes.
        let mut r = Forwarder::new(router());
        r.upsert_peer(1, a());
        let mut fwd_reply = ipv4([2, 0, 0, 0, 0, 0x0c], [8, 8, 8, 8], [10, 1, 0, 1], 6);
        assert_eq!(r.classify(&mut fwd_reply), Verdict::Unicast(1));
    }

    #[test]
    fn broadcast_goes_to_receivers_only() {
        let mut f = fwd();
        let mut bc = ipv4(A_MAC, [10, 1, 0, 1], [255, 255, 255, 255], 17);
        assert_eq!(f.classify(&mut bc), Verdict::Broadcast);
        let mut directed = ipv4(A_MAC, [10, 1, 0, 1], [10, 1, 0, 255], 17);
        assert_eq!(f.classify(&mut directed), Verdict::Broadcast);
        let mut dhcp = ipv4(A_MAC, [0, 0, 0, 0], [255, 255, 255, 255], 17);
        assert_eq!(f.classify(&mut dhcp), Verdict::Broadcast);
        assert_eq!(f.broadcast_targets().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn ipv6_neighbour_solicitation_and_unicast() {
        let mut f = fwd();
        let src: Ipv6Addr = "fd00::a".parse().unwrap();
        let target: Ipv6Addr = "fd00::b".parse().unwrap();
        // Build an NS with a solicited-node destination.
        let mut ns = vec![0u8; ETH_HLEN + 40 + 24];
        ns[0..6].copy_from_slice(&[0x33, 0x33, 0xff, 0, 0, 0x0b]);
        ns[6..12].copy_from_slice(&A_MAC);
        ns[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let ip = &mut ns[ETH_HLEN..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&24u16.to_be_bytes());
        ip[6] = frame::IPPROTO_ICMPV6;
        ip[7] = 255;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&"ff02::1:ff00:b".parse::<Ipv6Addr>().unwrap().octets());
        ip[40] = frame::ND_NEIGHBOR_SOLICIT;
        ip[48..64].copy_from_slice(&target.octets());
        let Verdict::Reply(na) = f.classify(&mut ns) else {
            panic!("no NA")
        };
        assert_eq!(&na[0..6], &A_MAC);
        assert_eq!(&na[6..12], &[2, 0, 0, 0, 0, 0x0b]);
        assert_eq!(na[ETH_HLEN + 40], frame::ND_NEIGHBOR_ADVERT);
        assert_eq!(frame::ipv6_at(&na, ETH_HLEN + 8), Some(target));

        let mut uni = vec![0u8; ETH_HLEN + 40];
        uni[6..12].copy_from_slice(&A_MAC);
        uni[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        uni[ETH_HLEN] = 0x60;
        uni[ETH_HLEN + 6] = 17;
        uni[ETH_HLEN + 8..ETH_HLEN + 24].copy_from_slice(&src.octets());
        uni[ETH_HLEN + 24..ETH_HLEN + 40].copy_from_slice(&target.octets());
        assert_eq!(f.classify(&mut uni.clone()), Verdict::Unicast(1));
        let mut far = uni.clone();
        far[ETH_HLEN + 24..ETH_HLEN + 40]
            .copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(f.classify(&mut far), Verdict::Unicast(2), "::/0 via router");
        let mut spoof = uni.clone();
        spoof[ETH_HLEN + 8..ETH_HLEN + 24].copy_from_slice(&target.octets());
        assert_eq!(f.classify(&mut spoof), Verdict::Drop(DropReason::SpoofedIp));
    }

    #[test]
    fn ingress_check_rejects_forged_peer_frames() {
        let f = fwd();
        let mut ok = ipv4([2, 0, 0, 0, 0, 0x0b], [10, 1, 0, 2], [10, 1, 0, 1], 1);
        ok[0..6].copy_from_slice(&A_MAC);
        assert!(f.accept_ingress(1, &ok));
        assert!(
            !f.accept_ingress(2, &ok),
            "claims b's MAC on the router's ring"
        );
        assert!(!f.accept_ingress(9, &ok));
    }

    proptest! {
        // Any byte string: classify never panics, and anything forwarded carries our MAC and a
        // source we own.
        #[test]
        fn classify_never_forwards_spoofed(mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                           fix_mac in any::<bool>(), ethertype in 0usize..4) {
            let mut f = fwd();
            if fix_mac && bytes.len() >= 14 {
                bytes[6..12].copy_from_slice(&A_MAC);
                let et = [ETH_P_IPV4, ETH_P_IPV6, ETH_P_ARP, 0x1234][ethertype];
                bytes[12..14].copy_from_slice(&et.to_be_bytes());
            }
            let v = f.classify(&mut bytes);
            match v {
                Verdict::Unicast(_) | Verdict::Broadcast => {
                    prop_assert_eq!(&bytes[6..12], &A_MAC);
                    let src = match frame::be16(&bytes, 12) {
                        Some(ETH_P_IPV4) => IpAddr::V4(frame::ipv4_at(&bytes, ETH_HLEN + 12).unwrap()),
                        Some(ETH_P_IPV6) => IpAddr::V6(frame::ipv6_at(&bytes, ETH_HLEN + 8).unwrap()),
                        other => panic!("forwarded ethertype {other:?}"),
                    };
                    prop_assert!(src.is_unspecified() || f.me().owns_source(src));
                }
                Verdict::Reply(r) => prop_assert!(r[0..6] == A_MAC || r[0] & 1 == 1),
                Verdict::Drop(_) => {}
            }
        }

        // Judging a large frame from its first bytes agrees with judging the whole frame, for
        // plausible IPv4/IPv6/ND frames with right and wrong lengths, sources and destinations.
        #[test]
        fn classify_head_agrees_with_classify(
            mut bytes in proptest::collection::vec(any::<u8>(), 14..1600),
            v6 in any::<bool>(), src_k in 0usize..3, dst_k in 0usize..5, len_k in 0usize..3,
            nd in any::<bool>(), head_extra in 0usize..64,
        ) {
            let n = bytes.len();
            bytes[6..12].copy_from_slice(&A_MAC);
            if !v6 && n >= 34 {
                bytes[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
                bytes[14] = 0x45;
                let tot = [n - 14, n - 13, n.saturating_sub(40)][len_k] as u16;
                bytes[16..18].copy_from_slice(&tot.to_be_bytes());
                bytes[26..30].copy_from_slice(&[[10, 1, 0, 1], [10, 1, 0, 3], [0, 0, 0, 0]][src_k]);
                let dsts = [[10, 1, 0, 2], [10, 1, 0, 255], [192, 168, 1, 1], [10, 1, 0, 1], [224, 0, 0, 1]];
                bytes[30..34].copy_from_slice(&dsts[dst_k]);
            } else if v6 && n >= 54 + 24 {
                bytes[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
                bytes[14] = 0x60;
                let pl = [n - 54, n - 53, n.saturating_sub(80)][len_k] as u16;
                bytes[18..20].copy_from_slice(&pl.to_be_bytes());
                bytes[20] = if nd { frame::IPPROTO_ICMPV6 } else { 17 };
                bytes[21] = 255;
                let srcs: [Ipv6Addr; 3] = ["fd00::a".parse().unwrap(), "fe80::1".parse().unwrap(), "fd00::c".parse().unwrap()];
                bytes[22..38].copy_from_slice(&srcs[src_k].octets());
                let dsts: [Ipv6Addr; 5] = ["fd00::b".parse().unwrap(), "ff02::1:ff00:b".parse().unwrap(), "2001:db8::1".parse().unwrap(), "fd00::a".parse().unwrap(), "fe80::2".parse().unwrap()];
                bytes[38..54].copy_from_slice(&dsts[dst_k].octets());
                if nd {
                    bytes[54] = frame::ND_NEIGHBOR_SOLICIT;
                    let target: Ipv6Addr = "fd00::b".parse().unwrap();
                    bytes[62..78].copy_from_slice(&target.octets());
                }
            }
            let mut whole = bytes.clone();
            let want = fwd().classify(&mut whole);
            let h = (MIN_HEAD + head_extra).min(n);
            let mut head = bytes[..h].to_vec();
            let got = fwd().classify_head(&mut head, n);
            prop_assert_eq!(got, want);
            prop_assert_eq!(&head[..], &whole[..h], "same rewrite of the head");
        }
    }
}
