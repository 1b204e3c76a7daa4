//! Command-line interface of the `vm-switch` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Lifecycle events.
    Info,
    /// Per-peer details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The tracing filter directive for this level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// What a seccomp violation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    /// Kill the offending process.
    Kill,
    /// Deliver SIGSYS (for debugging with a handler or core dump).
    Trap,
    /// Allow but log to the kernel audit log.
    Log,
    /// No filter.
    Disabled,
}

/// vhost-user-net L3 switch: one process per VM network, one sandboxed child per VM.
#[derive(Debug, Parser)]
#[command(name = "vm-switch", version)]
pub struct Args {
    /// Network name (used in worker process titles); defaults to the config directory's name
    #[arg(short = 'n', long)]
    pub name: Option<String>,

    /// Config/MAC file directory: one `<vm>.json` peer file per VM; sockets are created beside
    #[arg(short = 'd', long, default_value = "/run/vm-switch")]
    pub config_dir: PathBuf,

    /// error, warn, info, debug, trace
    #[arg(long, value_enum, default_value = "warn")]
    pub log_level: LogLevel,

    /// Ring buffer data region size (power of two; suffixes k, m)
    #[arg(long, default_value = "256k", value_parser = parse_size)]
    pub buffer_size: usize,

    /// CoDel target sojourn time (e.g. 5ms, 500us, 1s)
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub fq_codel_target: Duration,

    /// CoDel measurement interval
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub fq_codel_interval: Duration,

    /// Hard byte limit per-peer FQ-CoDel queue (suffixes k, m)
    #[arg(long, default_value = "2m", value_parser = parse_size)]
    pub fq_codel_limit: usize,

    /// DRR quantum in bytes per round per flow
    #[arg(long, default_value = "1514", value_parser = parse_size)]
    pub fq_codel_quantum: usize,

    /// Suppress all log output
    #[arg(long)]
    pub quiet: bool,

    /// Disable namespace sandboxing
    #[arg(long)]
    pub no_sandbox: bool,

    /// kill, trap, log, disabled
    #[arg(long, value_enum, default_value = "kill")]
    pub seccomp_mode: SeccompMode,
}

/// Parse `256k`, `2m`, `1514`, `1g` (binary multiples).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.strip_suffix(['k', 'm', 'g']) {
        Some(n) => {
            let m = match t.chars().last() {
                Some('k') => 1usize << 10,
                Some('m') => 1 << 20,
                _ => 1 << 30,
            };
            (n, m)
        }
        None => (t.as_str(), 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1514, 256k, 2m)"))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v == 0 {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(v)
}

/// Parse `5ms`, `100ms`, `500us`, `1s`, `2000ns`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} lacks a unit (ns, us, ms, s)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5ms)"))?;
    let d = match unit {
        "ns" => Duration::from_nanos(n),
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ns, us, ms, s)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let a = Args::try_parse_from(["vm-switch"]).unwrap();
        assert_eq!(a.config_dir, PathBuf::from("/run/vm-switch"));
        assert_eq!(a.log_level, LogLevel::Warn);
        assert_eq!(a.buffer_size, 256 * 1024);
        assert_eq!(a.fq_codel_target, Duration::from_millis(5));
        assert_eq!(a.fq_codel_interval, Duration::from_millis(100));
        assert_eq!(a.fq_codel_limit, 2 * 1024 * 1024);
        assert_eq!(a.fq_codel_quantum, 1514);
        assert_eq!(a.seccomp_mode, SeccompMode::Kill);
        assert!(!a.quiet && !a.no_sandbox);
        assert_eq!(a.name, None);
    }

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "vm-switch",
            "-n",
            "internal",
            "-d",
            "/tmp/x",
            "--seccomp-mode=trap",
            "--fq-codel-target",
            "500us",
            "--buffer-size",
            "1m",
            "--no-sandbox",
        ])
        .unwrap();
        assert_eq!(a.name.as_deref(), Some("internal"));
        assert_eq!(a.seccomp_mode, SeccompMode::Trap);
        assert_eq!(a.fq_codel_target, Duration::from_micros(500));
        assert_eq!(a.buffer_size, 1 << 20);
        assert!(Args::try_parse_from(["vm-switch", "--fq-codel-target", "5"]).is_err());
        assert!(Args::try_parse_from(["vm-switch", "--buffer-size", "12q"]).is_err());
        assert!(Args::try_parse_from(["vm-switch", "--seccomp-mode", "nope"]).is_err());
    }
}
