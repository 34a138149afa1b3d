//! Sources over the real API: folder and Git sources (a real repository, read at the
//! agent's commit), path mapping by suffix, and errors that say what to do. Also the web
//! IDE's assets: served without a token, gzipped, revalidated by ETag.

mod common;

use common::{FakeAgent, TestServer, eventually};
use nonstop_model::AgentMessage;
use nonstop_server::sources::{GitSource, SourceSpec};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with two commits; the second adds `svc/src/new.rs`. Returns both ids.
fn repo(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir.join("svc/src")).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(
        dir.join("svc/src/lib.rs"),
        "pub fn one() -> u32 {\n    1\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("svc/logo.png"), [0u8, 1, 2]).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "one"]);
    let first = git(dir, &["rev-parse", "HEAD"]);
    std::fs::write(dir.join("svc/src/new.rs"), "pub fn two() {}\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "two"]);
    (first, git(dir, &["rev-parse", "HEAD"]))
}

fn hello(s: &TestServer, id: &str, service: &str, commit: &str) -> FakeAgent {
    let mut a = FakeAgent::open(s.addr, &s.agent);
    a.send(&AgentMessage::Hello {
        agent: serde_json::from_value(json!({"id": id, "service": service, "commit": commit}))
            .unwrap(),
    });
    a.recv_rule_ids();
    a
}

fn get(s: &TestServer, path: &str) -> (u16, Value) {
    let (status, body) = s.call("GET", path, None);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn a_folder_source_lists_code_files_reads_them_and_maps_agent_paths() {
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop");
    for d in ["src/cart", "target/debug", ".git", "lib/cart"] {
        std::fs::create_dir_all(shop.join(d)).unwrap();
    }
    std::fs::write(shop.join("src/cart/mod.rs"), "fn a() {}\n").unwrap();
    std::fs::write(shop.join("lib/cart/mod.rs"), "fn b() {}\n").unwrap();
    std::fs::write(shop.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(shop.join("target/debug/x.rs"), "").unwrap();
    std::fs::write(shop.join(".git/config"), "").unwrap();
    std::fs::write(shop.join("photo.jpg"), [0xff, 0xd8]).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "no").unwrap();
    let s = TestServer::start_at(
        &dir.path().join("data"),
        "127.0.0.1:0".parse().unwrap(),
        |c| {
            c.sources = vec![("shop".into(), SourceSpec::Folder { path: shop.clone() })];
        },
    );

    let tree = s.get_json("/api/v1/services/shop/files");
    assert_eq!(
        tree["files"],
        json!(["lib/cart/mod.rs", "src/cart/mod.rs", "src/main.rs"])
    );
    assert_eq!(tree["status"], json!("ready"));
    let file = s.get_json("/api/v1/services/shop/files/src/main.rs");
    assert_eq!(file["content"], json!("fn main() {}\n"));

    let (status, missing) = get(&s, "/api/v1/services/shop/files/src/gone.rs");
    assert_eq!(status, 404);
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("src/gone.rs is not in the folder")
    );
    let (status, _) = get(
        &s,
        "/api/v1/services/shop/files/src/%2e%2e/%2e%2e/secret.txt",
    );
    assert_eq!(status, 400, "no way out of the folder");

    let one = s.get_json("/api/v1/services/shop/resolve?path=/home/ci/shop/src/main.rs");
    assert_eq!(one["path"], json!("src/main.rs"));
    let two = s.get_json("/api/v1/services/shop/resolve?path=/build/cart/mod.rs");
    assert_eq!(
        (&two["path"], &two["ambiguous"], &two["candidates"]),
        (
            &Value::Null,
            &json!(true),
            &json!(["lib/cart/mod.rs", "src/cart/mod.rs"])
        )
    );
    let (status, none) = get(&s, "/api/v1/services/billing/files");
    assert_eq!(status, 404);
    assert!(
        none["error"]
            .as_str()
            .unwrap()
            .contains("PUT /api/v1/services/billing/source")
    );
}

#[test]
fn a_git_source_is_read_at_the_agents_commit_and_says_when_it_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let (first, second) = repo(&work);
    let s = TestServer::start_at(
        &dir.path().join("data"),
        "127.0.0.1:0".parse().unwrap(),
        |c| {
            c.sources = vec![(
                "svc".into(),
                SourceSpec::Git(GitSource {
                    url: format!("file://{}", work.display()),
                    branch: Some("main".into()),
                    token: None,
                    subdir: Some("svc".into()),
                }),
            )];
        },
    );

    // No agent: the branch head, with a warning that says why.
    let head = s.get_json("/api/v1/services/svc/files");
    assert_eq!(head["files"], json!(["src/lib.rs", "src/new.rs"]));
    assert_eq!(head["at"]["commit"], json!(second));
    assert_eq!(head["at"]["fallback"], json!(true));
    assert!(
        head["at"]["warning"]
            .as_str()
            .unwrap()
            .contains("NONSTOP_COMMIT")
    );

    // An agent at the first commit: files as they were there.
    let _a = hello(&s, "a-1", "svc", &first[..12]);
    let at = s.get_json("/api/v1/services/svc/files");
    assert_eq!(at["files"], json!(["src/lib.rs"]));
    assert_eq!(
        (
            &at["at"]["commit"],
            &at["at"]["fallback"],
            &at["at"]["reported_by"]
        ),
        (&json!(first), &json!(false), &json!("a-1"))
    );
    let (status, e) = get(&s, "/api/v1/services/svc/files/src/new.rs");
    assert_eq!(status, 404);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("src/new.rs is not in svc's repository at commit"),
        "{e}"
    );
    let lib = s.get_json("/api/v1/services/svc/files/src/lib.rs");
    assert_eq!(lib["content"], json!("pub fn one() -> u32 {\n    1\n}\n"));
    // ?commit= wins over the agents'.
    let later = s.get_json(&format!(
        "/api/v1/services/svc/files/src/new.rs?commit={second}"
    ));
    assert_eq!(later["content"], json!("pub fn two() {}\n"));

    // A commit the repository does not have: the head, flagged.
    let unknown = s.get_json("/api/v1/services/svc/files?commit=deadbeef");
    assert_eq!(unknown["at"]["fallback"], json!(true));
    assert!(
        unknown["at"]["warning"]
            .as_str()
            .unwrap()
            .contains("deadbeef")
    );
    let (status, _) = get(&s, "/api/v1/services/svc/files?commit=--upload-pack=x");
    assert_eq!(status, 400);
    let r = s.get_json("/api/v1/services/svc/resolve?path=/home/ci/repo/svc/src/lib.rs");
    assert_eq!(r["path"], json!("src/lib.rs"));

    // A rollout: agents at two commits. The newest seen is shown, and the mix is said.
    let _b = hello(&s, "b-1", "svc", &second);
    let mixed = s.get_json("/api/v1/services/svc/files");
    assert_eq!(mixed["at"]["commit"], json!(second));
    assert!(
        mixed["at"]["warning"]
            .as_str()
            .unwrap()
            .contains("run 2 commits"),
        "{mixed}"
    );
}

