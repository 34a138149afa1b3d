//! `nonstop run` says what is missing and how to fix it, and exits 1.

use std::process::{Command, Output};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_missing_program_is_named_with_a_hint() {
    for program in ["no-such-program-here", "./no/such/program"] {
        let output = Command::new(env!("CARGO_BIN_EXE_nonstop"))
            .args(["run", "--", program, "--flag"])
            .output()
            .expect("run nonstop");
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(
            stderr(&output),
            format!(
                "nonstop: cannot run {program}: no such file; give a path or a program on PATH\n"
            )
        );
    }
}

#[test]
fn a_missing_agent_library_says_how_to_build_it() {
    // A copy of nonstop in an empty folder has no agent library beside it.
    let dir = tempfile::tempdir().expect("temp dir");
    let nonstop = dir.path().join("bin/nonstop");
    std::fs::create_dir_all(dir.path().join("bin")).expect("bin folder");
    std::fs::copy(env!("CARGO_BIN_EXE_nonstop"), &nonstop).expect("copy nonstop");
    let output = Command::new(&nonstop)
        .args(["run", "--", "true"])
        .env_remove("NONSTOP_AGENT_LIB")
        .output()
        .expect("run nonstop");
    assert_eq!(output.status.code(), Some(1));
    let bin = dir.path().join("bin");
    let lib = dir.path().join("lib/nonstop");
    assert_eq!(
        stderr(&output),
        format!(
            "nonstop: cannot find the agent library libnonstop_agent.so (looked in {}/libnonstop_agent.so, \
             {}/libnonstop_agent.so); build it with `cargo build --release -p nonstop-agent`, \
             or set NONSTOP_AGENT_LIB to its path\n",
            bin.display(),
            lib.display()
        )
    );

    // A library beside the executable is found without naming it.
    std::fs::write(bin.join("libnonstop_agent.so"), b"").expect("fake agent library");
    let output = Command::new(&nonstop)
        .args(["run", "--token", "t", "--", "sh", "-c", "echo $LD_PRELOAD"])
        .env_remove("NONSTOP_AGENT_LIB")
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run nonstop");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        bin.join("libnonstop_agent.so").display().to_string()
    );

    // So is one in ../lib/nonstop, as an installed layout has it.
    std::fs::remove_file(bin.join("libnonstop_agent.so")).expect("remove");
    std::fs::create_dir_all(&lib).expect("lib folder");
    std::fs::write(lib.join("libnonstop_agent.so"), b"").expect("fake agent library");
    let output = Command::new(&nonstop)
        .args(["run", "--token", "t", "--", "sh", "-c", "echo $LD_PRELOAD"])
        .env_remove("NONSTOP_AGENT_LIB")
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run nonstop");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        lib.join("libnonstop_agent.so").display().to_string()
    );
}
