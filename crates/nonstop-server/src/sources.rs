//! Sources: where the web IDE reads a service's code.
//!
//! A service maps to a [`SourceSpec`]: a local folder, or a Git repository (URL, branch,
//! optional access token, optional sub-folder). Git repositories are cloned bare under
//! `DATA/sources/` and fetched in the background ([`REFRESH`]); files are read **at the
//! commit the service's agents report** (their hello's `commit`), and at the branch head,
//! with a warning in the answer, when that commit is unknown or not in the repository.
//!
//! Git work goes through the small [`GitBackend`] trait. Its implementation today runs the
//! `git` program ([`GitCli`]) with a deadline per command and no prompts, which keeps the
//! server's build light; a pure-Rust backend can take its place behind the same trait.
//!
//! Routes (admin token):
//! - `GET /api/v1/services`: services known from agents or sources, with source status;
//! - `GET|PUT /api/v1/services/{service}/source`: the source (`{url, branch, token, subdir}`
//!   or `{path}`); the token is never shown back;
//! - `GET /api/v1/services/{service}/files?commit=`: the file tree (text and code files,
//!   at most [`MAX_FILES`]);
//! - `GET /api/v1/services/{service}/files/{*path}?commit=`: one file (at most
//!   [`MAX_FILE_BYTES`]);
//! - `GET /api/v1/services/{service}/resolve?path=`: an agent's file path (absolute, from
//!   debug info) mapped to a repository path by the longest suffix match.

use crate::App;
use crate::api::{ApiError, JsonBody};
use crate::store::AgentRecord;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most files a tree lists; a larger repository is cut with `truncated: true`.
pub const MAX_FILES: usize = 20_000;
/// Largest file the IDE shows.
pub const MAX_FILE_BYTES: u64 = 2 << 20;
/// How often Git sources are fetched in the background.
pub const REFRESH: Duration = Duration::from_secs(60);
/// Shortest time between two fetches asked for by a commit the repository lacks.
const ON_DEMAND_FETCH: Duration = Duration::from_secs(10);
/// Longest a clone or fetch may take.
const NETWORK_DEADLINE: Duration = Duration::from_secs(120);
/// Longest a local git command (list, read) may take.
const LOCAL_DEADLINE: Duration = Duration::from_secs(20);

/// Where a service's code is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SourceSpec {
    /// A Git repository.
    Git(GitSource),
    /// A folder on the server's machine.
    Folder {
        /// The folder.
        path: PathBuf,
    },
}

/// A Git repository as a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Where to clone from: `https://…`, `http://…`, `git://…`, `ssh://…`, `file://…` or a path.
    pub url: String,
    /// The branch whose head is shown when the agents' commit is unknown (default: the
    /// repository's default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// An access token for HTTPS (sent as basic auth, user `x-access-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The folder of the repository that holds the service's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdir: Option<String>,
}

impl SourceSpec {
    /// Parses the command line's `SERVICE=/path` or `SERVICE=URL[#branch]`.
    pub fn parse_arg(arg: &str) -> Result<(String, SourceSpec), String> {
        let (service, target) = arg.split_once('=').ok_or_else(|| {
            format!("--source {arg:?}: write SERVICE=/path/to/folder or SERVICE=URL[#branch]")
        })?;
        check_service(service)?;
        let spec = if target.contains("://") || target.ends_with(".git") {
            let (url, branch) = match target.split_once('#') {
                Some((u, b)) => (u, Some(b.to_string())),
                None => (target, None),
            };
            SourceSpec::Git(GitSource {
                url: url.to_string(),
                branch,
                token: None,
                subdir: None,
            })
        } else {
            SourceSpec::Folder {
                path: PathBuf::from(target),
            }
        };
        spec.check()?;
        Ok((service.to_string(), spec))
    }

    fn check(&self) -> Result<(), String> {
        match self {
            SourceSpec::Folder { path } if !path.is_absolute() => Err(format!(
                "source folder {} is not an absolute path: give the full path",
                path.display()
            )),
            SourceSpec::Folder { .. } => Ok(()),
            SourceSpec::Git(g) => {
                if g.url.is_empty() || g.url.starts_with('-') || g.url.contains(['\n', '\0']) {
                    return Err(format!("invalid repository URL {:?}", g.url));
                }
                if let Some(b) = &g.branch
                    && !is_ref_name(b)
                {
                    return Err(format!("invalid branch name {b:?}"));
                }
                if let Some(s) = &g.subdir {
                    relative_path(s).map_err(|e| format!("subdir: {e}"))?;
                }
                Ok(())
            }
        }
    }

