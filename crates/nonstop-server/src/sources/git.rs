//! Git in-process through `gix`: no `git` program is needed on the server's machine.
//!
//! A source is cloned bare under `DATA/sources/` and fetched (`+refs/heads/*:refs/heads/*`,
//! branches gone from the remote pruned, `HEAD` following the remote's). Remote URLs
//! (`https://`, `http://`, `git://`, `ssh://`) go through gix's transports; a token is
//! sent as basic auth (user `x-access-token`), and nothing ever prompts. A local repository
//! (`file://…` or a path) is copied in-process, because gix's file transport would run
//! `git-upload-pack`: its object files (content-addressed, so a copy never changes) and
//! its branches. Reading (commits, trees, blobs) is gix's object database.
//!
//! Clone and fetch report their progress to a [`Progress`], which the source status API
//! shows (`progress`) and the web IDE's source badge displays.

use super::spec::GitSource;
use super::{LOCAL_DEADLINE, NETWORK_DEADLINE};
use gix::bstr::ByteSlice;
use gix::progress::{Id, MessageLevel, Step, StepShared, Unit};
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::{FullName, Target};
use gix::{ObjectId, Repository};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Clones `src` bare into `repo` when absent, else fetches every branch; reports how
    /// far it got to `progress`.
    fn sync(&self, repo: &Path, src: &GitSource, progress: &Progress) -> Result<(), String>;
    /// The full commit id `rev` names (a commit id, possibly short, a branch, or `HEAD`).
    fn commit(&self, repo: &Path, rev: &str) -> Result<Option<String>, String>;
    /// The files (paths relative to `dir`) at `commit` under `dir` (empty: the root).
    fn list(&self, repo: &Path, commit: &str, dir: &str) -> Result<Vec<String>, String>;
    /// A file's size and, when at most `max` bytes, its bytes; `None` when not there.
    fn read(&self, repo: &Path, commit: &str, path: &str, max: u64)
    -> Result<Option<Blob>, String>;
}

/// [`GitBackend`] in-process with `gix`.
#[derive(Debug, Default)]
pub struct Gix;

// ---------------------------------------------------------------------------------------
// Progress

#[derive(Debug)]
struct TaskState {
    name: Mutex<String>,
    step: StepShared,
    max: Mutex<Option<Step>>,
}

/// How far a clone or fetch got, shared between the Git work and the status API.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    tasks: Arc<Mutex<Vec<Arc<TaskState>>>>,
}

