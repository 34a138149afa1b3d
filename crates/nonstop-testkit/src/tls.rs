//! TLS certificates for tests, made in-process with rcgen: nothing to install, nothing to
//! skip.

use std::path::{Path, PathBuf};

/// A self-signed certificate and its private key, written as PEM files.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate (PEM); trusting it trusts the server.
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// A self-signed end-entity certificate for `127.0.0.1` and `localhost` (a fresh ECDSA P-256
/// key), written to `DIR/cert.pem` and `DIR/key.pem`.
pub fn self_signed(dir: &Path) -> TestCert {
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let made = rcgen::generate_simple_self_signed(names)
        .unwrap_or_else(|e| panic!("cannot make a test certificate: {e}"));
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    for (path, text) in [
        (&cert, made.cert.pem()),
        (&key, made.signing_key.serialize_pem()),
    ] {
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    TestCert { cert, key }
}
