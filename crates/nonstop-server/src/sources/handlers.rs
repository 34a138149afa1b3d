//! The routes of sources: services, a service's source, its files, one file, and path
//! resolution.

use super::MAX_FILE_BYTES;
use super::commit::{agents_commit, note_mixed, pick_commit};
use super::git::Blob;
use super::registry::{Source, stored};
use super::spec::{SourceSpec, check_service, is_commit_id, relative_path};
use super::tree::{read_folder_file, suffix_matches, tree_of};
use crate::app::App;
use crate::error::{ApiError, JsonBody, query};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn no_source(service: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no source for service {service}: set one with PUT /api/v1/services/{service}/source \
             ({{\"url\": …, \"branch\": …}} or {{\"path\": …}}) or `nonstop serve --source {service}=PATH_OR_URL`"
        ),
    )
}

/// Reads the store's sources into the map (another replica may have set one) and starts a
/// sync of new ones.
async fn refresh(app: &Arc<App>) -> Result<(), ApiError> {
    let stored = app.blocking(stored).await?;
    for s in app.sources.refresh(stored) {
        let git = app.sources.git.clone();
        tokio::task::spawn_blocking(move || s.sync(git.as_ref(), Duration::ZERO));
    }
    Ok(())
}

async fn source_of(app: &Arc<App>, service: &str) -> Result<Arc<Source>, ApiError> {
    check_service(service).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    refresh(app).await?;
    app.sources.get(service).ok_or_else(|| no_source(service))
}

/// `?commit=` (and the UI's token).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitQuery {
    /// Read at this commit instead of the agents'.
    pub commit: Option<String>,
    #[serde(default, rename = "token")]
    _token: Option<serde::de::IgnoredAny>,
}

/// `?path=` (and the UI's token).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveQuery {
    /// An agent's file path.
    pub path: String,
    /// Resolve at this commit instead of the agents'.
    pub commit: Option<String>,
    #[serde(default, rename = "token")]
    _token: Option<serde::de::IgnoredAny>,
}

/// The commit a request reads at: `?commit=`, else the agents'.
async fn requested_commit(
    app: &Arc<App>,
    service: &str,
    commit: Option<String>,
) -> Result<Option<(String, Option<String>)>, ApiError> {
    if let Some(c) = commit.filter(|c| !c.is_empty()) {
        if !is_commit_id(&c) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid commit {c:?}: give a commit id in hex"),
            ));
        }
        return Ok(Some((c, None)));
    }
    let agents = app.blocking(|s| s.agents()).await?;
    Ok(agents_commit(&agents, service).map(|(c, a)| (c, Some(a))))
}

/// The other commits that connected agents of `service` run besides `shown` (a rollout in
/// progress, or instances left behind).
async fn other_commits(app: &Arc<App>, service: &str) -> Result<Vec<String>, ApiError> {
    let agents = app.blocking(|s| s.agents()).await?;
    let mut commits: Vec<String> = agents
        .iter()
        .filter(|a| a.connected && a.info.service == service)
        .filter_map(|a| a.info.commit.clone())
        .collect();
    commits.sort();
    commits.dedup();
    Ok(commits)
}

async fn on_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("source task failed: {e}"),
        )
    })?
}

/// A service as `GET /api/v1/services` shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    /// Its name.
    pub service: String,
    /// Its source (token hidden), if set.
    pub source: Option<serde_json::Value>,
    /// `ready`, `cloning`, `error` or `none`.
    pub status: &'static str,
    /// What went wrong, with `error`.
    pub error: Option<String>,
    /// How far the clone got, with `cloning` (e.g. `receiving objects 120/340`).
    pub progress: Option<String>,
    /// Its agents, connected or not.
    pub agents: usize,
    /// Its connected agents.
    pub connected: usize,
    /// The commit its agents report (the most recently seen).
    pub commit: Option<String>,
}

/// `GET /api/v1/services`
pub(crate) async fn list_services(
    State(app): State<Arc<App>>,
) -> Result<Json<Vec<ServiceView>>, ApiError> {
    refresh(&app).await?;
    let agents = app.blocking(|s| s.agents()).await?;
    let mut names: Vec<String> = app.sources.names();
    names.extend(agents.iter().map(|a| a.info.service.clone()));
    names.sort();
    names.dedup();
    Ok(Json(
        names
            .into_iter()
            .map(|service| {
                let src = app.sources.get(&service);
                let (status, error) = src.as_ref().map_or(("none", None), |s| s.status());
                let mine = agents.iter().filter(|a| a.info.service == service);
                ServiceView {
                    source: src.as_ref().map(|s| s.spec.view()),
                    status,
                    error,
                    progress: src.as_ref().and_then(|s| s.progress()),
                    agents: mine.clone().count(),
                    connected: mine.filter(|a| a.connected).count(),
                    commit: agents_commit(&agents, &service).map(|(c, _)| c),
                    service,
                }
            })
            .collect(),
    ))
}

fn source_view(service: &str, s: &Source) -> serde_json::Value {
    let (status, error) = s.status();
    serde_json::json!({
        "service": service, "source": s.spec.view(), "status": status, "error": error,
        "progress": s.progress(),
    })
}

/// `GET /api/v1/services/{service}/source`
pub(crate) async fn get_source(
    State(app): State<Arc<App>>,
    UrlPath(service): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = source_of(&app, &service).await?;
    Ok(Json(source_view(&service, &s)))
}