impl Progress {
    /// Forgets what an earlier run reported.
    pub fn reset(&self) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The newest step that counted something, e.g. `receiving objects 120/340`; `None`
    /// before anything was counted.
    pub fn summary(&self) -> Option<String> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().rev().find_map(|t| {
            let step = t.step.load(Ordering::Relaxed);
            let max = *t.max.lock().unwrap_or_else(|p| p.into_inner());
            let name = t.name.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if step == 0 && max.is_none() {
                return None;
            }
            Some(match max {
                Some(m) => format!("{name} {step}/{m}"),
                None => format!("{name} {step}"),
            })
        })
    }

    fn task(&self, name: String) -> Task {
        let state = Arc::new(TaskState {
            name: Mutex::new(name),
            step: Arc::new(AtomicUsize::new(0)),
            max: Mutex::new(None),
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a long fetch opens a few dozen tasks at most; keep the newest.
        if tasks.len() >= 256 {
            tasks.remove(0);
        }
        tasks.push(state.clone());
        Task {
            all: self.clone(),
            state,
        }
    }
}

/// One step of a clone or fetch, as gix reports it.
struct Task {
    all: Progress,
    state: Arc<TaskState>,
}

impl gix::Count for Task {
    fn set(&self, step: Step) {
        self.state.step.store(step, Ordering::Relaxed);
    }
    fn step(&self) -> Step {
        self.state.step.load(Ordering::Relaxed)
    }
    fn inc_by(&self, step: Step) {
        self.state.step.fetch_add(step, Ordering::Relaxed);
    }
    fn counter(&self) -> StepShared {
        self.state.step.clone()
    }
}

impl gix::Progress for Task {
    fn init(&mut self, max: Option<Step>, _unit: Option<Unit>) {
        *self.state.max.lock().unwrap_or_else(|p| p.into_inner()) = max;
        self.state.step.store(0, Ordering::Relaxed);
    }
    fn set_max(&mut self, max: Option<Step>) -> Option<Step> {
        std::mem::replace(
            &mut *self.state.max.lock().unwrap_or_else(|p| p.into_inner()),
            max,
        )
    }
    fn max(&self) -> Option<Step> {
        *self.state.max.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set_name(&mut self, name: String) {
        *self.state.name.lock().unwrap_or_else(|p| p.into_inner()) = name;
    }
    fn name(&self) -> Option<String> {
        Some(
            self.state
                .name
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
    fn id(&self) -> Id {
        *b"nsrc"
    }
    fn message(&self, level: MessageLevel, message: String) {
        tracing::debug!(?level, "git: {message}");
    }
}

impl gix::NestedProgress for Task {
    type SubProgress = Task;
    fn add_child(&mut self, name: impl Into<String>) -> Task {
        self.all.task(name.into())
    }
    fn add_child_with_id(&mut self, name: impl Into<String>, _id: Id) -> Task {
        self.all.task(name.into())
    }
}

// ---------------------------------------------------------------------------------------
// Clone and fetch

/// The folder of a local repository URL (`file://…` or a path), `None` for a remote one.
fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    (!url.contains("://") && !is_scp_like(url)).then(|| PathBuf::from(url))
}

/// `user@host:path`, which Git reads as SSH.
fn is_scp_like(url: &str) -> bool {
    match url.split_once(':') {
        Some((host, _)) => !host.contains('/') && !host.is_empty(),
        None => false,
    }
}

/// Runs `work` with a flag that turns true after `deadline`; gix stops when it sees it.
fn with_deadline<T>(
    deadline: Duration,
    what: &str,
    work: impl FnOnce(&AtomicBool) -> Result<T, String>,
) -> Result<T, String> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let flag = interrupt.clone();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(deadline) {
            flag.store(true, Ordering::Relaxed);
        }
    });
    let result = work(&interrupt);
    drop(done_tx);
    let _ = watchdog.join();
    if interrupt.load(Ordering::Relaxed) && result.is_err() {
        return Err(format!(
            "{what} took longer than {} s and was stopped",
            deadline.as_secs()
        ));
    }
    result
}

fn name(s: &str) -> Result<FullName, String> {
    FullName::try_from(s).map_err(|e| format!("invalid reference name {s:?}: {e}"))
}

/// Makes `repo`'s branches exactly `branches` and points its `HEAD` at `head` (a branch).
fn set_refs(
    repo: &Repository,
    branches: &BTreeMap<String, ObjectId>,
    head: Option<&str>,
) -> Result<(), String> {
    let mut edits = Vec::new();
    let existing: BTreeSet<String> = repo
        .references()
        .map_err(|e| format!("cannot list the clone's branches: {e}"))?
        .local_branches()
        .map_err(|e| format!("cannot list the clone's branches: {e}"))?
        .filter_map(Result::ok)
        .map(|r| r.name().as_bstr().to_string())
        .collect();
    for gone in existing.iter().filter(|n| !branches.contains_key(*n)) {
        edits.push(RefEdit {
            change: Change::Delete {
                expected: PreviousValue::Any,
                log: RefLog::AndReference,
            },
            name: name(gone)?,
            deref: false,
        });
    }
    for (branch, id) in branches {
        edits.push(RefEdit {
            change: Change::Update {
                log: LogChange::default(),
                expected: PreviousValue::Any,
                new: Target::Object(*id),
            },
            name: name(branch)?,
            deref: false,
        });
    }
    if let Some(h) = head.filter(|h| branches.contains_key(*h)) {
        edits.push(RefEdit {
            change: Change::Update {
                log: LogChange::default(),
                expected: PreviousValue::Any,
                new: Target::Symbolic(name(h)?),
            },
            name: name("HEAD")?,
            deref: false,
        });
    }
    repo.edit_references(edits)
        .map_err(|e| format!("cannot update the clone's branches: {e}"))?;
    Ok(())
}

/// Copies made by [`copy_objects`], for names of their own.
static COPIES: AtomicUsize = AtomicUsize::new(0);

