//! `vhost-loadgen`: plays VMs against a vhost-user-net backend; see `vmsilo_tests::loadgen`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use vmsilo_tests::loadgen::args::Args;
use vmsilo_tests::loadgen::{frame, run, vm::Vm};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.vms.len() < 2 {
        bail!("need at least two --vm");
    }
    let timeout = Duration::from_secs(args.connect_timeout);
    let mut vms = Vec::with_capacity(args.vms.len());
    for spec in &args.vms {
        let vm = Vm::connect(spec, args.features, args.queue_size, timeout)
            .with_context(|| format!("setting up VM {}", spec.name))?;
        let n = &vm.negotiated;
        println!(
            "LOADGEN connected backend={} vm={} features={:#x} protocol={:#x} queue_num={}",
            args.label,
            vm.name,
            n.features,
            n.protocol.bits(),
            n.queue_num
                .map_or_else(|| "none".to_string(), |q| q.to_string())
        );
        vms.push(vm);
    }
    let count = vms.len();
    let macs: Vec<[u8; 6]> = if args.arp {
        let macs = run::resolve_arp(&mut vms, Duration::from_secs(5))?;
        for (i, mac) in macs.iter().enumerate() {
            println!(
                "LOADGEN arp backend={} vm={} next_hop={} mac={}",
                args.label,
                vms[i].name,
                vms[(i + 1) % count].endpoint.ip,
                frame::format_mac(mac)
            );
        }
        macs
    } else {
        (0..count)
            .map(|i| vms[(i + 1) % count].endpoint.mac)
            .collect()
    };
    let report = run::run(vms, &macs, &args.run_config())?;
    for line in report.lines(&args.label) {
        println!("{line}");
    }
    Ok(())
}
