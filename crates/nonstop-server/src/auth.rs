//! Tokens: `admin.token` opens every route, `agent.token` only the agent routes.
//!
//! Tokens travel as `Authorization: Bearer TOKEN`. A browser may pass `?token=` once on
//! a `GET`; the server then sets an HTTP-only cookie so the address bar can drop it.

use crate::app::App;
use crate::error::ApiError;
use crate::ids::same;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The cookie that carries the admin token for the browser.
pub const COOKIE: &str = "nonstop_token";

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