    /// The spec as the API shows it: the token replaced by `has_token`.
    fn view(&self) -> serde_json::Value {
        match self {
            SourceSpec::Folder { path } => serde_json::json!({"kind": "folder", "path": path}),
            SourceSpec::Git(g) => serde_json::json!({
                "kind": "git", "url": g.url, "branch": g.branch, "subdir": g.subdir,
                "has_token": g.token.is_some(),
            }),
        }
    }
}

fn check_service(service: &str) -> Result<(), String> {
    if crate::validate::is_valid_id(service) {
        Ok(())
    } else {
        Err(format!(
            "invalid service name {service:?}: 1-64 letters, digits, `-`, `_` or `.`"
        ))
    }
}

fn is_ref_name(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 200
        && !b.starts_with(['-', '/', '.'])
        && !b.contains("..")
        && !b.ends_with(['/', '.'])
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./+".contains(&c))
}

fn is_commit_id(c: &str) -> bool {
    (4..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A checked relative path: no `..`, no root, no empty parts; `/`-separated.
fn relative_path(p: &str) -> Result<String, String> {
    let p = p.trim_matches('/');
    if p.is_empty() || p.contains('\0') || p.contains('\\') {
        return Err(format!("invalid path {p:?}"));
    }
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) => {}
            _ => return Err(format!("invalid path {p:?}: use a path inside the source")),
        }
    }
    Ok(p.to_string())
}

/// Whether the tree shows a file: code and text, by extension or well-known name.
pub fn is_text_path(path: &str) -> bool {
    const NAMES: &[&str] = &[
        "Makefile",
        "makefile",
        "GNUmakefile",
        "CMakeLists.txt",
        "Dockerfile",
        "LICENSE",
        "README",
        "build.rs",
        "meson.build",
    ];
    const EXTS: &[&str] = &[
        "rs", "c", "h", "cc", "cpp", "cxx", "c++", "hpp", "hh", "hxx", "h++", "inl", "ipp", "s",
        "S", "asm", "toml", "md", "txt", "json", "yaml", "yml", "ini", "cfg", "conf", "sh", "bash",
        "py", "go", "js", "mjs", "ts", "html", "css", "proto", "sql", "cmake", "mk", "ld", "lds",
        "x", "in", "am", "ac", "m4", "gradle", "java", "kt", "zig", "nim", "lua", "rb", "pl",
        "xml", "csv", "rst", "adoc", "lock",
    ];
    let name = path.rsplit('/').next().unwrap_or(path);
    if NAMES.contains(&name) {
        return true;
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() || name.starts_with('.') => EXTS.contains(&ext),
        _ => false,
    }
}

/// Folders never listed from a local folder source.
fn skipped_dir(name: &str) -> bool {
    name.starts_with('.') || matches!(name, "target" | "node_modules" | "build" | "__pycache__")
}

// ---------------------------------------------------------------------------------------
// Git

/// A file as read from a source: its size, and its bytes unless it is too large.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Size in bytes.
    pub size: u64,
    /// The bytes, when at most the size asked for.
    pub bytes: Option<Vec<u8>>,
}

/// What the server needs from Git. Calls block and may take long (clone, fetch).
pub trait GitBackend: Send + Sync {
    /// Clones `src` bare into `repo` when absent, else fetches every branch.
    fn sync(&self, repo: &Path, src: &GitSource) -> Result<(), String>;
    /// The full commit id `rev` names (a commit id, possibly short, or a branch), if any.
    fn commit(&self, repo: &Path, rev: &str) -> Result<Option<String>, String>;
    /// The files (paths relative to `dir`) at `commit` under `dir` (empty: the root).
    fn list(&self, repo: &Path, commit: &str, dir: &str) -> Result<Vec<String>, String>;
    /// A file's size and, when at most `max` bytes, its bytes; `None` when not there.
    fn read(&self, repo: &Path, commit: &str, path: &str, max: u64)
    -> Result<Option<Blob>, String>;
}

