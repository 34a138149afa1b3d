//! The server reads Git repositories in-process (gix): `nonstop serve` started with no
//! `git` program anywhere on its PATH clones a repository and serves its files at a commit.

use nonstop_testkit::{free_port, wait_for};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git runs (the test makes its repository with it)");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_server_without_git_on_its_path_serves_a_repository_at_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("src/lib.rs"), "pub fn one() -> u32 {\n    1\n}\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("src/lib.rs"), "pub fn one() -> u32 {\n    2\n}\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);

    // A PATH with nothing on it: no git, no ssh, no shell.
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_nonstop"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(&data)
            .arg("--source")
            .arg(format!("svc=file://{}#main", repo.display()))
            .env("PATH", &empty)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let token = wait_for("the admin token", Duration::from_secs(20), || {
        std::fs::read_to_string(data.join("admin.token")).ok()
    });
    let token = token.trim().to_string();
    let get = |path: &str| -> Option<serde_json::Value> {
        let mut r = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .ok()?;
        r.body_mut().read_json().ok()
    };
    // The clone runs in the background; the files answer once it is there.
    let files = wait_for("the repository's files", Duration::from_secs(30), || {
        get("/api/v1/services/svc/files")
    });
    assert_eq!(files["files"], serde_json::json!(["src/lib.rs"]));
    let head = get("/api/v1/services/svc/files/src/lib.rs").unwrap();
    assert_eq!(
        head["content"],
        serde_json::json!("pub fn one() -> u32 {\n    2\n}\n")
    );
    let old = get(&format!(
        "/api/v1/services/svc/files/src/lib.rs?commit={first}"
    ))
    .unwrap();
    assert_eq!(
        old["content"],
        serde_json::json!("pub fn one() -> u32 {\n    1\n}\n")
    );
    assert_eq!(old["at"]["commit"], serde_json::json!(first));
}
