//! Idle tracking for autoShutdown: once no command has run for `after`, power the guest off.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Count of running commands and the moment the count last changed.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<(usize, Instant)>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Start idle now (a VM nobody uses after boot shuts down too).
    pub fn new() -> Self {
        Self {
            state: Mutex::new((0, Instant::now())),
        }
    }

    /// Mark one command as running until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += 1;
        s.1 = Instant::now();
        ActiveGuard(self.clone())
    }

    /// How long nothing has run, or `None` while something runs.
    pub fn idle_for(&self) -> Option<Duration> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.0 == 0).then(|| s.1.elapsed())
    }

    /// Number of running commands.
    pub fn running(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn touch(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = Instant::now();
    }
}

/// Keeps a command counted as running; dropping it marks the end.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = s.0.saturating_sub(1);
        s.1 = Instant::now();
    }
}

/// Watch `activity` in a thread; run `poweroff` with `sh -c` once idle for `after`.
///
/// If the command fails or returns without the guest going down, the watchdog waits another
/// `after` before trying again.
pub fn spawn(
    activity: Arc<Activity>,
    after: Duration,
    poweroff: String,
) -> std::thread::JoinHandle<()> {
    let tick = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(tick);
            if activity.idle_for().is_some_and(|idle| idle >= after) {
                tracing::info!("idle for {}s, running `{poweroff}`", after.as_secs());
                match std::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&poweroff)
                    .status()
                {
                    Ok(s) if s.success() => {}
                    Ok(s) => tracing::error!("poweroff command `{poweroff}` failed: {s}"),
                    Err(e) => tracing::error!("cannot run poweroff command `{poweroff}`: {e}"),
                }
                activity.touch();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_without_running_commands() {
        let a = Arc::new(Activity::new());
        assert!(a.idle_for().is_some());
        let g1 = a.begin();
        let g2 = a.begin();
        assert_eq!(a.running(), 2);
        assert!(a.idle_for().is_none());
        drop(g1);
        assert!(a.idle_for().is_none());
        drop(g2);
        assert!(a.idle_for().is_some_and(|d| d < Duration::from_secs(5)));
    }
}
