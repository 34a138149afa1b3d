//! The delivery pipeline: responses routed to targets (a rule's `to`) wait in a persistent
//! outbox, one row per response and target, written in the same transaction as the
//! response; one worker per target drains it in order through the target's
//! [`nonstop_sinks::Sink`].
//!
//! A worker sends batches, and per [`Outcome`]: `Sent`/`Failed`/`Skipped` settle the entry;
//! `Retry` keeps it (and everything after it) pending and waits — what the receiver asked
//! for, else an exponential back-off with jitter; `Disable` disables the target with the
//! reason as its status. A send is cut off after the sink's timeout (a hanging receiver
//! is retried like a down one), and nothing a worker waits for blocks ingest or another
//! target. The outbox is bounded by age and size ([`OutboxLimits`]); what it drops is
//! counted. The delivery id is derived from the response's id in the store and its JSON,
//! so a batch sent again after a crash carries the same ids.

use crate::store::{OutboxEntry, OutboxLimits, Settled, Store, StoreError, StoredTarget};
use nonstop_sinks::{Delivery, Outcome, Payload, Sink, TargetSpec};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The target names a rule's JSON routes its responses to (`ui` is nonstop's own, not a
/// target).
pub(crate) fn routes(rule_json: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct To {
        #[serde(default)]
        to: Vec<String>,
    }
    let mut to = serde_json::from_str::<To>(rule_json)
        .map(|t| t.to)
        .unwrap_or_default();
    to.retain(|t| t != "ui");
    to.dedup();
    to
}

/// The delivery id of the response stored with id `rid`: the id and a hash of its JSON, so
/// ids from a store started over do not pass for old ones at a receiver.
pub(crate) fn delivery_id(rid: i64, json: &str) -> String {
    format!("nonstop-{rid}-{:016x}", fnv(json.as_bytes()))
}

/// FNV-1a, 64 bits: stable across builds and platforms.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The outbox entries of an agent's metric report: each series of an active metric rule
/// that routes to targets, as the store now holds it (the rule's name and kind), once per
/// target. A report's metric is cumulative, so each entry stands alone; its id is the
/// series and its count, the same for the same report.
pub(crate) fn metric_entries(
    s: &dyn Store,
    agent: &str,
    series: &[nonstop_model::metrics::MetricSeries],
    now_ms: i64,
) -> Result<Vec<crate::store::NewEntry>, StoreError> {
    let mut rules: HashMap<&str, Option<(Vec<String>, nonstop_model::Metric)>> = HashMap::new();
    let mut out = Vec::new();
    let mut service: Option<String> = None;
    for x in series {
        if !rules.contains_key(x.rule.as_str()) {
            let r = s.rule(&x.rule)?.and_then(|r| {
                let to: Vec<String> = r.rule.to.iter().filter(|t| *t != "ui").cloned().collect();
                let active = r.state == crate::store::RuleState::Active && r.enabled;
                match (active && !to.is_empty(), r.rule.metric) {
                    (true, Some(m)) => Some((to, m)),
                    _ => None,
                }
            });
            rules.insert(&x.rule, r);
        }
        let Some(Some((to, metric))) = rules.get(x.rule.as_str()) else {
            continue;
        };
        if service.is_none() {
            service = Some(s.agent(agent)?.map(|a| a.info.service).unwrap_or_default());
        }
        let mut x = x.clone();
        x.name.clone_from(&metric.name);
        x.kind = metric.kind;
        let payload = serde_json::json!({
            "agent": agent,
            "service": service.as_deref().unwrap_or_default(),
            "series": x,
            "time_ms": now_ms,
        })
        .to_string();
        let tags = serde_json::to_string(&x.tags).unwrap_or_default();
        let delivery = format!(
            "nonstop-metric-{}-{:016x}-{}",
            x.rule,
            fnv(format!("{agent}\n{tags}").as_bytes()),
            x.count
        );
        for t in to {
            out.push(crate::store::NewEntry {
                target: t.clone(),
                rule: x.rule.clone(),
                delivery: delivery.clone(),
                kind: "metric".into(),
                payload: payload.clone(),
            });
        }
    }
    Ok(out)
}

/// How the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Bounds of each outbox.
    pub limits: OutboxLimits,
    /// First wait after a failed send; it doubles per failure in a row, with jitter.
    pub backoff_base: Duration,
    /// Longest wait between tries (also caps what a receiver asks for).
    pub backoff_max: Duration,
    /// Overrides each sink's per-request timeout.
    pub timeout: Option<Duration>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            limits: OutboxLimits::default(),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            timeout: None,
        }
    }
}

/// How long a server holds the right to drain a target before renewing it.
const LEASE: Duration = Duration::from_secs(15);
/// How often an idle worker looks at its outbox without being woken (another replica
/// may have queued entries).
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// The pipeline's shared state: the store, the wake-up signal ingest bumps, settings.
pub(crate) struct Outbox {
    store: Arc<dyn Store>,
    /// Bumped when entries are queued or targets change.
    wake: watch::Sender<u64>,
    config: OutboxConfig,
    /// This server, as the holder of target leases.
    holder: String,
    /// Agents by id, for the sinks' resource attributes (filled before each send: the
    /// lookup itself must not block on the store).
    agents: Arc<std::sync::Mutex<HashMap<String, nonstop_model::AgentInfo>>>,
    client: Option<reqwest::Client>,
}

