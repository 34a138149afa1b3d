//! Tokens: `admin.token` opens every route, `agent.token` only the agent routes.
//!
//! Tokens travel as `Authorization: Bearer TOKEN`. A browser may pass `?token=` once on
//! a `GET`; the server then sets an HTTP-only cookie so the address bar can drop it.

use crate::App;
use crate::api::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// The cookie that carries the admin token for the browser.
pub const COOKIE: &str = "nonstop_token";

/// The two tokens of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Accepted on every route.
    pub admin: String,
    /// Accepted on `/agent/v1/…` only.
    pub agent: String,
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

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `DATA/admin.token` and `DATA/agent.token`, writing new ones (mode 0600) when absent.
pub fn load_or_create(data: &Path) -> std::io::Result<Tokens> {
    Ok(Tokens {
        admin: load_or_create_one(&data.join("admin.token"))?,
        agent: load_or_create_one(&data.join("agent.token"))?,
    })
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

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token a request carries, and whether it came from `?token=`.
fn presented(req: &Request) -> Option<(String, bool)> {
    let headers = req.headers();
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some((t.trim().to_string(), false));
    }
    if let Some(q) = req.uri().query() {
        for pair in q.split('&') {
            if let Some(t) = pair.strip_prefix("token=") {
                return Some((t.to_string(), true));
            }
        }
    }
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            if let Some(t) = c
                .trim()
                .strip_prefix(COOKIE)
                .and_then(|r| r.strip_prefix('='))
            {
                return Some((t.to_string(), false));
            }
        }
    }
    None
}

fn missing() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing token: send `Authorization: Bearer TOKEN` with the token in DATA/admin.token (`nonstop serve` prints where DATA is)",
    )
    .into_response()
}

fn wrong() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "wrong token: use the one in DATA/admin.token (agents: DATA/agent.token)",
    )
    .into_response()
}

/// Middleware for admin routes (`/`, `/api/v1/…`).
pub async fn require_admin(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(tokens) = &app.tokens else {
        return next.run(req).await;
    };
    let Some((token, from_query)) = presented(&req) else {
        return missing();
    };
    if same(&token, &tokens.admin) {
        let set_cookie = from_query && req.method() == Method::GET;
        let mut resp = next.run(req).await;
        if set_cookie
            && let Ok(v) = HeaderValue::from_str(&format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            ))
        {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        return resp;
    }
    if same(&token, &tokens.agent) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the agent token opens only /agent/v1/…: use the admin token (DATA/admin.token) here",
        )
        .into_response();
    }
    wrong()
}

/// How to give Prometheus the token, for the answers of `/metrics`.
const SCRAPE_HELP: &str = "in prometheus.yml give the scrape job `authorization: {credentials_file: DATA/admin.token}` (`nonstop serve` prints where DATA is); by hand: `curl -H \"Authorization: Bearer $(cat DATA/admin.token)\" …/metrics`";

fn scrape_refused(status: StatusCode, what: &str) -> Response {
    let mut resp = ApiError::new(status, format!("{what}: {SCRAPE_HELP}")).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"nonstop\""),
    );
    resp
}

/// Middleware for `/metrics`: the admin token, with answers that say how to set up a
/// Prometheus scrape.
pub async fn require_admin_scrape(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(tokens) = &app.tokens else {
        return next.run(req).await;
    };
    match presented(&req) {
        Some((t, _)) if same(&t, &tokens.admin) => next.run(req).await,
        Some((t, _)) if same(&t, &tokens.agent) => scrape_refused(
            StatusCode::FORBIDDEN,
            "the agent token does not open /metrics, the admin token does",
        ),
        Some(_) => scrape_refused(StatusCode::UNAUTHORIZED, "wrong token for /metrics"),
        None => scrape_refused(
            StatusCode::UNAUTHORIZED,
            "/metrics needs the admin token as `Authorization: Bearer TOKEN`",
        ),
    }
}

/// Middleware for agent routes (`/agent/v1/…`): agent or admin token.
pub async fn require_agent(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(tokens) = &app.tokens else {
        return next.run(req).await;
    };
    match presented(&req) {
        None => missing(),
        Some((t, _)) if same(&t, &tokens.agent) || same(&t, &tokens.admin) => next.run(req).await,
        Some(_) => wrong(),
    }
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
        let mode = fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), t);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