#[test]
fn a_source_set_through_the_api_is_cloned_in_the_background_and_errors_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    repo(&work);
    let s = TestServer::start(&dir.path().join("data"));
    let (status, body) = raw_put(&s, "svc", r#"{"branch": "main"}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = raw_put(
        &s,
        "svc",
        &json!({"url": format!("file://{}", work.display()), "subdir": "svc", "token": "s3cret"})
            .to_string(),
    );
    assert_eq!(status, 202, "{body}");
    assert!(!body.contains("s3cret"), "the token is never shown back");
    let tree = s.get_json("/api/v1/services/svc/files");
    assert_eq!(tree["files"], json!(["src/lib.rs", "src/new.rs"]));

    let (status, _) = raw_put(&s, "gone", r#"{"url": "file:///nonexistent/repo.git"}"#);
    assert_eq!(status, 202);
    let err = eventually(|| {
        let all = s.get_json("/api/v1/services");
        let g = all
            .as_array()?
            .iter()
            .find(|x| x["service"] == "gone")?
            .clone();
        (g["status"] == json!("error")).then_some(g)
    });
    assert!(
        err["error"].as_str().unwrap().contains("cannot clone"),
        "{err}"
    );
    let (status, e) = get(&s, "/api/v1/services/gone/files");
    assert_eq!(status, 503);
    assert!(e["error"].as_str().unwrap().contains("cannot clone"));
    // Sources set through the API survive a restart.
    let data = dir.path().join("data");
    s.stop();
    let s = TestServer::start(&data);
    let all = s.get_json("/api/v1/services");
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|x| x["service"] == "svc")
    );
}

fn raw_put(s: &TestServer, service: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .put(s.url(&format!("/api/v1/services/{service}/source")))
        .header("Authorization", format!("Bearer {}", s.admin))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

#[test]
fn the_ide_page_is_served_without_a_token_gzipped_and_revalidated() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let page = agent.get(s.url("/")).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.headers().contains_key("content-security-policy"));
    let js = agent
        .get(s.url("/assets/js/main.js"))
        .header("Accept-Encoding", "gzip")
        .call()
        .unwrap();
    assert_eq!(js.headers()["content-encoding"], "gzip");
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = js.headers()["etag"].to_str().unwrap().to_string();
    let again = agent
        .get(s.url("/assets/js/main.js"))
        .header("If-None-Match", &etag)
        .call()
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    let missing = agent.get(s.url("/assets/nope.js")).call().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    // The API still wants the token.
    let api = agent.get(s.url("/api/v1/services")).call().unwrap();
    assert_eq!(api.status().as_u16(), 401);
}

#[test]
fn sources_saved_by_an_older_server_are_imported_into_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    repo(&work);
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sources")).unwrap();
    let saved = json!({"svc": {"url": format!("file://{}", work.display()), "subdir": "svc"}});
    std::fs::write(data.join("sources/sources.json"), saved.to_string()).unwrap();
    let s = TestServer::start(&data);
    assert!(!data.join("sources/sources.json").exists());
    assert_eq!(
        std::fs::read_to_string(data.join("sources/sources.json.imported")).unwrap(),
        saved.to_string()
    );
    let tree = eventually(|| {
        let t = s.get_json("/api/v1/services/svc/files");
        t["files"].is_array().then_some(t)
    });
    assert_eq!(tree["files"], json!(["src/lib.rs", "src/new.rs"]));
    // Kept in the store: there after a restart, with the file gone.
    s.stop();
    let s = TestServer::start(&data);
    let all = s.get_json("/api/v1/services");
    let svc = all
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["service"] == "svc")
        .cloned()
        .unwrap();
    assert_eq!(
        svc["source"],
        json!({"kind": "git", "url": format!("file://{}", work.display()), "branch": null,
               "subdir": "svc", "has_token": false})
    );
}
