//! The sources of a server: one per service, kept in the store, Git ones cloned under
//! `DATA/sources/` and fetched in the background.

use super::REFRESH;
use super::git::{GitBackend, Progress};
use super::spec::SourceSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

