//! `vmsilo-agent`: the guest side of `vm-run`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = vmsilo_guest::Args::parse();
    vmsilo_guest::run(&args)?;
    Ok(())
}
