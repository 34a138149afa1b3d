//! HTTPS with a certificate made for the test (in-process, by the testkit; nothing to
//! install, never skipped): the API over TLS, and the agent's `Link` to an `https://`
//! server. The Link module is compiled in here by path, as in `link.rs`.

mod common;
#[path = "../../nonstop-agent/src/connection.rs"]
#[allow(dead_code)]
mod connection;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

fn tls_server(dir: &Path, cert: &Path, key: &Path) -> common::TestServer {
    let files = nonstop_server::tls::TlsFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    common::TestServer::start_at(&dir.join("data"), "127.0.0.1:0".parse().unwrap(), |c| {
        c.tls = Some(files)
    })
}

/// Sends `request` over TLS trusting `cert`; returns the whole answer.
fn https(addr: SocketAddr, cert: &Path, request: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    tls.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    answer
}

fn https_get(addr: SocketAddr, cert: &Path, path: &str, token: &str) -> String {
    https(
        addr,
        cert,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    )
}

#[test]
fn the_server_speaks_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let nonstop_testkit::tls::TestCert { cert, key } =
        nonstop_testkit::tls::self_signed(dir.path());
    let s = tls_server(dir.path(), &cert, &key);
    assert_eq!(
        s.handle.as_ref().unwrap().url(),
        format!("https://{}", s.addr)
    );
    let answer = https_get(s.addr, &cert, "/api/v1/rules", &s.admin);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("[]"), "{answer}");

    // Plain HTTP on the TLS port gets no answer.
    let plain: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    let r = plain.get(format!("http://{}/healthz", s.addr)).call();
    assert!(r.is_err(), "plain HTTP was answered on the TLS port");
}

#[test]
fn the_link_reaches_an_https_server_that_it_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let nonstop_testkit::tls::TestCert { cert, key } =
        nonstop_testkit::tls::self_signed(dir.path());
    let s = tls_server(dir.path(), &cert, &key);
    let body = r#"{"at":"src/cart.rs:42","action":"log","template":"{n}"}"#;
    let answer = https(
        s.addr,
        &cert,
        &format!(
            "POST /api/v1/rules HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.admin,
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let json = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let rule = v["rule"]["id"].as_str().unwrap().to_string();

    let config = connection::LinkConfig::new(
        format!("https://{}", s.addr),
        Some(s.agent.clone()),
        common::info("tls-agent", "checkout"),
    );
    let link = connection::Link::start_trusting(config, cert.clone());
    let rules = common::eventually(|| link.latest_rules());
    assert_eq!(rules[0].id, rule);
    link.send_responses(vec![common::response(&rule, "tls-agent", 1)]);
    common::eventually(|| {
        let answer = https_get(s.addr, &cert, "/api/v1/responses", &s.admin);
        answer.contains("\"hit 1\"").then_some(())
    });
    link.stop();

    // Without trusting the certificate the link does not connect.
    let untrusting = connection::Link::start(connection::LinkConfig::new(
        format!("https://{}", s.addr),
        Some(s.agent.clone()),
        common::info("tls-agent-2", "checkout"),
    ));
    // The event: its first attempt ended, and said why.
    let problem = common::eventually(|| untrusting.problem());
    assert!(problem.contains("invalid peer certificate"), "{problem}");
    assert!(!untrusting.connected());
    untrusting.stop();
}
