//! The targets' routes: `GET|POST /api/v1/targets`, `GET|DELETE /api/v1/targets/{name}`,
//! `POST /api/v1/targets/{name}/test`. Settings go in whole and come out with every secret
//! cut to its last 4 characters.

use crate::app::App;
use crate::clock::rfc3339;
use crate::error::{ApiError, JsonBody};
use crate::store::StoredTarget;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use nonstop_model::views::{TargetTestView, TargetView};
use nonstop_sinks::{Delivery, Outcome, Payload, TargetSpec};
use std::sync::Arc;

fn view(t: StoredTarget) -> TargetView {
    let spec: Option<TargetSpec> = serde_json::from_str(&t.spec_json).ok();
    TargetView {
        kind: spec
            .as_ref()
            .map_or("unknown", |s| s.kind.name())
            .to_string(),
        spec: spec.map_or(serde_json::Value::Null, |s| s.redacted()),
        status: match &t.disabled {
            Some(why) => format!("disabled: {why}"),
            None => "active".into(),
        },
        created: rfc3339(t.created_ms),
        pending: t.pending,
        sent: t.sent,
        failed: t.failed,
        dropped: t.dropped,
        oldest_pending: t.oldest_pending_ms.map(rfc3339),
        last_error: t.last_error,
        name: t.name,
    }
}

fn no_target(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no target {name}: list them with GET /api/v1/targets (`nonstop targets list`)"),
    )
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid target name {name:?}: names are 1-64 letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// `GET /api/v1/targets`
pub async fn list_targets(State(app): State<Arc<App>>) -> Result<Json<Vec<TargetView>>, ApiError> {
    let targets = app.blocking(|s| s.targets()).await?;
    Ok(Json(targets.into_iter().map(view).collect()))
}

/// `POST /api/v1/targets`: adds a target, or replaces one of the same name (and enables
/// it again). 201 when new, 200 when replaced.
pub async fn put_target(
    State(app): State<Arc<App>>,
    JsonBody(spec): JsonBody<TargetSpec>,
) -> Result<(StatusCode, Json<TargetView>), ApiError> {
    spec.check()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Settings a sink refuses (a bad header, a secret that is not base64) are refused here.
    nonstop_sinks::build_with(&spec, &app.outbox.context())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let json = serde_json::to_string(&spec)
        .map_err(|e| ApiError::bad_request(format!("cannot store the target: {e}")))?;
    let name = spec.name.clone();
    let (created, stored) = app
        .blocking(move |s| {
            let created = s.put_target(&name, &json, crate::clock::now_ms())?;
            Ok((created, s.target(&name)?))
        })
        .await?;
    let stored = stored.ok_or_else(|| no_target(&spec.name))?;
    tracing::info!(target = %spec.name, kind = spec.kind.name(), "target {}", if created { "added" } else { "replaced" });
    app.outbox.wake();
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(view(stored))))
}

/// `GET /api/v1/targets/{name}`
pub async fn get_target(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<TargetView>, ApiError> {
    checked_name(&name)?;
    let key = name.clone();
    let t = app.blocking(move |s| s.target(&key)).await?;
    t.map(|t| Json(view(t))).ok_or_else(|| no_target(&name))
}

/// `DELETE /api/v1/targets/{name}`: the target and its outbox (what was still waiting is
/// not delivered).
pub async fn delete_target(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    checked_name(&name)?;
    let key = name.clone();
    if app.blocking(move |s| s.delete_target(&key)).await? {
        tracing::info!(target = %name, "target removed");
        app.outbox.wake();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_target(&name))
    }
}

/// `POST /api/v1/targets/{name}/test`: sends one test event (a log response of the rule
/// `nonstop-test`) and answers what the receiver said. Nothing is queued or counted.
pub async fn test_target(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<TargetTestView>, ApiError> {
    checked_name(&name)?;
    let key = name.clone();
    let t = app
        .blocking(move |s| s.target(&key))
        .await?
        .ok_or_else(|| no_target(&name))?;
    let spec: TargetSpec = serde_json::from_str(&t.spec_json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the stored settings of {name} cannot be read ({e}): add the target again"),
        )
    })?;
    let sink = nonstop_sinks::build_with(&spec, &app.outbox.context())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = crate::clock::now_ms();
    let delivery = Delivery {
        id: format!("nonstop-test-{now}"),
        payload: Payload::Response(test_response(now)),
        link: None,
    };
    let cut = sink.limits().timeout + std::time::Duration::from_secs(1);
    let outcome = match tokio::time::timeout(cut, sink.send(std::slice::from_ref(&delivery))).await
    {
        Ok(mut o) if !o.is_empty() => o.remove(0),
        Ok(_) => Outcome::Failed {
            reason: "the sink gave no outcome".into(),
        },
        Err(_) => Outcome::Retry {
            after: None,
            reason: format!("no answer within {} s", cut.as_secs()),
        },
    };
    let (ok, word, message) = match outcome {
        Outcome::Sent => (true, "sent", "the receiver took the test event".to_string()),
        Outcome::Skipped => (
            true,
            "skipped",
            "this kind of target does not take a log event".to_string(),
        ),
        Outcome::Retry { reason, .. } => (false, "retry", reason),
        Outcome::Failed { reason } => (false, "failed", reason),
        Outcome::Disable { reason } => (false, "disable", reason),
    };
    Ok(Json(TargetTestView {
        target: name,
        ok,
        outcome: word.into(),
        message,
    }))
}

fn test_response(now_ms: i64) -> nonstop_model::Response {
    nonstop_model::Response {
        rule: "nonstop-test".into(),
        agent: "nonstop-server".into(),
        service: "nonstop".into(),
        time: rfc3339(now_ms),
        thread: "main".into(),
        location: nonstop_model::SourceLocation {
            file: "nonstop".into(),
            line: 1,
            function: "nonstop::targets::test".into(),
        },
        message: Some("nonstop test event: this target is set up".into()),
        frames: Vec::new(),
        locals: Default::default(),
        watch: Default::default(),
    }
}

/// Checks a rule's `to`: each name is `ui` or a configured target; the error lists them.
pub(crate) async fn check_routes(app: &App, to: &[String]) -> Result<(), ApiError> {
    if to.iter().all(|t| t == "ui") {
        return Ok(());
    }
    let targets = app.blocking(|s| s.targets()).await?;
    let unknown: Vec<&str> = to
        .iter()
        .filter(|t| *t != "ui" && !targets.iter().any(|x| &x.name == *t))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut known: Vec<&str> = vec!["ui"];
    known.extend(targets.iter().map(|t| t.name.as_str()));
    Err(ApiError::bad_request(format!(
        "unknown target{} {} in \"to\": the configured ones are {} (add one with `nonstop targets add NAME …`)",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", "),
        known.join(", ")
    )))
}
