//! Ids and tokens: which names are valid ids, new rule ids and tokens from the operating
//! system's randomness, and comparing tokens in constant time.
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use nonstop_model::check::is_valid_id;

/// A new rule id: `r-` and 8 base32 characters (40 random bits).
pub fn new_rule_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 5];
    fill_random(&mut bytes);
    let bits = bytes.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    let mut id = String::from("r-");
    for i in (0..8).rev() {
        id.push(ALPHABET[((bits >> (i * 5)) & 31) as usize] as char);
    }
    id
}

/// Fills `buf` with random bytes from the operating system.
pub fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // No OS randomness: fall back to the clock and address-space layout; tokens are then
        // weak, so say so.
        tracing::warn!("the operating system gave no random bytes; tokens and ids are weak");
        let seed = crate::clock::now_ms() as u64 ^ (buf.as_ptr() as u64);
        let mut x = seed | 1;
        for b in buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
}

pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The two tokens of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Accepted on every route.
    pub admin: String,
    /// Accepted on `/agent/v1/…` only.
    pub agent: String,
}

/// Reads `DATA/admin.token` and `DATA/agent.token`, writing new ones (mode 0600) when absent.
pub fn load_or_create(data: &Path) -> std::io::Result<Tokens> {
    Ok(Tokens {
        admin: load_or_create_one(&data.join("admin.token"))?,
        agent: load_or_create_one(&data.join("agent.token"))?,
    })
}

/// Writes `tokens` to `DATA/admin.token` and `DATA/agent.token` (mode 0600), replacing
/// what was there (a replica taking the tokens its replicas agreed on).
pub fn save(data: &Path, tokens: &Tokens) -> std::io::Result<()> {
    for (name, token) in [
        ("admin.token", &tokens.admin),
        ("agent.token", &tokens.agent),
    ] {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(data.join(name))?;
        writeln!(f, "{token}")?;
    }
    Ok(())
}

fn load_or_create_one(path: &Path) -> std::io::Result<String> {
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = new_token();
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{token}")?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_created_once_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create(dir.path()).unwrap();
        assert_eq!(t.admin.len(), 64);
        assert_ne!(t.admin, t.agent);
        let mode = std::fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), t);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
