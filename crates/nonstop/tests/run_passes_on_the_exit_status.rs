//! `nonstop run` ends the way its program ends: same exit code, same signal.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};

fn nonstop_run(script: &str) -> ExitStatus {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = dir.path().join("libnonstop_agent.so");
    std::fs::write(&agent, b"").expect("write the fake agent library");
    Command::new(env!("CARGO_BIN_EXE_nonstop"))
        .args(["run", "--token", "t", "--", "sh", "-c", script])
        .env("NONSTOP_AGENT_LIB", &agent)
        .env_remove("LD_PRELOAD")
        // The loader's note that it ignores the empty library is not what these tests look at.
        .stderr(Stdio::null())
        .status()
        .expect("run nonstop")
}

#[test]
fn the_exit_code_is_the_programs() {
    assert_eq!(nonstop_run("exit 3").code(), Some(3));
    assert_eq!(nonstop_run("exit 0").code(), Some(0));
}

#[test]
fn a_program_killed_by_a_signal_kills_nonstop_run_the_same_way() {
    // The program replaces `nonstop run` (exec), so a signal sent to it is a signal to "nonstop run".
    let status = nonstop_run("kill -TERM $$");
    assert_eq!(status.signal(), Some(15), "{status:?}");
}