/// [`GitBackend`] by running the `git` program: no prompts, a deadline per command, the
/// token passed in the environment (not on the command line, which other users can see).
#[derive(Debug, Default)]
pub struct GitCli;

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl GitCli {
    fn command(token: Option<&str>) -> Command {
        let mut c = Command::new("git");
        c.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
            .env("GIT_HTTP_LOW_SPEED_TIME", "30")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some(t) = token {
            let basic = base64(format!("x-access-token:{t}").as_bytes());
            c.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {basic}"),
                );
        }
        c
    }

    /// Runs `git ARGS` with a deadline; returns (success, stdout, stderr).
    fn run(
        token: Option<&str>,
        args: &[&str],
        deadline: Duration,
    ) -> Result<(bool, Vec<u8>, String), String> {
        let mut child = Self::command(token)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run git ({e}): install git on the server"))?;
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut buf);
            }
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(e) = err.as_mut() {
                let _ = e.take(64 << 10).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "git {} took longer than {} s and was stopped",
                        args.first().copied().unwrap_or(""),
                        deadline.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("cannot wait for git: {e}")),
            }
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        Ok((status.success(), stdout, stderr))
    }

    fn git_dir_args(repo: &Path) -> Result<String, String> {
        repo.to_str()
            .map(|r| format!("--git-dir={r}"))
            .ok_or_else(|| "the data folder's path is not UTF-8".to_string())
    }
}

fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("git failed")
        .trim_start_matches("fatal: ")
        .to_string()
}

impl GitBackend for GitCli {
    fn sync(&self, repo: &Path, src: &GitSource) -> Result<(), String> {
        let token = src.token.as_deref();
        let gd = Self::git_dir_args(repo)?;
        if repo.join("HEAD").exists() {
            let (ok, _, err) = Self::run(
                token,
                &[
                    &gd,
                    "fetch",
                    "--quiet",
                    "--prune",
                    "--",
                    &src.url,
                    "+refs/heads/*:refs/heads/*",
                ],
                NETWORK_DEADLINE,
            )?;
            return if ok {
                Ok(())
            } else {
                Err(format!("cannot fetch {}: {}", src.url, last_line(&err)))
            };
        }
        let tmp = repo.with_extension("cloning");
        let _ = std::fs::remove_dir_all(&tmp);
        let tmp_s = tmp
            .to_str()
            .ok_or_else(|| "the data folder's path is not UTF-8".to_string())?;
        let (ok, _, err) = Self::run(
            token,
            &["clone", "--bare", "--quiet", "--", &src.url, tmp_s],
            NETWORK_DEADLINE,
        )?;
        if !ok {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!(
                "cannot clone {}: {}; check the URL, the network and the token",
                src.url,
                last_line(&err)
            ));
        }
        std::fs::rename(&tmp, repo).map_err(|e| format!("cannot keep the clone: {e}"))
    }

    fn commit(&self, repo: &Path, rev: &str) -> Result<Option<String>, String> {
        let gd = Self::git_dir_args(repo)?;
        let spec = format!("{rev}^{{commit}}");
        let (ok, out, _) = Self::run(
            None,
            &[
                &gd,
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &spec,
            ],
            LOCAL_DEADLINE,
        )?;
        Ok(ok
            .then(|| String::from_utf8_lossy(&out).trim().to_string())
            .filter(|c| !c.is_empty()))
    }

    fn list(&self, repo: &Path, commit: &str, dir: &str) -> Result<Vec<String>, String> {
        let gd = Self::git_dir_args(repo)?;
        let tree = if dir.is_empty() {
            commit.to_string()
        } else {
            format!("{commit}:{dir}")
        };
        let (ok, out, err) = Self::run(
            None,
            &[&gd, "ls-tree", "-r", "-z", "--name-only", &tree],
            LOCAL_DEADLINE,
        )?;
        if !ok {
            return Err(format!("cannot list the repository: {}", last_line(&err)));
        }
        Ok(out
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .filter_map(|p| std::str::from_utf8(p).ok().map(str::to_string))
            .collect())
    }

    fn read(
        &self,
        repo: &Path,
        commit: &str,
        path: &str,
        max: u64,
    ) -> Result<Option<Blob>, String> {
        let gd = Self::git_dir_args(repo)?;
        let object = format!("{commit}:{path}");
        let (ok, out, _) = Self::run(None, &[&gd, "cat-file", "-s", &object], LOCAL_DEADLINE)?;
        if !ok {
            return Ok(None);
        }
        let size: u64 = String::from_utf8_lossy(&out).trim().parse().unwrap_or(0);
        if size > max {
            return Ok(Some(Blob { size, bytes: None }));
        }
        let (ok, out, err) = Self::run(None, &[&gd, "cat-file", "blob", &object], LOCAL_DEADLINE)?;
        if !ok {
            return Err(format!("cannot read {path}: {}", last_line(&err)));
        }
        Ok(Some(Blob {
            size,
            bytes: Some(out),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// The sources of a server

/// Where a Git source stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SyncState {
    Cloning,
    Ready,
    Error(String),
}

/// One service's source and, for Git, its local clone.
struct Source {
    spec: SourceSpec,
    repo: PathBuf,
    state: Mutex<SyncState>,
    /// Serialises clone and fetch of this repository.
    syncing: Mutex<Option<Instant>>,
}

impl Source {
    fn status(&self) -> (&'static str, Option<String>) {
        match &self.spec {
            SourceSpec::Folder { path } if path.is_dir() => ("ready", None),
            SourceSpec::Folder { path } => (
                "error",
                Some(format!(
                    "folder {} does not exist or is not a folder",
                    path.display()
                )),
            ),
            SourceSpec::Git(_) => match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
                SyncState::Cloning => ("cloning", None),
                SyncState::Ready => ("ready", None),
                SyncState::Error(e) => ("error", Some(e.clone())),
            },
        }
    }

    /// Clones or fetches (blocking); skipped when one ran less than `min_gap` ago.
    fn sync(&self, git: &dyn GitBackend, min_gap: Duration) {
        let SourceSpec::Git(g) = &self.spec else {
            return;
        };
        let mut last = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < min_gap) {
            return;
        }
        let result = git.sync(&self.repo, g);
        *last = Some(Instant::now());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => *state = SyncState::Ready,
            // A failed fetch of a good clone keeps the clone usable; say what failed.
            Err(e) => {
                tracing::warn!(url = %g.url, "source: {e}");
                *state = SyncState::Error(e);
            }
        }
    }
}