/// `PUT /api/v1/services/{service}/source`: `{url, branch?, token?, subdir?}` or `{path}`.
/// Answers at once (`202`); a Git repository is cloned in the background, its progress in
/// `status`.
pub(crate) async fn put_source(
    State(app): State<Arc<App>>,
    UrlPath(service): UrlPath<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    check_service(&service).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let bad = |e: String| ApiError::new(StatusCode::BAD_REQUEST, e);
    let spec = if body.get("url").is_some() {
        SourceSpec::Git(serde_json::from_value(body).map_err(|e| {
            bad(format!(
                "invalid Git source: {e}; send {{\"url\", \"branch\"?, \"token\"?, \"subdir\"?}}"
            ))
        })?)
    } else if let Some(path) = body.get("path").and_then(|p| p.as_str()) {
        SourceSpec::Folder {
            path: PathBuf::from(path),
        }
    } else {
        return Err(bad(
            "send {\"url\", \"branch\"?, \"token\"?, \"subdir\"?} for a Git repository or {\"path\"} for a folder on the server".into(),
        ));
    };
    spec.check()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let json = serde_json::to_string(&spec)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let key = service.clone();
    app.blocking(move |s| s.put_source(&key, &json, crate::clock::now_ms()))
        .await?;
    let source = app.sources.set(&service, spec);
    tracing::info!(%service, "source set");
    let git = app.sources.git.clone();
    let bg = source.clone();
    tokio::task::spawn_blocking(move || bg.sync(git.as_ref(), Duration::ZERO));
    Ok((StatusCode::ACCEPTED, Json(source_view(&service, &source))))
}

/// `GET /api/v1/services/{service}/files`
pub(crate) async fn list_files(
    State(app): State<Arc<App>>,
    UrlPath(service): UrlPath<String>,
    q: Result<Query<CommitQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = query(q)?;
    let source = source_of(&app, &service).await?;
    let mixed = if q.commit.is_none() {
        other_commits(&app, &service).await?
    } else {
        Vec::new()
    };
    let requested = requested_commit(&app, &service, q.commit).await?;
    let git = app.sources.git.clone();
    let view = on_blocking(move || {
        let mut at = pick_commit(&source, git.as_ref(), requested)?;
        note_mixed(&mut at, &mixed);
        let (files, truncated) = tree_of(&source, git.as_ref(), &at)?;
        let (status, error) = source.status();
        Ok(serde_json::json!({
            "service": service, "source": source.spec.view(), "status": status, "error": error,
            "at": at, "files": files, "truncated": truncated,
        }))
    })
    .await?;
    Ok(Json(view))
}

/// `GET /api/v1/services/{service}/files/{*path}`
pub(crate) async fn read_file(
    State(app): State<Arc<App>>,
    UrlPath((service, path)): UrlPath<(String, String)>,
    q: Result<Query<CommitQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = query(q)?;
    let path = relative_path(&path).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let source = source_of(&app, &service).await?;
    let mixed = if q.commit.is_none() {
        other_commits(&app, &service).await?
    } else {
        Vec::new()
    };
    let requested = requested_commit(&app, &service, q.commit).await?;
    let git = app.sources.git.clone();
    on_blocking(move || {
        let mut at = pick_commit(&source, git.as_ref(), requested)?;
        note_mixed(&mut at, &mixed);
        let Blob { size, bytes } = match &source.spec {
            SourceSpec::Folder { path: root } => read_folder_file(root, &path)?,
            SourceSpec::Git(g) => {
                let full = match &g.subdir {
                    Some(d) => format!("{}/{path}", d.trim_matches('/')),
                    None => path.clone(),
                };
                let commit = at.commit.as_deref().unwrap_or("HEAD");
                git.read(&source.repo, commit, &full, MAX_FILE_BYTES)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
                    .ok_or_else(|| {
                        let short = &commit[..commit.len().min(10)];
                        let whose = if at.reported_by.is_some() {
                            " (the agents' commit)"
                        } else {
                            ""
                        };
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!(
                                "{path} is not in {service}'s repository at commit {short}{whose}: pick a file from the tree; it may be newer than the running code or have moved"
                            ),
                        )
                    })?
            }
        };
        let Some(bytes) = bytes else {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{path} is {size} bytes; the IDE shows files up to {MAX_FILE_BYTES} bytes"
                ),
            ));
        };
        if bytes[..bytes.len().min(8192)].contains(&0) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("{path} is not a text file"),
            ));
        }
        let content = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Json(serde_json::json!({
            "service": service, "path": path, "at": at, "size": size, "content": content,
        })))
    })
    .await
}

/// `GET /api/v1/services/{service}/resolve?path=`
pub(crate) async fn resolve(
    State(app): State<Arc<App>>,
    UrlPath(service): UrlPath<String>,
    q: Result<Query<ResolveQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = query(q)?;
    let source = source_of(&app, &service).await?;
    let mixed = if q.commit.is_none() {
        other_commits(&app, &service).await?
    } else {
        Vec::new()
    };
    let requested = requested_commit(&app, &service, q.commit).await?;
    let git = app.sources.git.clone();
    let path = q.path;
    on_blocking(move || {
        let mut at = pick_commit(&source, git.as_ref(), requested)?;
        note_mixed(&mut at, &mixed);
        let (files, _) = tree_of(&source, git.as_ref(), &at)?;
        let (parts, found) = suffix_matches(&files, &path);
        if found.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no file of {service}'s source ends like {path}: is the source the right repository (and sub-folder)?"),
            ));
        }
        Ok(Json(serde_json::json!({
            "path": (found.len() == 1).then(|| found[0]),
            "ambiguous": found.len() > 1,
            "matched_parts": parts,
            "candidates": found,
            "at": at,
        })))
    })
    .await
}
