//! The sources of a server: one per service, kept in the store, Git ones cloned under
//! `DATA/sources/` and fetched in the background.

use super::REFRESH;
use super::git::{GitBackend, Gix, Progress};
use super::spec::SourceSpec;
use crate::store::{Store, StoreError};
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
pub(crate) struct Source {
    pub(crate) spec: SourceSpec,
    pub(crate) repo: PathBuf,
    state: Mutex<SyncState>,
    /// How far the running clone or fetch got.
    progress: Progress,
    /// Serialises clone and fetch of this repository.
    syncing: Mutex<Option<Instant>>,
}

impl Source {
    fn new(dir: &Path, service: &str, spec: SourceSpec) -> Source {
        Source {
            repo: repo_dir(dir, service, &spec),
            spec,
            state: Mutex::new(SyncState::Cloning),
            progress: Progress::default(),
            syncing: Mutex::new(None),
        }
    }

    /// `ready`, `cloning` or `error`, with what went wrong, or how far a clone got.
    pub(crate) fn status(&self) -> (&'static str, Option<String>) {
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

    /// How far the clone got, while `cloning`.
    pub(crate) fn progress(&self) -> Option<String> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            SyncState::Cloning => self.progress.summary(),
            _ => None,
        }
    }

    /// Clones or fetches (blocking); skipped when one ran less than `min_gap` ago.
    pub(crate) fn sync(&self, git: &dyn GitBackend, min_gap: Duration) {
        let SourceSpec::Git(g) = &self.spec else {
            return;
        };
        let mut last = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < min_gap) {
            return;
        }
        let result = git.sync(&self.repo, g, &self.progress);
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

/// The sources of all services: those set through the API live in the store (so every
/// replica sees them), those of the command line in memory (they win).
pub(crate) struct Sources {
    dir: PathBuf,
    pub(crate) git: Arc<dyn GitBackend>,
    configured: BTreeMap<String, SourceSpec>,
    services: Mutex<BTreeMap<String, Arc<Source>>>,
}

/// The file that kept sources set through the API before they moved into the store.
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

/// Moves `dir/sources.json` (sources saved by an older server) into the store, once: the
/// file is then renamed `sources.json.imported`. Blocking.
pub(crate) fn import_saved(dir: &Path, store: &dyn Store) -> Result<usize, String> {
    let path = dir.join(SAVED);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let saved: BTreeMap<String, SourceSpec> = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{} is not a list of sources ({e}): fix or remove it",
            path.display()
        )
    })?;
    for (service, spec) in &saved {
        let json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
        store
            .put_source(service, &json, crate::clock::now_ms())
            .map_err(|e| e.to_string())?;
    }
    let done = dir.join(format!("{SAVED}.imported"));
    std::fs::rename(&path, &done).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            path.display(),
            done.display()
        )
    })?;
    tracing::info!(
        sources = saved.len(),
        "imported sources.json into the store"
    );
    Ok(saved.len())
}

/// The sources in the store; one that does not read is skipped with a warning.
pub(crate) fn stored(store: &dyn Store) -> Result<Vec<(String, SourceSpec)>, StoreError> {
    Ok(store
        .sources()?
        .into_iter()
        .filter_map(|(service, json)| match serde_json::from_str(&json) {
            Ok(spec) => Some((service, spec)),
            Err(e) => {
                tracing::warn!(%service, "a stored source does not read: {e}");
                None
            }
        })
        .collect())
}

impl Sources {
    /// The command line's sources; [`Sources::refresh`] adds the stored ones.
    pub(crate) fn new(dir: PathBuf, configured: &[(String, SourceSpec)]) -> Sources {
        let sources = Sources {
            git: Arc::new(Gix),
            configured: configured.iter().cloned().collect(),
            services: Mutex::new(BTreeMap::new()),
            dir,
        };
        {
            let mut map = sources.lock();
            for (service, spec) in configured {
                map.insert(
                    service.clone(),
                    Arc::new(Source::new(&sources.dir, service, spec.clone())),
                );
            }
        }
        sources
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Source>>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the map up to date with the store's sources (another replica may have set
    /// one); a source whose spec did not change keeps its clone and state. Returns the new
    /// or changed ones, to sync.
    pub(crate) fn refresh(&self, stored: Vec<(String, SourceSpec)>) -> Vec<Arc<Source>> {
        let mut map = self.lock();
        let mut changed = Vec::new();
        for (service, spec) in stored {
            if self.configured.contains_key(&service) {
                continue;
            }
            if map.get(&service).is_some_and(|s| s.spec == spec) {
                continue;
            }
            let s = Arc::new(Source::new(&self.dir, &service, spec));
            map.insert(service, s.clone());
            changed.push(s);
        }
        changed
    }

    /// The services with a source.
    pub(crate) fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub(crate) fn get(&self, service: &str) -> Option<Arc<Source>> {
        self.lock().get(service).cloned()
    }

    /// Starts the background work: a first sync of every Git source, then one every
    /// [`REFRESH`] until `stop`, picking up sources other replicas set.
    pub(crate) fn start(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                }
                let st = store.clone();
                match tokio::task::spawn_blocking(move || stored(st.as_ref())).await {
                    Ok(Ok(list)) => {
                        me.refresh(list);
                    }
                    Ok(Err(e)) => tracing::error!("cannot read the sources: {e}"),
                    Err(e) => tracing::error!("cannot read the sources: {e}"),
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

    /// Sets a service's source in memory (the caller stored it).
    pub(crate) fn set(&self, service: &str, spec: SourceSpec) -> Arc<Source> {
        let source = Arc::new(Source::new(&self.dir, service, spec));
        self.lock().insert(service.to_string(), source.clone());
        source
    }
}
