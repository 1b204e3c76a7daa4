//! `vmsilo demo`, the README's first command, run as a user runs it; the transcript is checked.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn demo_brings_the_quick_start_example_up_and_down() {
    let vmsilo = vmsilo_tests::vm_service::vmsilo_bin();
    let out = Command::new(&vmsilo)
        .args(["demo", "--idle", "10", "--no-install"])
        .env_remove("VMSILO_LOG")
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vmsilo demo failed ({}):\n{transcript}\nstderr:\n{stderr}",
        out.status
    );
    for line in [
        "ok: banking is stopped before anything asks for it",
        "$ vm-run banking -- uname -sr",
        "ok: vm-run started banking on demand and returned the command's output",
        "hello from banking",
        "stderr: to-stderr",
        "exit 3 after",
        "TYPED ON THE HOST",
        "ok: shopping started on demand with its interface named from the config",
        "3 packets transmitted, 3 packets received",
        "ok: banking reaches shopping through vm-switch",
        "ok: personal has no network interface but loopback",
        "ok: every VM powered itself off after 10 s idle",
        "ok: banking starts again on the next vm-run",
        "ok: every VM stopped and its runtime directory was removed",
        "11 passed, 0 failed",
        "cleaned up the work directory",
    ] {
        assert!(
            transcript.contains(line),
            "transcript lacks {line:?}:\n{transcript}"
        );
    }
    // Every line is timestamped, so the transcript reads as a timeline.
    assert!(
        transcript
            .lines()
            .filter(|l| !l.starts_with("            "))
            .all(|l| l.starts_with('[') && l.contains("s] ")),
        "{transcript}"
    );
}