/// Copies the object files of `from` that `to` lacks (each written aside, then renamed in).
fn copy_objects(from: &Path, to: &Path, progress: &Task) -> Result<(), String> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = from.join(&rel);
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name();
            let rel = rel.join(&name);
            // `info/` holds alternates and pack lists of the source, not objects.
            if rel.starts_with("info") {
                continue;
            }
            if ft.is_dir() {
                stack.push(rel);
                continue;
            }
            let name = name.to_string_lossy();
            if !ft.is_file() || name.starts_with("tmp") || name.ends_with(".lock") {
                continue;
            }
            let dest = to.join(&rel);
            if dest.exists() {
                continue;
            }
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
            }
            // Named per copy: two copies into one clone at once (a fetch while the clone
            // that made it still runs) would otherwise share the file, and the second
            // rename find it gone. An object renamed over its twin is the same bytes.
            let n = COPIES.fetch_add(1, Ordering::Relaxed);
            let aside = dest.with_file_name(format!(".copy-{}-{n}-{name}", std::process::id()));
            std::fs::copy(e.path(), &aside)
                .and_then(|_| std::fs::rename(&aside, &dest))
                .map_err(|e| format!("cannot copy {}: {e}", rel.display()))?;
            gix::Count::inc(progress);
        }
    }
    Ok(())
}

/// The object folders of `repo`: its own and those of its alternates.
fn object_dirs(repo: &Repository) -> Vec<PathBuf> {
    let own = repo.common_dir().join("objects");
    let mut dirs = vec![own.clone()];
    if let Ok(alt) = std::fs::read_to_string(own.join("info/alternates")) {
        for line in alt.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let p = Path::new(line);
            dirs.push(if p.is_absolute() {
                p.to_path_buf()
            } else {
                own.join(p)
            });
        }
    }
    dirs
}

/// Brings `dst` up to date with the local repository at `path`.
fn sync_local(dst: &Repository, path: &Path, progress: &Progress) -> Result<(), String> {
    let src =
        gix::open(path).map_err(|e| format!("no Git repository at {}: {e}", path.display()))?;
    let task = progress.task("copying objects".into());
    for dir in object_dirs(&src) {
        copy_objects(&dir, &dst.common_dir().join("objects"), &task)?;
    }
    let mut branches = BTreeMap::new();
    let refs = src
        .references()
        .map_err(|e| format!("cannot list its branches: {e}"))?;
    for r in refs
        .local_branches()
        .map_err(|e| format!("cannot list its branches: {e}"))?
    {
        let Ok(mut r) = r else { continue };
        let full = r.name().as_bstr().to_string();
        if let Ok(id) = r.peel_to_id() {
            branches.insert(full, id.detach());
        }
    }
    let head = src
        .head_name()
        .ok()
        .flatten()
        .map(|n| n.as_bstr().to_string());
    set_refs(dst, &branches, head.as_deref())
}

/// An error and its causes, `: `-separated (gix's top-level messages alone say too little,
/// e.g. `Transport handshake failed`).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let c_text = c.to_string();
        if !s.contains(&c_text) {
            s.push_str(": ");
            s.push_str(&c_text);
        }
        next = c.source();
    }
    s
}

/// Brings `dst` up to date with the remote `src`.
fn sync_remote(
    dst: &Repository,
    src: &GitSource,
    progress: &Progress,
    interrupt: &AtomicBool,
) -> Result<(), String> {
    use gix::remote::Direction;
    let remote = dst
        .remote_at(src.url.as_str())
        .map_err(|e| format!("invalid repository URL: {e}"))?
        .with_refspecs(["+refs/heads/*:refs/heads/*"], Direction::Fetch)
        .map_err(|e| format!("cannot fetch branches: {e}"))?;
    let token = src.token.clone();
    // Only the token, never a prompt or a credential helper of the server's user.
    let connection = remote
        .connect(Direction::Fetch)
        .map_err(|e| format!("cannot connect: {e}"))?
        .with_credentials(move |action| match (action, &token) {
            (gix::credentials::helper::Action::Get(ctx), Some(t)) => {
                Ok(Some(gix::credentials::protocol::Outcome {
                    credentials: gix::sec::identity::Credentials::UsernamePassword {
                        username: "x-access-token".into(),
                        password: t.clone(),
                        oauth_refresh_token: None,
                    },
                    next: ctx.into(),
                }))
            }
            _ => Ok(None),
        });
    let mut task = progress.task("connecting".into());
    let options = gix::remote::ref_map::Options {
        // Every ref, so the remote's HEAD comes along and branches gone can be pruned.
        prefix_from_spec_as_filter_on_remote: false,
        ..Default::default()
    };
    let outcome = connection
        .prepare_fetch(&mut task, options)
        .map_err(|e| causes(&e))?
        .receive(task, interrupt)
        .map_err(|e| causes(&e))?;
    let mut branches = BTreeMap::new();
    let mut head = None;
    for r in &outcome.ref_map.remote_refs {
        use gix::protocol::handshake::Ref;
        match r {
            Ref::Direct {
                full_ref_name,
                object,
            } if full_ref_name.starts_with(b"refs/heads/") => {
                branches.insert(full_ref_name.to_string(), *object);
            }
            Ref::Symbolic {
                full_ref_name,
                target,
                ..
            }
            | Ref::Unborn {
                full_ref_name,
                target,
            } if full_ref_name == "HEAD" => head = Some(target.to_string()),
            _ => {}
        }
    }
    set_refs(dst, &branches, head.as_deref())
}

