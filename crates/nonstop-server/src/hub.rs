//! The agent hub: the WebSocket sessions and the HTTP path for serverless agents.

use crate::app::{App, Link};
use crate::checks;
use crate::clock::now_ms;
use crate::error::{ApiError, parse_json};
use crate::store::{BatchWrite, responses_in};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use nonstop_model::{AgentInfo, AgentMessage, Rule, ServerMessage};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Largest message an agent may send on the WebSocket.
pub const MAX_AGENT_MESSAGE: usize = 8 << 20;
/// What a session reads from its socket at a time. tungstenite's default (128 KiB, zeroed
/// up front) is most of what an idle agent costs; a larger message still grows the buffer
/// to its size while it is read.
const WS_READ_BUFFER: usize = 8 << 10;
/// Bytes a session's writes gather before they go out (sends flush anyway).
const WS_WRITE_BUFFER: usize = 8 << 10;
/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Close codes (RFC 6455).
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_INVALID: u16 = 1007;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_AWAY: u16 = 1001;

/// `GET /agent/v1/ws`
pub async fn ws(State(app): State<Arc<App>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .max_message_size(MAX_AGENT_MESSAGE)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| session(app, socket))
}

fn text(msg: &ServerMessage) -> Message {
    // Serialising our own message types cannot fail; an empty object keeps the peer going if it did.
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(msg).unwrap_or_else(|_| "{}".into()),
    ))
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(text(&ServerMessage::Error {
            message: reason.to_string(),
        }))
        .await;
    // Close reasons are limited to 123 bytes.
    let mut r = reason.to_string();
    while r.len() > 120 {
        r.pop();
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(r),
        })))
        .await;
}

async fn session(app: Arc<App>, mut socket: WebSocket) {
    let info = match tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<AgentMessage>(&t) {
            Ok(AgentMessage::Hello { agent }) => agent,
            Ok(_) => {
                tracing::warn!("agent connection closed: first message was not a hello");
                close(
                    &mut socket,
                    CLOSE_POLICY,
                    "the first message must be a hello",
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "agent connection closed: malformed hello");
                close(
                    &mut socket,
                    CLOSE_INVALID,
                    &format!("malformed message: {e}"),
                )
                .await;
                return;
            }
        },
        Ok(Some(Ok(_))) => {
            close(
                &mut socket,
                CLOSE_UNSUPPORTED,
                "send JSON text frames, starting with a hello",
            )
            .await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            close(&mut socket, CLOSE_POLICY, "no hello within 10 s").await;
            return;
        }
    };
    if let Err(reason) = checks::hello(&info) {
        tracing::warn!(%reason, "agent connection closed: bad hello");
        close(&mut socket, CLOSE_POLICY, &reason).await;
        return;
    }
    let id = info.id.clone();
    let hello = info.clone();
    if let Err(e) = app
        .blocking(move |s| s.upsert_agent(&hello, true, now_ms()))
        .await
    {
        tracing::error!(agent = %id, "cannot record agent: {e:?}");
        close(
            &mut socket,
            1011,
            "the server cannot record agents now; retrying later helps",
        )
        .await;
        return;
    }
    app.connection_opened(&id);
    tracing::info!(agent = %id, service = %info.service, "agent connected");
    let reason = run_session(&app, &mut socket, info).await;
    app.connection_closed(&id).await;
    tracing::info!(agent = %id, %reason, "agent disconnected");
}

