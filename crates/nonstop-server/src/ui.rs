//! The web IDE: the files of `web/`, embedded in the binary and served at `/` and
//! `/assets/…`.
//!
//! The page and its assets carry no secret, so they are served without a token; the page
//! then calls the API, which asks for one, and says in place what to do when it is missing
//! or wrong. Each asset is gzipped once, at first use, and answered gzipped when the
//! browser accepts it; an `ETag` (a hash of the bytes) lets the browser revalidate cheaply
//! (`Cache-Control: no-cache`, since the names carry no version).

use crate::app::App;
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::io::Write;
use std::sync::{Arc, OnceLock};

/// The files of `web/` (without its tests): name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../web/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../../web/favicon.svg"),
    ),
    ("js/main.js", JS, include_bytes!("../../../web/js/main.js")),
    ("js/api.js", JS, include_bytes!("../../../web/js/api.js")),
    ("js/dom.js", JS, include_bytes!("../../../web/js/dom.js")),
    (
        "js/highlight.js",
        JS,
        include_bytes!("../../../web/js/highlight.js"),
    ),
    ("js/tree.js", JS, include_bytes!("../../../web/js/tree.js")),
    ("js/code.js", JS, include_bytes!("../../../web/js/code.js")),
    (
        "js/rules.js",
        JS,
        include_bytes!("../../../web/js/rules.js"),
    ),
    (
        "js/ruleform.js",
        JS,
        include_bytes!("../../../web/js/ruleform.js"),
    ),
    (
        "js/responses.js",
        JS,
        include_bytes!("../../../web/js/responses.js"),
    ),
    (
        "js/agents.js",
        JS,
        include_bytes!("../../../web/js/agents.js"),
    ),
    (
        "js/panes.js",
        JS,
        include_bytes!("../../../web/js/panes.js"),
    ),
    (
        "js/metrics.js",
        JS,
        include_bytes!("../../../web/js/metrics.js"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";

/// Smaller files are not worth compressing.
const GZIP_MIN: usize = 1024;

struct Asset {
    content_type: &'static str,
    raw: &'static [u8],
    gzip: Option<Vec<u8>>,
    etag: HeaderValue,
}

fn assets() -> &'static [(&'static str, Asset)] {
    static ASSETS: OnceLock<Vec<(&'static str, Asset)>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|&(name, content_type, raw)| {
                let hash = raw.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
                let etag = HeaderValue::from_str(&format!("\"{hash:016x}\""))
                    .unwrap_or(HeaderValue::from_static("\"0\""));
                let gzip = (raw.len() >= GZIP_MIN)
                    .then(|| {
                        let mut enc =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                        enc.write_all(raw).ok()?;
                        enc.finish().ok()
                    })
                    .flatten();
                (
                    name,
                    Asset {
                        content_type,
                        raw,
                        gzip,
                        etag,
                    },
                )
            })
            .collect()
    })
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some((_, asset)) = assets().iter().find(|(n, _)| *n == name) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no asset {name}: the web IDE is at /"),
        )
        .into_response();
    };
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, asset.etag.clone()),
        (header::VARY, HeaderValue::from_static("accept-encoding")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == asset.etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    )];
    match &asset.gzip {
        Some(gz) if gzip_ok => (
            common,
            content_type,
            [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))],
            gz.clone(),
        )
            .into_response(),
        _ => (common, content_type, asset.raw).into_response(),
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `GET /`: the IDE page. With the admin token in `?token=`, it also sets the token's
/// cookie (as the API does); a wrong token still gets the page, which says what is wrong.
pub async fn index(State(app): State<Arc<App>>, uri: Uri, headers: HeaderMap) -> Response {
    let mut resp = serve("index.html", &headers);
    let given = uri
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("token=")));
    if let (Some(tokens), Some(t)) = (&app.tokens, given)
        && same(t, &tokens.admin)
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{}={t}; Path=/; HttpOnly; SameSite=Strict",
            crate::auth::COOKIE
        ))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    // The page runs only its own scripts and talks only to this server.
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    resp
}

/// `GET /assets/{*path}`: the page's scripts, styles and icons.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_there_and_scripts_import_only_embedded_modules() {
        let names: Vec<&str> = FILES.iter().map(|f| f.0).collect();
        for (name, _, raw) in FILES {
            let text = std::str::from_utf8(raw).unwrap();
            if name.ends_with(".js") {
                for line in text.lines().filter(|l| l.starts_with("import ")) {
                    let from = line.rsplit_once("from '").map(|x| x.1).unwrap_or("");
                    let module = from.trim_end_matches("';").trim_start_matches("./");
                    assert!(
                        names.contains(&format!("js/{module}").as_str()),
                        "{name} imports {module}, which is not embedded"
                    );
                }
            }
        }
        assert!(
            assets()
                .iter()
                .all(|(_, a)| a.raw.len() < GZIP_MIN || a.gzip.is_some())
        );
    }
}
