//! `vhost-loadgen`: a vhost-user-net **frontend** that plays two or more VMs against a backend
//! (vm-switch, dpdk-testpmd) to measure the backend alone, without guest emulation in the way.
//!
//! Each simulated VM does what QEMU or crosvm plus a guest virtio-net driver do: memfd-backed
//! guest memory shared over SET_MEM_TABLE ([`memory`]), split virtqueues laid out in it and
//! driven from the guest side ([`vring`]), kick/call eventfds and feature negotiation ([`vm`]).
//! [`frame`] builds valid Ethernet/IPv4/UDP frames an L3 switch will route; [`run`] measures
//! throughput and probe latency; [`rss`] samples the backend's memory; [`args`] is the CLI.

pub mod args;
pub mod frame;
pub mod memory;
pub mod rss;
pub mod run;
pub mod vm;
pub mod vring;
