//! Schemathesis (property-based API testing from the OpenAPI document) against a real
//! server on loopback, with every check: no 5xx, status codes, content types, headers and
//! bodies as the document says, invalid data refused, valid data accepted, auth enforced.
//!
//! What is left out, and which check is left out where, is said below with the reason.
//!
//! Needs `schemathesis` (`scripts/test` installs it in `~/.cache/nonstop-schemathesis-venv`;
//! `NONSTOP_SCHEMATHESIS` names another).

mod common;

use common::TestServer;
use std::process::Command;

fn schemathesis() -> String {
    let venv = format!(
        "{}/.cache/nonstop-schemathesis-venv/bin/schemathesis",
        std::env::var("HOME").unwrap_or_default()
    );
    for p in [std::env::var("NONSTOP_SCHEMATHESIS").ok(), Some(venv)]
        .into_iter()
        .flatten()
    {
        if Command::new(&p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return p;
        }
    }
    panic!(
        "schemathesis is missing: run `python3 -m venv ~/.cache/nonstop-schemathesis-venv && ~/.cache/nonstop-schemathesis-venv/bin/pip install schemathesis` (as scripts/test does)"
    );
}

/// Operations whose bodies are valid by more than their JSON schema can say: a rule's
/// expressions and templates must parse and its location must name code, a target's URL or
/// DSN must have the vendor's shape, an agent's values take the shape their type gives, a
/// source's branch must be a valid ref name and its folder exist on the server. For
/// them, "every schema-valid body is accepted" (`positive_data_acceptance`) cannot hold;
/// every other check runs on them.
const SEMANTIC: [&str; 4] = [
    "/api/v1/rules",
    "/api/v1/targets",
    "/agent/v1/responses",
    "/api/v1/services/{service}/source",
];

/// Operations that read a service's Git repository: one whose clone failed (a generated
/// source URL names no repository) answers the documented 503 with the reason, by design,
/// which `not_a_server_error` counts as a failure; every other check runs on them.
const GIT_READS: [&str; 3] = [
    "/api/v1/services/{service}/files",
    "/api/v1/services/{service}/files/{path}",
    "/api/v1/services/{service}/resolve",
];

/// Never fuzzed: the live stream (an SSE stream that never ends by design), the agent's
/// WebSocket (not HTTP after the upgrade), and the target test, which sends an event to
/// whatever URL a generated target names (`targets_api.rs` tests it against receivers).
const NEVER: [&str; 3] = [
    "/api/v1/responses/stream",
    "/agent/v1/ws",
    "/api/v1/targets/{name}/test",
];

/// Runs schemathesis with every check but `exclude_checks` on the operations `paths`
/// selects; panics with its report when it finds a failure.
fn run(server: &TestServer, dir: &std::path::Path, paths: &[&str], exclude_checks: Option<&str>) {
    let mut cmd = Command::new(schemathesis());
    cmd.arg("run")
        .arg(server.url("/api/v1/openapi.json"))
        .args(["--url", &server.url("")])
        .args(["--checks", "all"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", server.admin),
        ])
        .args(["--max-examples", "25", "--workers", "1", "--seed", "7"])
        .args(["--request-timeout", "10", "--max-failures", "20"])
        .args(["--warnings", "off", "--no-color"])
        .current_dir(dir);
    for p in paths {
        cmd.args(["--exclude-path", p]);
    }
    if let Some(checks) = exclude_checks {
        cmd.args(["--exclude-checks", checks]);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    // It ran operations, not nothing.
    assert!(text.contains("passed"), "{text}");
}

#[test]
fn the_api_keeps_every_schemathesis_check_over_its_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let document = server.get_json("/api/v1/openapi.json");
    let all: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let all_but = |only: &[&str]| -> Vec<&str> {
        all.iter()
            .copied()
            .filter(|p| NEVER.contains(p) || !only.contains(p))
            .collect()
    };
    // Every other operation, with every check.
    let special: Vec<&str> = SEMANTIC.iter().chain(GIT_READS.iter()).copied().collect();
    let first: Vec<&str> = all
        .iter()
        .copied()
        .filter(|p| NEVER.contains(p) || special.contains(p))
        .collect();
    run(&server, dir.path(), &first, None);
    run(
        &server,
        dir.path(),
        &all_but(&SEMANTIC),
        Some("positive_data_acceptance"),
    );
    run(
        &server,
        dir.path(),
        &all_but(&GIT_READS),
        Some("not_a_server_error"),
    );
}