async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
}

impl Outbox {
    pub(crate) fn new(store: Arc<dyn Store>, config: OutboxConfig) -> Outbox {
        // One server on its own store holds every target: a restarted one takes them back
        // at once. Replicas each have their own name, and wait for a lapsed lease.
        let holder = if store.shared() {
            let mut id = [0u8; 8];
            crate::ids::fill_random(&mut id);
            id.iter().map(|b| format!("{b:02x}")).collect()
        } else {
            "local".to_string()
        };
        Outbox {
            store,
            wake: watch::channel(0).0,
            config,
            holder,
            agents: Default::default(),
            client: nonstop_sinks::http::client().ok(),
        }
    }

    /// Wakes the workers: entries were queued, or targets changed.
    pub(crate) fn wake(&self) {
        self.wake.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The sink context every target's sink gets.
    pub(crate) fn context(&self) -> nonstop_sinks::SinkContext {
        let agents = self.agents.clone();
        nonstop_sinks::SinkContext {
            agents: Some(Arc::new(move |id: &str| {
                agents
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .cloned()
            })),
            client: self.client.clone(),
            timeout: self.config.timeout,
        }
    }

    /// Runs the workers until `stop`: one per enabled target, started, restarted (settings
    /// changed) and stopped as targets come and go.
    pub(crate) fn start(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        let this = self.clone();
        tokio::spawn(async move { this.supervise(stop).await });
    }

    async fn supervise(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut wake = self.wake.subscribe();
        let mut workers: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
        loop {
            match blocking(&self.store, |s| s.targets()).await {
                Ok(targets) => self.reconcile(&mut workers, targets, &stop),
                Err(e) => tracing::error!("targets: cannot read them: {e}"),
            }
            workers.retain(|_, (_, h)| !h.is_finished());
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(IDLE_LOOK * 5) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, (_, h)) in workers {
            h.abort();
        }
    }

    fn reconcile(
        self: &Arc<Self>,
        workers: &mut HashMap<String, (String, tokio::task::JoinHandle<()>)>,
        targets: Vec<StoredTarget>,
        stop: &watch::Receiver<bool>,
    ) {
        let wanted: HashMap<&str, &StoredTarget> = targets
            .iter()
            .filter(|t| t.disabled.is_none())
            .map(|t| (t.name.as_str(), t))
            .collect();
        workers.retain(|name, (spec, h)| {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|t| &t.spec_json == spec && !h.is_finished());
            if !keep {
                h.abort();
            }
            keep
        });
        for (name, t) in wanted {
            if workers.contains_key(name) {
                continue;
            }
            let spec: TargetSpec = match serde_json::from_str(&t.spec_json) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(target = name, "stored target settings unreadable: {e}");
                    continue;
                }
            };
            let sink = match nonstop_sinks::build_with(&spec, &self.context()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(target = name, "target cannot be used: {e}");
                    continue;
                }
            };
            let this = self.clone();
            let worker_name = name.to_string();
            let stop = stop.clone();
            let h = tokio::spawn(async move { this.work(worker_name, sink, stop).await });
            workers.insert(name.to_string(), (t.spec_json.clone(), h));
        }
    }

    /// The wait after `failures` failed sends in a row: base × 2^(failures-1), capped,
    /// times a random factor in [0.5, 1).
    fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .config
            .backoff_base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let capped = exp.min(self.config.backoff_max);
        let mut r = [0u8; 2];
        crate::ids::fill_random(&mut r);
        let jitter = 0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0;
        capped.mul_f64(jitter)
    }

    async fn work(
        self: Arc<Self>,
        name: String,
        sink: Box<dyn Sink>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut wake = self.wake.subscribe();
        let limits = sink.limits();
        let max_batch = limits.max_batch.max(1) as u64;
        let mut failures = 0u32;
        let mut held = false;
        loop {
            if *stop.borrow() {
                return;
            }
            let (n, h) = (name.clone(), self.holder.clone());
            let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
            match blocking(&self.store, move |s| {
                s.claim_target(&n, &h, lease, crate::clock::now_ms())
            })
            .await
            {
                Ok(true) => held = true,
                Ok(false) => {
                    if held {
                        tracing::info!(target = %name, "another server delivers to this target now");
                    }
                    held = false;
                    if self.pause(&mut stop, LEASE / 3).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(target = %name, "cannot claim the target: {e}");
                    if self.pause(&mut stop, IDLE_LOOK).await {
                        return;
                    }
                    continue;
                }
            }
            let (n, limits_b) = (name.clone(), self.config.limits);
            let read = blocking(&self.store, move |s| {
                let dropped = s.bound_outbox(&n, limits_b, crate::clock::now_ms())?;
                Ok((dropped, s.outbox_pending(&n, max_batch)?))
            })
            .await;
            let entries = match read {
                Ok((dropped, entries)) => {
                    if dropped > 0 {
                        tracing::warn!(target = %name, dropped, "outbox bounds dropped deliveries");
                    }
                    entries
                }
                Err(e) => {
                    tracing::error!(target = %name, "cannot read the outbox: {e}");
                    if self.pause(&mut stop, IDLE_LOOK).await {
                        return;
                    }
                    continue;
                }
            };
            if entries.is_empty() {
                wake.mark_unchanged();
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(IDLE_LOOK) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
            let (deliveries, ids, mut settled) = self.deliveries(&entries).await;
            let outcomes = if deliveries.is_empty() {
                Vec::new()
            } else {
                let cut = limits
                    .timeout
                    .saturating_mul(u32::try_from(deliveries.len()).unwrap_or(u32::MAX))
                    + Duration::from_secs(1);
                match tokio::time::timeout(cut, sink.send(&deliveries)).await {
                    Ok(o) => o,
                    Err(_) => vec![
                        Outcome::Retry {
                            after: None,
                            reason: format!("no answer within {} s", cut.as_secs()),
                        };
                        deliveries.len()
                    ],
                }
            };
            let mut retry_after: Option<Option<Duration>> = None;
            let mut disable: Option<String> = None;
            for (i, &entry_id) in ids.iter().enumerate() {
                let outcome = outcomes.get(i).cloned().unwrap_or(Outcome::Retry {
                    after: None,
                    reason: "the sink gave no outcome".into(),
                });
                match outcome {
                    Outcome::Sent => settled.push((entry_id, Settled::Sent)),
                    Outcome::Skipped => settled.push((entry_id, Settled::Skipped)),
                    Outcome::Failed { reason } => settled.push((entry_id, Settled::Failed(reason))),
                    Outcome::Retry { after, reason } => {
                        settled.push((entry_id, Settled::Retry(reason)));
                        retry_after = Some(after);
                        break;
                    }
                    Outcome::Disable { reason } => {
                        disable = Some(reason);
                        break;
                    }
                }
            }
            let (n, s2, reason) = (name.clone(), settled, disable.clone());
            let res = blocking(&self.store, move |s| {
                s.settle_outbox(&n, &s2, crate::clock::now_ms())?;
                if let Some(r) = reason {
                    s.disable_target(&n, &r)?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = res {
                tracing::error!(target = %name, "cannot record deliveries: {e}");
            }
            if let Some(reason) = disable {
                tracing::warn!(target = %name, "target disabled: {reason}");
                return;
            }
            let wait = match retry_after {
                Some(after) => {
                    failures = failures.saturating_add(1);
                    let wait = after
                        .map(|a| a.min(self.config.backoff_max))
                        .unwrap_or_else(|| self.backoff(failures));
                    tracing::debug!(target = %name, ?wait, failures, "delivery retried");
                    wait
                }
                None => {
                    failures = 0;
                    limits.min_interval
                }
            };
            if !wait.is_zero() && self.pause(&mut stop, wait).await {
                return;
            }
        }
    }

    /// Waits `d`; true when the server stops meanwhile.
    async fn pause(&self, stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stop.wait_for(|s| *s) => true,
        }
    }

    /// The deliveries of `entries` (their agents looked up for the sinks), and the
    /// entries whose stored payload cannot be read, settled as failed.
    async fn deliveries(
        &self,
        entries: &[OutboxEntry],
    ) -> (Vec<Delivery>, Vec<i64>, Vec<(i64, Settled)>) {
        let mut out = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        let mut bad = Vec::new();
        for e in entries {
            match payload(e) {
                Ok(p) => {
                    ids.push(e.id);
                    out.push(Delivery {
                        id: e.delivery.clone(),
                        payload: p,
                        link: None,
                    })
                }
                Err(why) => bad.push((e.id, Settled::Failed(why))),
            }
        }
        let wanted: Vec<String> = out
            .iter()
            .map(|d| match &d.payload {
                Payload::Response(r) => r.agent.clone(),
                Payload::Metric { agent, .. } => agent.clone(),
            })
            .filter(|a| {
                !self
                    .agents
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(a)
            })
            .collect();
        for a in wanted {
            if let Ok(Some(rec)) = blocking(&self.store, move |s| s.agent(&a)).await {
                self.agents
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rec.info.id.clone(), rec.info);
            }
        }
        (out, ids, bad)
    }
}

/// The payload of a stored entry.
fn payload(e: &OutboxEntry) -> Result<Payload, String> {
    match e.kind.as_str() {
        "response" => serde_json::from_str(&e.payload)
            .map(Payload::Response)
            .map_err(|err| format!("the stored response cannot be read: {err}")),
        "metric" => {
            #[derive(serde::Deserialize)]
            struct M {
                agent: String,
                service: String,
                series: nonstop_model::metrics::MetricSeries,
                time_ms: i64,
            }
            serde_json::from_str::<M>(&e.payload)
                .map(|m| Payload::Metric {
                    agent: m.agent,
                    service: m.service,
                    series: m.series,
                    time_ms: m.time_ms,
                })
                .map_err(|err| format!("the stored metric report cannot be read: {err}"))
        }
        other => Err(format!("unknown kind of outbox entry {other:?}")),
    }
}