/// The sources of all services.
pub(crate) struct Sources {
    dir: PathBuf,
    git: Arc<dyn GitBackend>,
    services: Mutex<BTreeMap<String, Arc<Source>>>,
}

/// The file that keeps sources set through the API.
const SAVED: &str = "sources.json";

fn repo_dir(dir: &Path, service: &str, spec: &SourceSpec) -> PathBuf {
    // A new URL gets a fresh clone: a hash of it is part of the folder's name.
    let key = match spec {
        SourceSpec::Git(g) => g.url.as_str(),
        SourceSpec::Folder { .. } => "",
    };
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    dir.join(format!("{service}-{h:016x}.git"))
}

impl Sources {
    /// Sources saved by the API under `dir`, then those of the command line (which win).
    pub(crate) fn new(dir: PathBuf, configured: &[(String, SourceSpec)]) -> Sources {
        let sources = Sources {
            git: Arc::new(GitCli),
            services: Mutex::new(BTreeMap::new()),
            dir,
        };
        let saved: BTreeMap<String, SourceSpec> = std::fs::read(sources.dir.join(SAVED))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        {
            let mut map = sources.lock();
            for (service, spec) in saved.into_iter().chain(configured.iter().cloned()) {
                let repo = repo_dir(&sources.dir, &service, &spec);
                map.insert(
                    service,
                    Arc::new(Source {
                        spec,
                        repo,
                        state: Mutex::new(SyncState::Cloning),
                        syncing: Mutex::new(None),
                    }),
                );
            }
        }
        sources
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Source>>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, service: &str) -> Option<Arc<Source>> {
        self.lock().get(service).cloned()
    }