fn sync_into(
    dst: &Repository,
    src: &GitSource,
    progress: &Progress,
    interrupt: &AtomicBool,
) -> Result<(), String> {
    match local_path(&src.url) {
        Some(path) => sync_local(dst, &path, progress),
        None => sync_remote(dst, src, progress, interrupt),
    }
}

impl GitBackend for Gix {
    fn sync(&self, repo: &Path, src: &GitSource, progress: &Progress) -> Result<(), String> {
        progress.reset();
        // HTTPS goes through reqwest on the workspace's rustls, which has no crypto
        // provider of its own: ring, as for the server's TLS (already set: kept).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if repo.join("HEAD").exists() {
            let dst = gix::open(repo).map_err(|e| format!("cannot open the clone: {e}"))?;
            return with_deadline(NETWORK_DEADLINE, "git fetch", |stop| {
                sync_into(&dst, src, progress, stop)
            })
            .map_err(|e| format!("cannot fetch {}: {e}", src.url));
        }
        let tmp = repo.with_extension("cloning");
        let _ = std::fs::remove_dir_all(&tmp);
        let cloned = with_deadline(NETWORK_DEADLINE, "git clone", |stop| {
            let dst = gix::init_bare(&tmp).map_err(|e| format!("cannot make the clone: {e}"))?;
            sync_into(&dst, src, progress, stop)
        });
        if let Err(e) = cloned {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!(
                "cannot clone {}: {e}; check the URL, the network and the token",
                src.url
            ));
        }
        std::fs::rename(&tmp, repo).map_err(|e| format!("cannot keep the clone: {e}"))
    }

    fn commit(&self, repo: &Path, rev: &str) -> Result<Option<String>, String> {
        let r = open(repo)?;
        let id = if rev == "HEAD" {
            r.head_id().ok().map(|i| i.detach())
        } else if rev.len() == r.object_hash().len_in_hex()
            && let Ok(id) = ObjectId::from_hex(rev.as_bytes())
        {
            Some(id)
        } else if let Ok(prefix) = gix::hash::Prefix::from_hex(rev) {
            match r.objects.lookup_prefix(prefix, None) {
                Ok(Some(Ok(id))) => Some(id),
                // Not there, or ambiguous: not a commit this repository can name.
                Ok(_) => None,
                Err(e) => return Err(format!("cannot look up commit {rev}: {e}")),
            }
        } else {
            None
        };
        let id = match id {
            Some(id) => Some(id),
            None => r
                .try_find_reference(format!("refs/heads/{rev}").as_str())
                .ok()
                .flatten()
                .and_then(|mut b| b.peel_to_id().ok())
                .map(|i| i.detach()),
        };
        // Only commits (a tag is followed to its commit).
        Ok(id.and_then(|id| {
            let obj = r.find_object(id).ok()?;
            obj.peel_to_commit().ok().map(|c| c.id.to_string())
        }))
    }

    fn list(&self, repo: &Path, commit: &str, dir: &str) -> Result<Vec<String>, String> {
        let r = open(repo)?;
        let started = std::time::Instant::now();
        let root = tree_at(&r, commit)?;
        let start = if dir.is_empty() {
            root.id
        } else {
            match root
                .lookup_entry_by_path(dir)
                .map_err(|e| format!("cannot list the repository: {e}"))?
            {
                Some(e) if e.mode().is_tree() => e.object_id(),
                _ => return Ok(Vec::new()),
            }
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, String::new())];
        while let Some((id, prefix)) = stack.pop() {
            if started.elapsed() > LOCAL_DEADLINE {
                return Err(format!(
                    "listing the repository took longer than {} s",
                    LOCAL_DEADLINE.as_secs()
                ));
            }
            let tree = r
                .find_tree(id)
                .map_err(|e| format!("cannot list the repository: {e}"))?;
            let decoded = tree
                .decode()
                .map_err(|e| format!("cannot list the repository: {e}"))?;
            for e in &decoded.entries {
                let Ok(name) = e.filename.to_str() else {
                    continue;
                };
                let path = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                if e.mode.is_tree() {
                    stack.push((e.oid.to_owned(), path));
                } else if e.mode.is_blob_or_symlink() {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(
        &self,
        repo: &Path,
        commit: &str,
        path: &str,
        max: u64,
    ) -> Result<Option<Blob>, String> {
        let r = open(repo)?;
        let Ok(root) = tree_at(&r, commit) else {
            return Ok(None);
        };
        let entry = match root.lookup_entry_by_path(path) {
            Ok(Some(e)) if e.mode().is_blob_or_symlink() => e,
            _ => return Ok(None),
        };
        let id = entry.object_id();
        let size = r
            .find_header(id)
            .map_err(|e| format!("cannot read {path}: {e}"))?
            .size();
        if size > max {
            return Ok(Some(Blob { size, bytes: None }));
        }
        let obj = r
            .find_object(id)
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        Ok(Some(Blob {
            size,
            bytes: Some(obj.detach().data),
        }))
    }
}

fn open(repo: &Path) -> Result<Repository, String> {
    gix::open(repo).map_err(|e| format!("cannot open the clone {}: {e}", repo.display()))
}

fn tree_at<'r>(r: &'r Repository, commit: &str) -> Result<gix::Tree<'r>, String> {
    let id = if commit == "HEAD" {
        r.head_id()
            .map_err(|e| format!("the repository has no HEAD: {e}"))?
            .detach()
    } else {
        ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| format!("invalid commit {commit}: {e}"))?
    };
    r.find_commit(id)
        .map_err(|e| format!("no commit {commit}: {e}"))?
        .tree()
        .map_err(|e| format!("no tree at {commit}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_remote_urls_are_told_apart() {
        assert_eq!(local_path("file:///srv/r.git"), Some("/srv/r.git".into()));
        assert_eq!(local_path("/srv/r"), Some("/srv/r".into()));
        assert_eq!(local_path("https://h/r.git"), None);
        assert_eq!(local_path("git@host:team/r.git"), None);
    }

    #[test]
    fn progress_shows_the_newest_counted_step() {
        use gix::{Count, NestedProgress, Progress as _};
        let p = Progress::default();
        assert_eq!(p.summary(), None);
        let mut root = p.task("fetch".into());
        let mut child = root.add_child("receiving objects");
        child.init(Some(340), None);
        child.inc_by(120);
        assert_eq!(p.summary().as_deref(), Some("receiving objects 120/340"));
        p.reset();
        assert_eq!(p.summary(), None);
    }

    /// A token is never sent in clear text: over `http://` a remote asking for credentials
    /// gets none and the error says why (over `https://` gix sends it as basic auth, user
    /// `x-access-token`).
    #[test]
    fn a_token_is_not_sent_over_plain_http() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                request.push(line.trim_end().to_string());
            }
            conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            request
        });
        let dir = tempfile::tempdir().unwrap();
        let src = GitSource {
            url: format!("http://127.0.0.1:{port}/r.git"),
            branch: None,
            token: Some("t".into()),
            subdir: None,
        };
        let err = Gix
            .sync(&dir.path().join("r.git"), &src, &Progress::default())
            .unwrap_err();
        assert!(
            err.contains("Will not send credentials in clear text over http"),
            "{err}"
        );
        let request = seen.join().unwrap();
        assert_eq!(
            request[0],
            "GET /r.git/info/refs?service=git-upload-pack HTTP/1.1"
        );
        assert!(
            !request
                .iter()
                .any(|h| h.to_ascii_lowercase().starts_with("authorization:")),
            "{request:?}"
        );
        assert!(!dir.path().join("r.git").exists());
    }
}
