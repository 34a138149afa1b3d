//! Loopback receivers and realistic responses for the targets' tests.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use nonstop_model::{AgentInfo, Data, Frame, Locals, Response, SourceLocation, Value};
use nonstop_sinks::{Delivery, Payload, SinkContext};
use std::sync::{Arc, Mutex};

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no header {name} in {:?}", self.headers))
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What the receiver answers: status, headers, body; given the request and its number
/// (0-based).
pub type Reply = Arc<dyn Fn(&Req, usize) -> Answer + Send + Sync>;

/// Status, headers, body.
pub type Answer = (u16, Vec<(String, String)>, Vec<u8>);

#[derive(Clone)]
struct St {
    seen: Arc<Mutex<Vec<Req>>>,
    reply: Reply,
}

/// A loopback HTTP receiver recording every request.
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Receiver {
    pub fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(st): State<St>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let req = Req {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body: body.to_vec(),
    };
    let n = {
        let mut seen = st.seen.lock().unwrap();
        seen.push(req.clone());
        seen.len() - 1
    };
    let (status, headers, body) = (st.reply)(&req, n);
    let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

/// Starts a receiver answering with `reply`.
pub async fn receiver(reply: impl Fn(&Req, usize) -> Answer + Send + Sync + 'static) -> Receiver {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let st = St {
        seen: seen.clone(),
        reply: Arc::new(reply),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(handle).with_state(st);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver {
        url: format!("http://{addr}"),
        seen,
    }
}

/// A receiver answering `status` with no body to everything.
pub async fn answering(status: u16) -> Receiver {
    receiver(move |_, _| (status, vec![], vec![])).await
}

fn v(ty: &str, data: Data) -> Value {
    Value::new(ty, data)
}

/// A snapshot of `shop::cart::add` with locals of many kinds (or a log with `message`).
pub fn response(message: Option<&str>) -> Response {
    let mut name = v("alloc::string::String", Data::Str("widget-deluxe".into()));
    name.truncated = true;
    let mut owner = v(
        "core::option::Option<&str>",
        Data::List(vec![v("&str", Data::Str("ann".into()))]),
    );
    owner.variant = Some("Some".into());
    let cart = v(
        "shop::cart::Cart",
        Data::Map(vec![
            ("id".into(), v("u64", Data::Uint(7))),
            (
                "items".into(),
                v(
                    "alloc::vec::Vec<shop::cart::Item>",
                    Data::List(vec![v(
                        "shop::cart::Item",
                        Data::Map(vec![
                            ("sku".into(), v("&str", Data::Str("A1".into()))),
                            ("qty".into(), v("i32", Data::Int(-2))),
                        ]),
                    )]),
                ),
            ),
            ("owner".into(), owner),
        ]),
    );
    let mut token = v("alloc::string::String", Data::Null);
    token.redacted = true;
    Response {
        rule: "r-7".into(),
        agent: "web-1-4242-ab12".into(),
        service: "shop".into(),
        time: "2026-12-04T10:00:00.250Z".into(),
        thread: "tokio-runtime-worker".into(),
        location: SourceLocation {
            file: "src/cart.rs".into(),
            line: 42,
            function: "shop::cart::add".into(),
        },
        message: message.map(str::to_string),
        frames: vec![
            Frame {
                function: "shop::cart::add".into(),
                file: Some("src/cart.rs".into()),
                line: Some(42),
                folded: vec![],
            },
            Frame {
                function: "shop::api::handle".into(),
                file: Some("src/api.rs".into()),
                line: Some(17),
                folded: vec![],
            },
            Frame {
                function: "shop::main".into(),
                file: Some("src/main.rs".into()),
                line: Some(9),
                folded: vec![],
            },
        ],
        locals: Locals(vec![
            ("qty".into(), v("u32", Data::Uint(3))),
            ("name".into(), name),
            ("price".into(), v("f64", Data::Float(9.5))),
            ("ok".into(), v("bool", Data::Bool(true))),
            ("cart".into(), cart),
            ("token".into(), token),
            ("gone".into(), Value::error("u64", "optimized out")),
        ]),
        watch: Locals(vec![("qty * 2".into(), v("i64", Data::Int(6)))]),
    }
}

pub fn delivery(id: &str, message: Option<&str>) -> Delivery {
    Delivery {
        id: id.into(),
        payload: Payload::Response(response(message)),
        link: Some(format!("http://nonstop.test/responses/{id}")),
    }
}

/// A context that knows the agent of [`response`].
pub fn context() -> SinkContext {
    SinkContext {
        agents: Some(Arc::new(|id: &str| {
            (id == "web-1-4242-ab12").then(|| AgentInfo {
                id: id.into(),
                service: "shop".into(),
                version: Some("1.4.2".into()),
                commit: None,
                host: "web-1".into(),
                pid: 4242,
                labels: Default::default(),
                started: "2026-12-04T09:00:00Z".into(),
            })
        })),
        ..Default::default()
    }
}