    /// Starts the background work: a first sync of every Git source, then one every
    /// [`REFRESH`] until `stop`.
    pub(crate) fn start(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
                let all: Vec<Arc<Source>> = me.lock().values().cloned().collect();
                for s in all {
                    let git = me.git.clone();
                    // Each source on its own, so one slow remote does not hold the others.
                    tokio::task::spawn_blocking(move || s.sync(git.as_ref(), REFRESH / 2));
                }
            }
        });
    }

    fn set(&self, service: &str, spec: SourceSpec) -> Result<Arc<Source>, String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot make {}: {e}", self.dir.display()))?;
        let source = Arc::new(Source {
            repo: repo_dir(&self.dir, service, &spec),
            spec,
            state: Mutex::new(SyncState::Cloning),
            syncing: Mutex::new(None),
        });
        let saved: BTreeMap<String, SourceSpec> = {
            let mut map = self.lock();
            map.insert(service.to_string(), source.clone());
            map.iter()
                .map(|(k, v)| (k.clone(), v.spec.clone()))
                .collect()
        };
        // Tokens are in there: owner-only, like the token files.
        let json = serde_json::to_vec_pretty(&saved).map_err(|e| e.to_string())?;
        let path = self.dir.join(SAVED);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(&json)
        };
        write().map_err(|e| format!("cannot save {}: {e}", path.display()))?;
        Ok(source)
    }
}

// ---------------------------------------------------------------------------------------
// Reading at the right commit

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
fn agents_commit(agents: &[AgentRecord], service: &str) -> Option<(String, String)> {
    agents
        .iter()
        .filter(|a| a.info.service == service && a.info.commit.is_some())
        .max_by_key(|a| (a.connected, a.last_seen_ms))
        .and_then(|a| Some((a.info.commit.clone()?, a.info.id.clone())))
}

/// Picks the commit to read: the asked or reported one when the repository has it (after a
/// fetch if needed), else the branch head with a warning. Blocking.
fn pick_commit(
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
    let short = &head[..head.len().min(10)];
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

/// The files of a local folder, relative, sorted, at most `MAX_FILES`.
fn walk_folder(root: &Path) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let mut truncated = false;
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Ok(ft) = e.file_type() else { continue };
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if ft.is_dir() {
                if !skipped_dir(&name) {
                    stack.push((e.path(), rel));
                }
            } else if ft.is_file() && is_text_path(&rel) {
                if out.len() >= MAX_FILES {
                    truncated = true;
                    break;
                }
                out.push(rel);
            }
        }
    }
    out.sort();
    (out, truncated)
}

fn tree_of(
    source: &Source,
    git: &dyn GitBackend,
    at: &At,
) -> Result<(Vec<String>, bool), ApiError> {
    match &source.spec {
        SourceSpec::Folder { path } => Ok(walk_folder(path)),
        SourceSpec::Git(g) => {
            let commit = at.commit.as_deref().unwrap_or("HEAD");
            let dir = g.subdir.as_deref().unwrap_or("");
            let mut files: Vec<String> = git
                .list(&source.repo, commit, dir)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
                .into_iter()
                .filter(|p| is_text_path(p) && !p.split('/').any(|c| c.starts_with('.')))
                .collect();
            let truncated = files.len() > MAX_FILES;
            files.truncate(MAX_FILES);
            Ok((files, truncated))
        }
    }
}

/// The longest-suffix matches of an agent's `path` among `files`, by whole path parts.
pub fn suffix_matches<'a>(files: &'a [String], path: &str) -> (usize, Vec<&'a str>) {
    let want: Vec<&str> = path.split(['/', '\\']).filter(|c| !c.is_empty()).collect();
    let mut best = 0;
    let mut found = Vec::new();
    for f in files {
        let n = f
            .split('/')
            .rev()
            .zip(want.iter().rev())
            .take_while(|(a, b)| a == *b)
            .count();
        if n == 0 || n < best {
            continue;
        }
        if n > best {
            best = n;
            found.clear();
        }
        found.push(f.as_str());
    }
    (best, found)
}

// ---------------------------------------------------------------------------------------
// Handlers

fn no_source(service: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no source for service {service}: set one with PUT /api/v1/services/{service}/source \
             ({{\"url\": …, \"branch\": …}} or {{\"path\": …}}) or `nonstop serve --source {service}=PATH_OR_URL`"
        ),
    )
}

fn source_of(app: &App, service: &str) -> Result<Arc<Source>, ApiError> {
    check_service(service).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
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

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad query string: {}", e.body_text()),
        )
    })
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

