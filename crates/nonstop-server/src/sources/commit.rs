//! Which commit a read is at: the one asked for or the agents', when the repository has
//! it, else the branch head with a warning that says why.

use super::ON_DEMAND_FETCH;
use super::git::GitBackend;
use super::registry::Source;
use super::spec::{SourceSpec, is_commit_id};
use crate::error::ApiError;
use crate::store::AgentRecord;
use axum::http::StatusCode;
use serde::Serialize;

/// Which commit a read is at, and why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct At {
    /// The commit read (Git sources only).
    pub commit: Option<String>,
    /// The commit that was asked for (`?commit=`) or that the agents report.
    pub requested: Option<String>,
    /// Which agent reported `requested`, when it came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_by: Option<String>,
    /// True when the branch head is shown because no commit was asked for or reported, or
    /// the one asked for is not in the repository.
    pub fallback: bool,
    /// What a person should know about the commit shown.
    pub warning: Option<String>,
}

/// The commit the service's agents report: the most recently seen agent that has one,
/// connected agents first.
pub(crate) fn agents_commit(agents: &[AgentRecord], service: &str) -> Option<(String, String)> {
    agents
        .iter()
        .filter(|a| a.info.service == service && a.info.commit.is_some())
        .max_by_key(|a| (a.connected, a.last_seen_ms))
        .and_then(|a| Some((a.info.commit.clone()?, a.info.id.clone())))
}

/// Picks the commit to read: the asked or reported one when the repository has it (after a
/// fetch if needed), else the branch head with a warning. Blocking.
pub(crate) fn pick_commit(
    source: &Source,
    git: &dyn GitBackend,
    requested: Option<(String, Option<String>)>,
) -> Result<At, ApiError> {
    let SourceSpec::Git(g) = &source.spec else {
        let (commit, by) = requested.map_or((None, None), |(c, by)| (Some(c), by));
        return Ok(At {
            warning: commit.as_ref().map(|c| {
                format!("this service's source is a local folder: it is shown as it is now, not at commit {c}")
            }),
            requested: commit,
            reported_by: by,
            ..At::default()
        });
    };
    if !source.repo.join("HEAD").exists() {
        // First use, or the background clone has not finished: wait for it, or try again
        // when the last attempt is old enough.
        source.sync(git, ON_DEMAND_FETCH);
    }
    let (status, error) = source.status();
    if !source.repo.join("HEAD").exists() {
        let e = error.unwrap_or_else(|| format!("the repository is {status}"));
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; fix the source with PUT /api/v1/services/SERVICE/source"),
        ));
    }
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e);
    let mut at = At::default();
    if let Some((c, by)) = requested {
        at.requested = Some(c.clone());
        at.reported_by = by;
        if is_commit_id(&c) {
            let mut found = git.commit(&source.repo, &c).map_err(internal)?;
            if found.is_none() {
                source.sync(git, ON_DEMAND_FETCH);
                found = git.commit(&source.repo, &c).map_err(internal)?;
            }
            if let Some(full) = found {
                at.commit = Some(full);
                return Ok(at);
            }
        }
    }
    let branch = g.branch.as_deref().unwrap_or("HEAD");
    let head = git
        .commit(&source.repo, branch)
        .map_err(internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "branch {branch} is not in {}: set another branch with PUT /api/v1/services/SERVICE/source",
                    g.url
                ),
            )
        })?;
    let short = short(&head);
    at.warning = Some(match &at.requested {
        Some(c) => {
            at.fallback = true;
            let whose = at
                .reported_by
                .as_ref()
                .map_or("asked for".to_string(), |a| {
                    format!("reported by agent {a}")
                });
            format!(
                "commit {c} ({whose}) is not in {}: showing the head of {branch} ({short}) instead; lines may not match the running code",
                g.url
            )
        }
        None => {
            at.fallback = true;
            format!(
                "no agent of this service reports a commit (set NONSTOP_COMMIT): showing the head of {branch} ({short})"
            )
        }
    });
    at.commit = Some(head);
    Ok(at)
}

/// Adds to `at`'s warning when the service's agents run several commits.
pub(crate) fn note_mixed(at: &mut At, commits: &[String]) {
    if commits.len() < 2 {
        return;
    }
    let shown = at
        .commit
        .as_deref()
        .or(at.requested.as_deref())
        .unwrap_or("");
    let list: Vec<&str> = commits.iter().map(|c| short(c)).collect();
    let note = format!(
        "this service's agents run {} commits ({}); shown: {}",
        commits.len(),
        list.join(", "),
        short(shown)
    );
    at.warning = Some(match at.warning.take() {
        Some(w) => format!("{w}\n{note}"),
        None => note,
    });
}

/// A commit as shown: its first 10 characters (by characters: an agent's commit need not be
/// ASCII, and slicing it at byte 10 could cut a character).
fn short(commit: &str) -> &str {
    match commit.char_indices().nth(10) {
        Some((at, _)) => &commit[..at],
        None => commit,
    }
}

#[cfg(test)]
mod short_tests {
    #[test]
    fn commits_are_shortened_by_characters() {
        assert_eq!(super::short("0123456789abcdef"), "0123456789");
        assert_eq!(super::short("abc"), "abc");
        assert_eq!(super::short(&"é".repeat(12)), "é".repeat(10));
    }
}