/// Serves one connected agent until it goes; returns why it ended.
async fn run_session(app: &Arc<App>, socket: &mut WebSocket, mut info: AgentInfo) -> String {
    let mut changes = app.rules_gen.subscribe();
    let mut shutdown = app.shutdown.clone();
    let mut sent: Option<Vec<Rule>> = None;
    loop {
        // (Re)send the rule set when it differs from what this agent has.
        changes.mark_unchanged();
        match app.rules_for(&info).await {
            Ok(rules) if sent.as_ref() != Some(&rules) => {
                if socket
                    .send(text(&ServerMessage::Rules {
                        rules: rules.clone(),
                    }))
                    .await
                    .is_err()
                {
                    return "send failed".into();
                }
                sent = Some(rules);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(agent = %info.id, "cannot compute rules: {e:?}"),
        }
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() { return "server stopping".into(); }
                    break;
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    close(socket, CLOSE_AWAY, "the server is stopping").await;
                    return "server stopping".into();
                }
                msg = socket.recv() => {
                    let mut next = Some(msg);
                    let mut changed = false;
                    while let Some(msg) = next.take() {
                        let t = match frame(socket, msg).await {
                            Frame::Text(t) => t,
                            Frame::Skip => continue,
                            Frame::End(reason) => return reason,
                        };
                        let msg = match serde_json::from_str::<AgentMessage>(&t) {
                            Ok(m) => m,
                            Err(e) => {
                                let reason = format!("malformed message: {e}");
                                tracing::warn!(agent = %info.id, %reason, "closing agent connection");
                                close(socket, CLOSE_INVALID, &reason).await;
                                return reason;
                            }
                        };
                        // A message out of bounds is refused whole, with the reason; the
                        // connection goes on.
                        if let Err(e) = checks::message(&msg) {
                            tracing::warn!(agent = %info.id, reason = %e, "agent message refused");
                            let _ = socket.send(text(&ServerMessage::Error { message: e })).await;
                            continue;
                        }
                        let replies = match batch_write(msg) {
                            Step::Write(first) => {
                                // What the agent sent meanwhile is stored with it, in one
                                // transaction; the first frame that cannot join comes next.
                                let mut writes = vec![first];
                                next = take_buffered(socket, &mut writes);
                                store_writes(app, &info, writes).await
                            }
                            Step::Alone(msg) => {
                                let before = info.clone();
                                let handled = handle(app, &mut info, msg).await;
                                // A hello that changed what selects rules: recompute the set.
                                changed |= info != before;
                                match handled {
                                    Ok(reply) => reply.into_iter().collect(),
                                    Err(message) => vec![ServerMessage::Error { message }],
                                }
                            }
                        };
                        for reply in replies {
                            if socket.send(text(&reply)).await.is_err() {
                                return "send failed".into();
                            }
                        }
                    }
                    if changed {
                        break;
                    }
                }
            }
        }
    }
}

/// Most messages of one agent stored in one transaction, when its frames arrive faster
/// than they are stored.
const MAX_BATCH_MESSAGES: usize = 256;
/// Most responses stored in one transaction, so one agent's burst does not hold the
/// store for long.
const MAX_BATCH_RESPONSES: usize = 2_000;

/// A frame read from an agent, as the session sees it.
enum Frame {
    Text(Utf8Bytes),
    /// A control frame (tungstenite answers pings).
    Skip,
    /// The session ends, for this reason (the close frame, if any, was sent).
    End(String),
}

async fn frame(socket: &mut WebSocket, msg: Option<Result<Message, axum::Error>>) -> Frame {
    match msg {
        None => Frame::End("connection closed".into()),
        Some(Err(e)) => {
            let err = e.to_string();
            // tungstenite names the frame that broke the protocol; say it in the close
            // frame too.
            if err.contains("Space limit exceeded") || err.contains("too long") {
                let reason = format!("message too big: at most {MAX_AGENT_MESSAGE} bytes");
                close(socket, CLOSE_TOO_BIG, &reason).await;
                return Frame::End(reason);
            }
            if err.to_ascii_lowercase().contains("utf-8") {
                let reason = "text frame not UTF-8";
                close(socket, CLOSE_INVALID, reason).await;
                return Frame::End(reason.into());
            }
            Frame::End(format!("connection error: {err}"))
        }
        Some(Ok(Message::Text(t))) => Frame::Text(t),
        Some(Ok(Message::Close(_))) => Frame::End("agent closed".into()),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Frame::Skip,
        Some(Ok(Message::Binary(_))) => {
            let reason = "binary frames are not supported: send JSON text frames";
            close(socket, CLOSE_UNSUPPORTED, reason).await;
            Frame::End(reason.into())
        }
    }
}

/// A checked message as the session handles it.
enum Step {
    /// A store write that can share a transaction with others.
    Write(BatchWrite),
    /// Any other message, handled alone.
    Alone(AgentMessage),
}

fn batch_write(msg: AgentMessage) -> Step {
    match msg {
        AgentMessage::Responses { responses, dropped } => {
            Step::Write(BatchWrite::Responses { responses, dropped })
        }
        AgentMessage::Status { statuses } => Step::Write(BatchWrite::Statuses(statuses)),
        other => Step::Alone(other),
    }
}