/// Adds to `at`'s warning when the service's agents run several commits.
fn note_mixed(at: &mut At, commits: &[String]) {
    if commits.len() < 2 {
        return;
    }
    let shown = at
        .commit
        .as_deref()
        .or(at.requested.as_deref())
        .unwrap_or("");
    let list: Vec<&str> = commits.iter().map(|c| &c[..c.len().min(10)]).collect();
    let note = format!(
        "this service's agents run {} commits ({}); shown: {}",
        commits.len(),
        list.join(", "),
        &shown[..shown.len().min(10)]
    );
    at.warning = Some(match at.warning.take() {
        Some(w) => format!("{w}\n{note}"),
        None => note,
    });
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
    let agents = app.blocking(|s| s.agents()).await?;
    let mut names: Vec<String> = app.sources.lock().keys().cloned().collect();
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
                    source: src.map(|s| s.spec.view()),
                    status,
                    error,
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
    serde_json::json!({"service": service, "source": s.spec.view(), "status": status, "error": error})
}

/// `GET /api/v1/services/{service}/source`
pub(crate) async fn get_source(
    State(app): State<Arc<App>>,
    UrlPath(service): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = source_of(&app, &service)?;
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
    let source = app
        .sources
        .set(&service, spec)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
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
    let source = source_of(&app, &service)?;
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
    let source = source_of(&app, &service)?;
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

fn read_folder_file(root: &Path, path: &str) -> Result<Blob, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{path} is not in the folder {}: pick a file from the tree",
                root.display()
            ),
        )
    };
    let root = root.canonicalize().map_err(|_| missing())?;
    let full = root.join(path).canonicalize().map_err(|_| missing())?;
    // A symbolic link may not lead out of the folder.
    if !full.starts_with(&root) || !full.is_file() {
        return Err(missing());
    }
    let size = std::fs::metadata(&full).map_err(|_| missing())?.len();
    if size > MAX_FILE_BYTES {
        return Ok(Blob { size, bytes: None });
    }
    let bytes = std::fs::read(&full).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {path}: {e}"),
        )
    })?;
    Ok(Blob {
        size,
        bytes: Some(bytes),
    })
}

/// `GET /api/v1/services/{service}/resolve?path=`
pub(crate) async fn resolve(
    State(app): State<Arc<App>>,
    UrlPath(service): UrlPath<String>,
    q: Result<Query<ResolveQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = query(q)?;
    let source = source_of(&app, &service)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_suffix_wins_and_ties_are_ambiguous() {
        let files: Vec<String> = [
            "src/cart.rs",
            "shop/src/cart.rs",
            "src/main.rs",
            "b/x.c",
            "a/x.c",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            suffix_matches(&files, "/home/ci/shop/src/cart.rs"),
            (3, vec!["shop/src/cart.rs"])
        );
        assert_eq!(
            suffix_matches(&files, "/build/x.c"),
            (1, vec!["b/x.c", "a/x.c"])
        );
        assert_eq!(suffix_matches(&files, "/nowhere.rs").1.len(), 0);
        assert_eq!(
            suffix_matches(&files, "src/main.rs"),
            (2, vec!["src/main.rs"])
        );
    }

    #[test]
    fn source_arguments_parse_and_bad_ones_say_why() {
        assert_eq!(
            SourceSpec::parse_arg("shop=/srv/shop").unwrap(),
            (
                "shop".into(),
                SourceSpec::Folder {
                    path: "/srv/shop".into()
                }
            )
        );
        let (_, g) = SourceSpec::parse_arg("shop=https://example.invalid/shop.git#main").unwrap();
        assert!(
            matches!(g, SourceSpec::Git(GitSource { ref branch, .. }) if branch.as_deref() == Some("main"))
        );
        assert!(
            SourceSpec::parse_arg("shop")
                .unwrap_err()
                .contains("SERVICE=")
        );
        assert!(
            SourceSpec::parse_arg("shop=relative/dir")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(SourceSpec::parse_arg("shop=git://h/r.git#-x").is_err());
    }

    #[test]
    fn paths_stay_inside_and_text_files_are_picked() {
        assert!(relative_path("../etc/passwd").is_err());
        assert!(relative_path("src/../../x").is_err());
        assert_eq!(relative_path("/src/cart.rs").unwrap(), "src/cart.rs");
        assert!(is_text_path("src/cart.rs") && is_text_path("Makefile") && is_text_path("a/b.hpp"));
        assert!(!is_text_path("logo.png") && !is_text_path("a/bin"));
        assert_eq!(base64(b"x-access-token:t"), "eC1hY2Nlc3MtdG9rZW46dA==");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
