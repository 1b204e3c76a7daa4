//! vm-switch: the vhost-user-net L3 switch between vmsilo VMs.
//!
//! Modules:
//! - [`peer`]: peer files (one JSON document per VM; format documented there);
//! - [`frame`]: bounds-checked Ethernet/ARP/IP/ICMPv6 helpers;
//! - [`forward`]: the pure forwarding core (validation, proxy ARP/ND, longest-prefix routing);
//! - [`fq_codel`]: per-peer FQ-CoDel (RFC 8290) over an abstract clock.

pub mod forward;
pub mod fq_codel;
pub mod frame;
pub mod peer;
pub mod ring;