/// Adds to `writes` the messages already received on `socket` that can join them (checked
/// `responses` and `status` messages), without waiting, up to [`MAX_BATCH_MESSAGES`] and
/// [`MAX_BATCH_RESPONSES`]. Returns the first frame that cannot join, to handle next.
fn take_buffered(
    socket: &mut WebSocket,
    writes: &mut Vec<BatchWrite>,
) -> Option<Option<Result<Message, axum::Error>>> {
    let mut responses = responses_in(writes);
    while writes.len() < MAX_BATCH_MESSAGES && responses < MAX_BATCH_RESPONSES {
        let msg = socket.recv().now_or_never()?;
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return Some(other),
        };
        match serde_json::from_str::<AgentMessage>(&t) {
            Ok(m) if checks::message(&m).is_ok() => match batch_write(m) {
                Step::Write(w) => {
                    responses += responses_in(std::slice::from_ref(&w));
                    writes.push(w);
                }
                // Parsed again when handled: such messages are rare.
                Step::Alone(_) => return Some(Some(Ok(Message::Text(t)))),
            },
            _ => return Some(Some(Ok(Message::Text(t)))),
        }
    }
    None
}

/// Stores a connected agent's writes in one store call; returns the replies, in order: an
/// `error` for each `responses` message with responses for unknown rules, or for each
/// message when the store failed.
async fn store_writes(
    app: &Arc<App>,
    info: &AgentInfo,
    writes: Vec<BatchWrite>,
) -> Vec<ServerMessage> {
    let failed: Vec<&'static str> = writes
        .iter()
        .map(|w| match w {
            BatchWrite::Statuses(_) => "the server could not record the status",
            _ => "the server could not store the responses",
        })
        .collect();
    match app.write_batch(info, Link::Session, writes).await {
        Ok(notes) => notes
            .into_iter()
            .flatten()
            .map(|message| ServerMessage::Error { message })
            .collect(),
        Err(e) => {
            tracing::error!(agent = %info.id, "cannot store an agent's messages: {e}");
            failed
                .into_iter()
                .map(|m| ServerMessage::Error {
                    message: m.to_string(),
                })
                .collect()
        }
    }
}

/// Handles one checked message of a known agent; returns the reply, if any. A re-sent
/// hello (same id) updates what the server knows of the agent, `info` included.
async fn handle(
    app: &Arc<App>,
    info: &mut AgentInfo,
    msg: AgentMessage,
) -> Result<Option<ServerMessage>, String> {
    let id = info.id.clone();
    match msg {
        AgentMessage::Hello { agent: hello } => {
            if hello.id != info.id {
                return Err("a connection speaks for one agent: reconnect to change the id".into());
            }
            let stored = hello.clone();
            app.blocking(move |s| s.upsert_agent(&stored, true, now_ms()))
                .await
                .map_err(|_| "the server could not record the hello".to_string())?;
            *info = hello;
            Ok(None)
        }
        AgentMessage::Status { statuses } => {
            app.blocking(move |s| s.put_statuses(&id, &statuses, now_ms()))
                .await
                .map_err(|_| "the server could not record the status".to_string())?;
            Ok(None)
        }
        AgentMessage::Responses { responses, dropped } => {
            let note = app
                .ingest(info, responses, dropped)
                .await
                .map_err(|_| "the server could not store the responses".to_string())?;
            Ok(note.map(|message| ServerMessage::Error { message }))
        }
        AgentMessage::Metrics { series } => {
            app.ingest_metrics(&id, series)
                .await
                .map_err(|_| "the server could not store the metric series".to_string())?;
            Ok(None)
        }
        AgentMessage::Ping => {
            let _ = app
                .blocking(move |s| s.touch_agent(&id, Some(true), now_ms()))
                .await;
            Ok(Some(ServerMessage::Pong))
        }
    }
}

/// The query of the HTTP agent routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    /// The agent's id.
    pub agent: Option<String>,
}

/// A weak entity tag for a rule set (FNV-1a of its JSON, the same on every replica).
fn etag(rules: &[Rule]) -> String {
    let json = serde_json::to_vec(rules).unwrap_or_default();
    let h = json.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

fn rules_response(rules: Vec<Rule>, headers: &HeaderMap) -> Response {
    let tag = etag(&rules);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&tag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        return r;
    }
    let mut r = Json(ServerMessage::Rules { rules }).into_response();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// The agent a request names by `?agent=ID`, touched (`last_seen`). An agent checked
/// within [`crate::app::SEEN_FOR_MS`] needs no store call: an agent posting or polling many
/// times a second would otherwise pay a write transaction for each.
async fn known_agent(app: &Arc<App>, id: &str) -> Result<AgentInfo, ApiError> {
    let now = now_ms();
    if let Some(info) = app.seen_recently(id, now) {
        return Ok(info);
    }
    let key = id.to_string();
    let found = app
        .blocking(move |s| {
            s.touch_agent(&key, None, now)?;
            s.agent(&key)
        })
        .await?;
    let info = found.map(|a| a.info).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown agent {id}: POST a hello to /agent/v1/responses first"),
        )
    })?;
    app.note_seen(&info, now);
    Ok(info)
}

