//! `nonstop run` hands the program the agent library in `LD_PRELOAD` and the agent's settings.
//!
//! The "agent library" here is an empty file: these tests check what `nonstop run` passes on, not the
//! agent (the dynamic loader says on stderr that it ignores the file, and the program runs as usual).

use std::path::Path;
use std::process::{Command, Output};

/// `nonstop run ARGS…` with a clean environment: a fake agent library and an empty data folder.
fn nonstop_run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let agent = dir.join("libnonstop_agent.so");
    std::fs::write(&agent, b"").expect("write the fake agent library");
    let mut command = Command::new(env!("CARGO_BIN_EXE_nonstop"));
    command
        .arg("run")
        .args(args)
        .env("NONSTOP_AGENT_LIB", &agent)
        .env("NONSTOP_DATA", dir.join("data"))
        .env_remove("NONSTOP_SERVER")
        .env_remove("NONSTOP_TOKEN")
        .env_remove("NONSTOP_SERVICE")
        .env_remove("LD_PRELOAD");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run nonstop")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn the_program_sees_the_agent_library_and_its_service_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = nonstop_run(
        dir.path(),
        &[
            "--",
            "/bin/sh",
            "-c",
            "echo $LD_PRELOAD $NONSTOP_SERVICE $NONSTOP_SERVER",
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let agent = dir.path().join("libnonstop_agent.so");
    assert_eq!(
        stdout(&output),
        format!("{} sh http://127.0.0.1:7070", agent.display())
    );
}

#[test]
fn flags_name_the_service_and_server_and_the_agent_goes_before_other_preloads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = nonstop_run(
        dir.path(),
        &[
            "--server",
            "http://10.0.0.1:9000",
            "--service",
            "checkout",
            "--token",
            "tok-123",
            "--",
            "sh",
            "-c",
            "echo $LD_PRELOAD $NONSTOP_SERVICE $NONSTOP_SERVER $NONSTOP_TOKEN",
        ],
        &[("LD_PRELOAD", "/nonexistent/other.so")],
    );
    assert!(output.status.success(), "{output:?}");
    let agent = dir.path().join("libnonstop_agent.so");
    assert_eq!(
        stdout(&output),
        format!(
            "{}:/nonexistent/other.so checkout http://10.0.0.1:9000 tok-123",
            agent.display()
        )
    );
}

#[test]
fn the_token_comes_from_the_environment_or_else_the_data_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = ["--", "sh", "-c", "echo token=$NONSTOP_TOKEN"];

    let output = nonstop_run(dir.path(), &script, &[]);
    assert_eq!(stdout(&output), "token=");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("nonstop: no agent token"),
        "{output:?}"
    );

    std::fs::create_dir_all(dir.path().join("data")).expect("data folder");
    std::fs::write(dir.path().join("data/agent.token"), "from-file\n").expect("token file");
    assert_eq!(
        stdout(&nonstop_run(dir.path(), &script, &[])),
        "token=from-file"
    );

    let output = nonstop_run(dir.path(), &script, &[("NONSTOP_TOKEN", "from-env")]);
    assert_eq!(stdout(&output), "token=from-env");
}
