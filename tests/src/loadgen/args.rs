//! Command line of `vhost-loadgen`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::frame::{self, Endpoint};
use super::run::{Mode, RunConfig};
use super::vm::{FeatureRequest, VmSpec};

/// Play VMs against a vhost-user-net backend and measure it.
///
/// Prints one `LOADGEN ...` line per result. VM i sends to VM (i+1) mod n.
#[derive(Debug, Parser)]
#[command(name = "vhost-loadgen", version)]
pub struct Args {
    /// A simulated VM: NAME,SOCKET,MAC,IPV4[/LEN] (at least two).
    #[arg(long = "vm", value_parser = parse_vm, required = true, num_args = 1)]
    pub vms: Vec<VmSpec>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = ModeArg::Throughput)]
    pub mode: ModeArg,
    /// Ethernet frame length in bytes without FCS (58..=1514).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(58..=1514))]
    pub size: u16,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Traffic before the window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Only the first VM sends (throughput mode).
    #[arg(long)]
    pub one_way: bool,
    /// Latency mode: probes only, no bulk flow (the unloaded baseline).
    #[arg(long)]
    pub no_load: bool,
    /// Microseconds between latency probes.
    #[arg(long, default_value_t = 1000)]
    pub probe_interval_us: u64,
    /// Virtqueue size (power of two), as the VMM would offer.
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Frames queued per TX round.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Virtio features to accept if offered: comma list of event_idx, mrg_rxbuf, csum, gso,
    /// or "none".
    #[arg(long, default_value = "event_idx,mrg_rxbuf", value_parser = parse_features)]
    pub features: FeatureRequest,
    /// Resolve each next hop's MAC with ARP (an L3 switch answers for its peers) instead of
    /// using the peer's MAC.
    #[arg(long)]
    pub arp: bool,
    /// Sample the RSS of this process and its descendants mid-run (repeatable).
    #[arg(long = "rss-pid")]
    pub rss_pids: Vec<u32>,
    /// Latency mode: the receiving VM drains at most this many frames per second, so a
    /// standing queue builds up in the backend.
    #[arg(long)]
    pub drain_pps: Option<u64>,
    /// Never sleep on the call eventfds: poll like a DPDK guest (costs a full CPU).
    #[arg(long)]
    pub busy_poll: bool,
    /// Backend name for the output lines.
    #[arg(long, default_value = "backend")]
    pub label: String,
    /// Seconds to keep retrying while a socket does not exist yet.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
}

/// Measurement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Saturating flows; Mpps and Gbit/s.
    Throughput,
    /// Probe one-way latency (with a bulk flow unless --no-load).
    Latency,
}

impl Args {
    /// The run parameters these arguments describe.
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            mode: match self.mode {
                ModeArg::Throughput => Mode::Throughput,
                ModeArg::Latency => Mode::Latency {
                    with_load: !self.no_load,
                },
            },
            size: usize::from(self.size),
            duration: Duration::from_secs_f64(self.secs.max(0.1)),
            warmup: Duration::from_secs_f64(self.warmup.max(0.0)),
            one_way: self.one_way,
            batch: self.batch.clamp(1, 1024),
            probe_interval: Duration::from_micros(self.probe_interval_us.max(10)),
            rss_pids: self.rss_pids.clone(),
            busy_poll: self.busy_poll,
            drain_pps: self.drain_pps.filter(|&p| p > 0),
        }
    }
}

/// Parse `NAME,SOCKET,MAC,IPV4[/LEN]`.
pub fn parse_vm(text: &str) -> Result<VmSpec, String> {
    let parts: Vec<&str> = text.split(',').collect();
    let [name, socket, mac, ip] = parts[..] else {
        return Err(format!("`{text}`: expected NAME,SOCKET,MAC,IPV4"));
    };
    if name.is_empty() {
        return Err(format!("`{text}`: empty VM name"));
    }
    let mac =
        frame::parse_mac(mac).ok_or_else(|| format!("`{mac}`: not a MAC (aa:bb:cc:dd:ee:ff)"))?;
    let ip: Ipv4Addr = ip
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| format!("`{ip}`: not an IPv4 address"))?;
    Ok(VmSpec {
        name: name.to_string(),
        socket: PathBuf::from(socket),
        endpoint: Endpoint { mac, ip },
    })
}

/// Parse the `--features` list.
pub fn parse_features(text: &str) -> Result<FeatureRequest, String> {
    let mut f = FeatureRequest {
        event_idx: false,
        mrg_rxbuf: false,
        csum: false,
        gso: false,
    };
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "none" => {}
            "event_idx" => f.event_idx = true,
            "mrg_rxbuf" => f.mrg_rxbuf = true,
            "csum" => f.csum = true,
            "gso" => f.gso = true,
            other => {
                return Err(format!(
                    "unknown feature `{other}` (event_idx, mrg_rxbuf, csum, gso, none)"
                ));
            }
        }
    }
    if f.gso && !f.mrg_rxbuf {
        return Err("gso needs mrg_rxbuf (our RX buffers are 2 KiB)".into());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vm_spec_parsing() {
        let v = parse_vm("a,/tmp/a.sock,52:54:00:00:00:0a,10.9.0.1/24").unwrap();
        assert_eq!(v.name, "a");
        assert_eq!(v.endpoint.ip, Ipv4Addr::new(10, 9, 0, 1));
        assert!(parse_vm("a,/tmp/a.sock,52:54:00:00:00:0a").is_err());
        assert!(parse_vm("a,/s,52:54:00:00:00,10.9.0.1").is_err());
        assert!(parse_vm("a,/s,52:54:00:00:00:0a,10.9.0.300").is_err());
    }

    #[test]
    fn feature_parsing() {
        assert!(!parse_features("none").unwrap().event_idx);
        let f = parse_features("event_idx,mrg_rxbuf,gso").unwrap();
        assert!(f.event_idx && f.mrg_rxbuf && f.gso);
        assert!(parse_features("gso").is_err());
        assert!(parse_features("tso").is_err());
    }

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from([
            "vhost-loadgen",
            "--vm",
            "a,/a.sock,52:54:00:00:00:0a,10.9.0.1",
            "--vm",
            "b,/b.sock,52:54:00:00:00:0b,10.9.0.2",
            "--mode",
            "latency",
            "--size",
            "1514",
        ])
        .unwrap();
        assert_eq!(a.vms.len(), 2);
        assert!(matches!(
            a.run_config().mode,
            Mode::Latency { with_load: true }
        ));
        assert!(
            Args::try_parse_from([
                "vhost-loadgen",
                "--vm",
                "a,/a,52:54:00:00:00:0a,10.9.0.1",
                "--size",
                "40"
            ])
            .is_err()
        );
    }
}