/// `GET /agent/v1/poll?agent=ID`: the agent's rule set as a `rules` message, with an
/// `ETag`; `If-None-Match` with that tag answers 304 when nothing changed.
pub async fn poll(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<AgentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = q
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?
        .0;
    let id = q.agent.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing ?agent=ID: the agent's id from its hello",
        )
    })?;
    let info = known_agent(&app, &id).await?;
    let rules = app.rules_for(&info).await?;
    Ok(rules_response(rules, &headers))
}

/// `POST /agent/v1/responses`: one agent message or an array of them. The agent is named by
/// a `hello` in the batch (which registers it) or by `?agent=ID`. Answers with the agent's
/// rule set, so a serverless agent needs one round trip per invocation.
pub async fn post_messages(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<AgentQuery>, QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let q = q
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?
        .0;
    // A body over the limit (or cut) is answered with the API's JSON error too.
    let body = body.map_err(|e| {
        let message = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the batch is over {} bytes: send fewer responses per request",
                crate::MAX_AGENT_BODY
            )
        } else {
            format!("cannot read the batch: {}", e.body_text())
        };
        ApiError::new(e.status(), message)
    })?;
    // One message or an array of them, told apart by the first byte: an untagged enum
    // would buffer the whole body as a generic tree first.
    let parsed = if body.trim_ascii_start().first() == Some(&b'[') {
        serde_json::from_slice::<Vec<AgentMessage>>(&body)
    } else {
        serde_json::from_slice::<AgentMessage>(&body).map(|m| vec![m])
    };
    let messages = match parsed {
        Ok(m) => m,
        Err(_) => {
            // An array: say which message is wrong and why.
            if let Ok(items) = serde_json::from_slice::<Vec<serde_json::Value>>(&body) {
                for (i, v) in items.into_iter().enumerate() {
                    if let Err(e) = serde_json::from_value::<AgentMessage>(v) {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("message {i} of the batch: {e}"),
                        ));
                    }
                }
            }
            // Parse again as one message for an error that says where it went wrong.
            parse_json::<AgentMessage>(&body)?;
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "expected an agent message or an array of them",
            ));
        }
    };
    // Every message is checked before any is used: a batch out of bounds changes nothing.
    for (i, m) in messages.iter().enumerate() {
        checks::message(m).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("message {i} of the batch: {e}"),
            )
        })?;
    }
    let hello = messages.iter().find_map(|m| match m {
        AgentMessage::Hello { agent } => Some(agent.clone()),
        _ => None,
    });
    let (info, mut record_hello) = match hello {
        Some(info) => (info, true),
        None => {
            let id = q.agent.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "say who is sending: include a hello message or pass ?agent=ID",
                )
            })?;
            (known_agent(&app, &id).await?, false)
        }
    };
    // One store call for the hello and every write up to the next metrics report (each
    // report is a call of its own): a batch without metrics is one transaction.
    let mut writes = Vec::new();
    let mut messages = messages.into_iter().peekable();
    while record_hello || messages.peek().is_some() {
        let mut series = None;
        for m in messages.by_ref() {
            match batch_write(m) {
                Step::Write(w) => writes.push(w),
                Step::Alone(AgentMessage::Metrics { series: s }) => {
                    series = Some(s);
                    break;
                }
                Step::Alone(_) => {}
            }
        }
        if record_hello || !writes.is_empty() {
            // The rule set answered leaves unknown rules out already.
            app.write_batch(
                &info,
                Link::Request {
                    hello: record_hello,
                },
                std::mem::take(&mut writes),
            )
            .await?;
            if record_hello {
                app.note_seen(&info, now_ms());
            }
            record_hello = false;
        }
        if let Some(series) = series {
            app.ingest_metrics(&info.id, series).await?;
        }
    }
    let rules = app.rules_for(&info).await?;
    Ok(rules_response(rules, &headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_of_the_same_rules_are_equal() {
        assert_eq!(etag(&[]), etag(&[]));
    }
}
