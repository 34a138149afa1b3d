//! The agent thread's work: rules in, probes armed, hits decoded into responses.

use crate::limits::RuleLimits;
use crate::metrics::RuleSeries;
use crate::redact::Redactor;
use nonstop_capture::capture::{CapturePlan, CapturedMemory, CapturedRoot};
use nonstop_debuginfo::{Availability, DebugInfo, Site, Stacks, Variable};
use nonstop_expr::{Env, Expr, Template};
use nonstop_model::{
    Action, CaptureLimits, Frame, Locals, MetricKind, MetricSeries, Response, Rule, RuleStatus,
    SourceLocation, StatusKind, Value,
};
use nonstop_probe::{Engine, EntrySource, ProbeId, ProbeSpec, RateLimit};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Facts about this agent that go into every response.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Agent id.
    pub agent: String,
    /// Service name.
    pub service: String,
}

/// One patched address, shared by every rule that has code there: the engine allows one
/// probe per address, and two rules on one line (a log line and a snapshot, say) are common.
struct SiteProbe {
    id: ProbeId,
    site: Site,
    /// Every variable in scope at the address: the plan's roots, in order.
    vars: Vec<Variable>,
    /// Whether the plan copies stack for unwinding (some user is a snapshot).
    stack: bool,
    /// The engine's rate limit for the probe: at least each user's own rate.
    per_second: f64,
    /// Whether the engine checks a condition before capturing (only with one user).
    filtered: bool,
    /// Whether the probe only counts in the trap path (one count rule without tags).
    count_only: bool,
    /// The probe's trap-path count already added to the rule's series.
    counted_seen: u64,
    /// The rules using it.
    users: Vec<String>,
    /// The companion at the function's entry (its runtime address) whose records the plan
    /// reads, held for as long as this probe is armed.
    companion: Option<u64>,
}

/// A companion probe at a function's entry, recording the registers that line probes'
/// entry-value variables read; shared by every site and rule that needs it.
struct Companion {
    id: ProbeId,
    /// Sites holding it; it is disarmed with the last.
    users: usize,
}

/// A token bucket: one per rule, since a probe may serve several rules.
struct Gate {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Gate {
    fn new(per_second: f64, burst: u32) -> Gate {
        Gate {
            per_second,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a metric rule measures, and what it has recorded.
struct MetricRule {
    /// The value measured (gauge, histogram).
    value: Option<Expr>,
    /// Tag name → expression.
    tags: Vec<(String, Expr)>,
    series: RuleSeries,
    /// Hits whose value or a tag could not be evaluated (not recorded), and the last reason.
    eval_errors: u64,
    last_eval_error: Option<String>,
}

impl MetricRule {
    /// What the rule's status says about it, if anything.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(why) = &self.last_eval_error {
            notes.push(format!(
                "{} hits not recorded because the metric's value or a tag could not be evaluated; last: {why}",
                self.eval_errors
            ));
        }
        let overflow = self.series.overflow();
        if overflow > 0 {
            notes.push(format!(
                "{overflow} hits not recorded: the metric already has {} tag combinations on this agent (use tags with fewer values)",
                nonstop_model::metrics::MAX_SERIES_PER_RULE
            ));
        }
        notes
    }
}

/// A rule as this agent holds it.
struct ArmedRule {
    rule: Rule,
    limits: RuleLimits,
    capture: CaptureLimits,
    template: Option<Template>,
    /// The rule's condition (`when`), evaluated over the captured values.
    when: Option<Expr>,
    /// A snapshot rule's watch expressions, in the rule's order.
    watch: Vec<Expr>,
    /// Hits whose condition could not be evaluated (counted as false), and the last reason.
    condition_errors: u64,
    last_condition_error: Option<String>,
    /// Runtime addresses of the rule's probes (keys of `Agent::sites`).
    probes: Vec<u64>,
    /// Variables the rule reads (`None`: all of them, for a snapshot).
    reads: Option<Vec<String>>,
    /// A metric rule's expressions and series.
    metric: Option<MetricRule>,
    gate: Gate,
    /// Hits the rule's own rate limit dropped in the agent.
    gated: u64,
    status: RuleStatus,
    armed_at: Instant,
    /// Hits emitted as responses (exact, across all the rule's probes).
    emitted: u64,
    /// Drops seen at the last status check, to tell when a rule is being rate-limited.
    last_dropped: u64,
}

/// Everything the agent thread owns.
pub struct Agent {
    identity: Identity,
    debug: Arc<DebugInfo>,
    bias: u64,
    stacks: Stacks,
    engine: &'static Engine,
    redactor: Redactor,
    rules: HashMap<String, ArmedRule>,
    sites: HashMap<u64, SiteProbe>,
    by_probe: HashMap<ProbeId, u64>,
    /// Companion probes by their runtime entry address.
    companions: HashMap<u64, Companion>,
    threads: HashMap<u32, String>,
    statuses_changed: bool,
    /// Metric rules removed since the last [`Agent::take_metrics`]: their series are dropped.
    removed_metric_rules: Vec<String>,
    clock: Clock,
}

/// Turns the engine's CLOCK_MONOTONIC hit times into wall-clock times.
struct Clock {
    /// Wall-clock ns minus monotonic ns, measured at start.
    offset: i128,
}

impl Clock {
    fn new() -> Clock {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Clock {
            offset: wall - nonstop_probe::monotonic_ns() as i128,
        }
    }

    fn wall_ns(&self, monotonic: u64) -> u64 {
        (monotonic as i128 + self.offset).max(0) as u64
    }

    fn wall_now(&self) -> u64 {
        self.wall_ns(nonstop_probe::monotonic_ns())
    }
}

/// A hit copied out of the engine's buffer.
pub struct RawHit {
    probe: ProbeId,
    time_ns: u64,
    tid: u32,
    record: Vec<u8>,
}

impl Agent {
    /// An agent over the running executable's debug info.
    pub fn new(
        identity: Identity,
        debug: Arc<DebugInfo>,
        bias: u64,
        stacks: Stacks,
        engine: &'static Engine,
        redactor: Redactor,
    ) -> Agent {
        Agent {
            identity,
            debug,
            bias,
            stacks,
            engine,
            redactor,
            rules: HashMap::new(),
            sites: HashMap::new(),
            by_probe: HashMap::new(),
            companions: HashMap::new(),
            threads: HashMap::new(),
            statuses_changed: false,
            removed_metric_rules: Vec::new(),
            clock: Clock::new(),
        }
    }

    /// Makes the armed rules equal `wanted`: arms new ones, disarms removed ones. Rules
    /// that stay are left alone (their counters go on).
    pub fn sync(&mut self, wanted: Vec<Rule>) {
        if !wanted.is_empty() {
            crate::drive::not_quiet();
        }
        let keep: std::collections::HashSet<&str> = wanted.iter().map(|r| r.id.as_str()).collect();
        let gone: Vec<String> = self
            .rules
            .keys()
            .filter(|id| !keep.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
        for rule in wanted {
            match self.rules.get(&rule.id) {
                Some(held) if held.rule == rule => {}
                Some(_) => {
                    self.remove(&rule.id.clone());
                    self.arm(rule);
                }
                None => self.arm(rule),
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(mut held) = self.rules.remove(id) {
            self.disarm_all(&mut held);
            self.statuses_changed = true;
            if held.metric.is_some() {
                self.removed_metric_rules.push(id.to_owned());
            }
        }
    }

    fn disarm_all(&mut self, held: &mut ArmedRule) {
        for addr in held.probes.drain(..) {
            let Some(site) = self.sites.get_mut(&addr) else {
                continue;
            };
            site.users.retain(|u| *u != held.rule.id);
            if site.users.is_empty() {
                // A probe that cannot be disarmed stays counted by the engine; nothing else to do.
                let _ = self.engine.disarm(site.id);
                let companion = site.companion;
                self.by_probe.remove(&site.id);
                self.sites.remove(&addr);
                self.release_companion(companion);
            }
        }
        held.status.probes = 0;
    }

    /// The companion at the runtime entry address `entry`, arming it for its first user;
    /// `None` when it cannot be armed (the engine takes one companion and one other probe
    /// per address; a site it refuses, say): the entry-value variables are then unavailable
    /// at every hit, and say so.
    fn hold_companion(&mut self, entry: u64) -> Option<ProbeId> {
        if let Some(c) = self.companions.get_mut(&entry) {
            c.users += 1;
            return Some(c.id);
        }
        let mut spec = ProbeSpec::new(entry, Arc::new(CapturePlan::default()));
        spec.records_entry = true;
        spec.time_cap = nonstop_model::defaults::HIT_TIME_CAP;
        spec.function = self.function_at(entry.wrapping_sub(self.bias));
        let id = self.engine.arm(spec).ok()?;
        self.companions.insert(entry, Companion { id, users: 1 });
        Some(id)
    }

    /// The runtime bounds of the function holding the file address `at` (for the fast
    /// path's proof), when its symbol has them.
    fn function_at(&self, at: u64) -> Option<std::ops::Range<u64>> {
        self.debug
            .function_bounds(at)
            .map(|f| self.bias.wrapping_add(f.start)..self.bias.wrapping_add(f.end))
    }

    /// Lets go of a site's companion; the last user disarms it.
    fn release_companion(&mut self, entry: Option<u64>) {
        let Some(entry) = entry else {
            return;
        };
        let Some(c) = self.companions.get_mut(&entry) else {
            return;
        };
        c.users = c.users.saturating_sub(1);
        if c.users == 0 {
            let _ = self.engine.disarm(c.id);
            self.companions.remove(&entry);
        }
    }

    /// Arms (or re-arms, with wider settings) the probe at `addr` for one more rule.
    fn use_site(
        &mut self,
        site: Site,
        vars: Vec<Variable>,
        held: &ArmedRule,
    ) -> Result<u64, String> {
        let rule = held.rule.id.as_str();
        let limits = &held.capture;
        let stack = held.rule.action == Action::Snapshot;
        let per_second = held.limits.per_second;
        let when = held.when.as_ref();
        let addr = self.bias.wrapping_add(site.address);
        let (stack, per_second, mut users) = match self.sites.get(&addr) {
            Some(old)
                if old.stack >= stack
                    && old.per_second >= per_second
                    && !old.filtered
                    && !old.count_only =>
            {
                let old = self.sites.get_mut(&addr).ok_or("internal: site vanished")?;
                old.users.push(rule.to_owned());
                return Ok(addr);
            }
            Some(old) => (
                old.stack || stack,
                old.per_second.max(per_second),
                old.users.clone(),
            ),
            None => (stack, per_second, Vec::new()),
        };
        let mut plan: CapturePlan = self.debug.capture_plan(&vars, limits);
        relocate(&mut plan, self.bias);
        if !stack {
            plan.stack_bytes = 0;
        }
        // Variables located by their value at function entry: a companion at the entry
        // records the registers for each frame, which this probe's plan reads.
        let mut companion = None;
        let entry = self
            .debug
            .entry_needs(site.address, &vars)
            .and_then(|needs| {
                let at = self.bias.wrapping_add(needs.entry);
                let id = (at != addr).then(|| self.hold_companion(at)).flatten()?;
                companion = Some(at);
                Some(EntrySource {
                    companion: id,
                    cfa_reg: needs.cfa.0,
                    cfa_offset: needs.cfa.1,
                })
            });
        // The condition goes into the trap path when this rule is the probe's only user and
        // every value it reads has a fixed place (or is computed from the entry registers
        // its companion records): a false hit then costs the trap and those few reads.
        // Otherwise the agent evaluates it after the capture.
        let filter = match when {
            Some(expr) if users.is_empty() => {
                let resolver = SiteResolver {
                    debug: &self.debug,
                    vars: &vars,
                    bias: self.bias,
                    entry_recorded: entry.is_some(),
                };
                nonstop_expr::filter::compile(expr, &resolver)
                    .ok()
                    .map(Arc::new)
            }
            _ => None,
        };
        let filtered = filter.is_some();
        // A count without tags, alone on its site, with no condition or one decided in the
        // trap path, is counted there: exact at any rate, no record, no rate limit.
        let count_only = users.is_empty()
            && held.limits.max_hits.is_none()
            && (when.is_none() || filtered)
            && held
                .metric
                .as_ref()
                .is_some_and(|m| m.tags.is_empty() && m.value.is_none());
        let spec = ProbeSpec {
            address: addr,
            plan: Arc::new(plan),
            // The agent counts max hits per rule (conditions and sharing make the engine's
            // count the wrong one); the engine keeps the rate and the time cap.
            max_hits: None,
            rate: (!count_only).then(|| RateLimit {
                per_second,
                burst: crate::limits::burst_for(per_second),
            }),
            time_cap: nonstop_model::defaults::HIT_TIME_CAP,
            filter,
            count_only,
            // The fast path (on unless NONSTOP_FAST_PATH=0) decodes the whole function.
            function: self.function_at(site.address),
            records_entry: false,
            entry,
        };
        if let Some(old) = self.sites.get(&addr)
            && old.count_only
        {
            // Its counts so far go to its rule before the probe is replaced.
            self.collect_site_counts(addr);
        }
        if let Some(old) = self.sites.remove(&addr) {
            let _ = self.engine.disarm(old.id);
            self.by_probe.remove(&old.id);
            // The new probe already holds the companion (when it needs one), so it stays.
            self.release_companion(old.companion);
        }
        // Builds the symbolizer now, so the first hit is not the one that waits for it.
        let _ = self.debug.frames_at(site.address);
        match self.engine.arm(spec) {
            Ok(id) => {
                users.push(rule.to_owned());
                self.by_probe.insert(id, addr);
                self.sites.insert(
                    addr,
                    SiteProbe {
                        id,
                        site,
                        vars,
                        stack,
                        per_second,
                        filtered,
                        count_only,
                        counted_seen: 0,
                        users,
                        companion,
                    },
                );
                Ok(addr)
            }
            Err(e) => {
                self.release_companion(companion);
                Err(format!("0x{:x}: {e}", site.address))
            }
        }
    }

    /// How many of a rule's probes got the fast path and why the others did not; `None`
    /// when the fast path is off.
    fn fast_path_summary(&self, probes: &[u64]) -> Option<String> {
        let states: Vec<nonstop_probe::FastPath> = probes
            .iter()
            .filter_map(|addr| self.sites.get(addr))
            .filter_map(|s| self.engine.stats(s.id))
            .map(|s| s.fast_path)
            .collect();
        let off = nonstop_probe::FastPath::No(nonstop_probe::FastRefusal::Off);
        if states.is_empty() || states.iter().all(|s| *s == off) {
            return None;
        }
        let yes = states
            .iter()
            .filter(|s| matches!(s, nonstop_probe::FastPath::Yes { .. }))
            .count();
        let first_no = states
            .iter()
            .find(|s| matches!(s, nonstop_probe::FastPath::No(_)));
        Some(match (yes, first_no) {
            (_, None) => "fast path: yes".to_string(),
            (0, Some(no)) if states.len() == 1 => no.to_string(),
            (k, Some(no)) => format!(
                "fast path: {k} of {} probes; {}",
                states.len(),
                no.to_string().trim_start_matches("fast path: ")
            ),
        })
    }

    /// Resolves and arms one rule; its status says what happened.
    fn arm(&mut self, rule: Rule) {
        let status = |kind, message: Option<String>| RuleStatus {
            rule: rule.id.clone(),
            status: kind,
            message,
            probes: 0,
            hits: 0,
            dropped: 0,
            fast_path: None,
        };
        let mut held = ArmedRule {
            limits: RuleLimits {
                per_second: 1.0,
                burst: 1,
                max_hits: None,
                expires: Duration::from_secs(3600),
            },
            capture: rule.limits.resolve(),
            template: None,
            when: None,
            watch: Vec::new(),
            condition_errors: 0,
            last_condition_error: None,
            probes: Vec::new(),
            reads: None,
            metric: None,
            gate: Gate::new(1.0, 1),
            gated: 0,
            status: status(StatusKind::Pending, None),
            armed_at: Instant::now(),
            emitted: 0,
            last_dropped: 0,
            rule: rule.clone(),
        };
        self.statuses_changed = true;
        match self.prepare(&mut held) {
            Ok(()) => {
                held.status.status = StatusKind::Armed;
                held.status.probes = held.probes.len() as u32;
                held.status.fast_path = self.fast_path_summary(&held.probes);
            }
            Err(message) => {
                self.disarm_all(&mut held);
                held.status = status(StatusKind::Error, Some(message));
            }
        }
        self.rules.insert(rule.id.clone(), held);
    }

    fn prepare(&mut self, held: &mut ArmedRule) -> Result<(), String> {
        let rule = held.rule.clone();
        held.limits = RuleLimits::of(&rule)?;
        match rule.action {
            Action::Snapshot => {}
            Action::Log => {
                let src = rule.template.as_deref().ok_or(
                    "a log rule needs a template: add \"template\": \"paid {order.total}\"",
                )?;
                held.template =
                    Some(Template::parse(src).map_err(|e| format!("bad template:\n{e}"))?);
            }
            Action::Metric => held.metric = Some(parse_metric(&rule)?),
        }
        if let Some(when) = &rule.when {
            held.when = Some(Expr::parse(when).map_err(|e| format!("bad condition:\n{e}"))?);
        }
        held.watch = parse_watch(&rule)?;
        let sites = self.debug.resolve(&rule.at).map_err(|e| e.to_string())?;
        if sites.is_empty() {
            return Err(format!("no code at {}", rule.at));
        }
        let mut armed = Vec::new();
        let mut refused = Vec::new();
        for site in sites {
            let vars = self
                .debug
                .variables_at(site.address)
                .map_err(|e| e.to_string())?;
            // The variables' real types: a misspelt field or a string compared with a
            // number is refused now, naming what exists, not at every hit.
            let scope = self.debug.expr_scope(&vars);
            let at = |e: String| format!("{e} (at {}:{})", site.file, site.line);
            if let Some(when) = &held.when {
                when.check_condition(&scope)
                    .map_err(|e| at(format!("condition: {e}")))?;
            }
            if let Some(t) = &held.template {
                t.check(&scope).map_err(|e| at(format!("template: {e}")))?;
            }
            for w in &held.watch {
                w.check(&scope)
                    .map_err(|e| at(format!("watch `{}`: {e}", w.source())))?;
            }
            if let Some(m) = &held.metric {
                if let Some(v) = &m.value {
                    v.check_number(&scope)
                        .map_err(|e| at(format!("metric value: {e}")))?;
                }
                for (name, t) in &m.tags {
                    t.check(&scope)
                        .map_err(|e| at(format!("metric tag {name}: {e}")))?;
                }
            }
            // A snapshot shows every local; a log line only needs what it reads.
            if rule.action != Action::Snapshot {
                let mut roots: Vec<String> = Vec::new();
                if let Some(t) = &held.template {
                    roots.extend(t.roots().into_iter().map(str::to_owned));
                }
                if let Some(w) = &held.when {
                    roots.extend(w.roots().into_iter().map(str::to_owned));
                }
                if let Some(m) = &held.metric {
                    let exprs = m.value.iter().chain(m.tags.iter().map(|(_, t)| t));
                    roots.extend(exprs.flat_map(|e| e.roots()).map(str::to_owned));
                }
                roots.sort();
                roots.dedup();
                held.reads = Some(roots);
            }
            match self.use_site(site, vars, held) {
                Ok(addr) => armed.push(addr),
                Err(e) => refused.push(e),
            }
        }
        if armed.is_empty() {
            return Err(format!(
                "cannot probe {}: {}",
                held.rule.at,
                refused.join("; ")
            ));
        }
        held.gate = Gate::new(held.limits.per_second, held.limits.burst);
        held.probes = armed;
        if let Some(m) = &mut held.metric
            && m.tags.is_empty()
        {
            m.series
                .start_at_zero(Default::default(), &rfc3339(self.clock.wall_now()));
        }
        if !refused.is_empty() {
            held.status.message = Some(format!(
                "{} of {} addresses armed; refused: {}",
                held.probes.len(),
                held.probes.len() + refused.len(),
                refused.join("; ")
            ));
        }
        Ok(())
    }

    /// Adds what the count-only probe at `addr` counted since the last look to its rule.
    fn collect_site_counts(&mut self, addr: u64) {
        let Some(site) = self.sites.get_mut(&addr) else {
            return;
        };
        if !site.count_only {
            return;
        }
        let Some(stats) = self.engine.stats(site.id) else {
            return;
        };
        let delta = stats.counted.saturating_sub(site.counted_seen);
        site.counted_seen = stats.counted;
        if delta == 0 {
            return;
        }
        let time = rfc3339(self.clock.wall_now());
        for user in &site.users {
            if let Some(held) = self.rules.get_mut(user)
                && let Some(m) = &mut held.metric
            {
                m.series.add_count(delta, &time);
                held.emitted += delta;
                held.status.hits = held.emitted;
                self.statuses_changed = true;
            }
        }
    }

    fn collect_counts(&mut self) {
        let addrs: Vec<u64> = self
            .sites
            .iter()
            .filter(|(_, s)| s.count_only)
            .map(|(a, _)| *a)
            .collect();
        for addr in addrs {
            self.collect_site_counts(addr);
        }
    }

    /// Whether a rule is held (armed, waiting for its code, or refused with a status).
    pub fn holds_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The budget's work (take hot sites out, put them back); how long until one is due.
    pub fn enforce_budget(&self) -> Option<Duration> {
        self.engine.enforce_budget()
    }

    /// Sleeps until a hit arrives or `timeout` passes (no CPU meanwhile).
    pub fn wait(&self, timeout: Duration) {
        self.engine.wait(timeout)
    }

    /// This agent's id.
    pub fn id(&self) -> &str {
        &self.identity.agent
    }

    /// Loads what stack traces need ahead of the first hit.
    pub fn warm_up(&self) {
        self.stacks.warm_up("libnonstop_agent");
    }

    /// Copies pending hits out of the engine (quickly, so its buffer frees up).
    pub fn drain(&self) -> Vec<RawHit> {
        let mut hits = Vec::new();
        self.engine.drain(|hit| {
            hits.push(RawHit {
                probe: hit.probe,
                time_ns: hit.time_ns,
                tid: hit.tid,
                record: hit.record.to_vec(),
            })
        });
        hits
    }

    /// Turns hits into responses, enforcing each rule's exact max hits.
    pub fn respond(&mut self, hits: Vec<RawHit>) -> Vec<Response> {
        let mut out = Vec::new();
        for hit in hits {
            let Some(addr) = self.by_probe.get(&hit.probe).copied() else {
                continue; // a late hit of a probe that was disarmed
            };
            let Some(users) = self.sites.get(&addr).map(|s| s.users.clone()) else {
                continue;
            };
            let Ok(mem) = CapturedMemory::parse(&hit.record) else {
                continue;
            };
            let thread = self.thread_name(hit.tid);
            for rule_id in users {
                if let Some(r) = self.respond_one(&rule_id, addr, &hit, &mem, &thread) {
                    out.push(r);
                }
            }
        }
        out
    }

    /// One rule's response to one hit, if its limits and condition let it through.
    fn respond_one(
        &mut self,
        rule_id: &str,
        addr: u64,
        hit: &RawHit,
        mem: &CapturedMemory,
        thread: &str,
    ) -> Option<Response> {
        let site = self.sites.get(&addr)?;
        let held = self.rules.get_mut(rule_id)?;
        if held.limits.max_hits.is_some_and(|m| held.emitted >= m) {
            return None;
        }
        if !held.gate.allow() {
            held.gated += 1;
            return None;
        }
        let mut locals = Vec::with_capacity(site.vars.len());
        for (i, var) in site.vars.iter().enumerate() {
            if held.reads.as_ref().is_some_and(|r| !r.contains(&var.name)) {
                continue;
            }
            let mut value = match (&var.availability, mem.roots.get(i)) {
                (Availability::OptimizedOut, _) => Value::error(&var.type_name, "optimized out"),
                (Availability::EntryValue, _) => Value::error(
                    &var.type_name,
                    "unavailable here (only its value at function entry is described)",
                ),
                (_, Some(root)) => self.debug.decode(var, root, mem, &held.capture),
                (_, None) => Value::error(&var.type_name, "not captured"),
            };
            if matches!(mem.roots.get(i), Some(CapturedRoot::NoSpace)) {
                value.truncated = true;
            }
            self.redactor.apply(&var.name, &mut value);
            locals.push((var.name.clone(), value));
        }
        let locals = Locals(locals);
        let env = HitEnv {
            locals: &locals,
            thread,
            hit_count: held.emitted,
        };
        if let Some(when) = &held.when {
            match when.eval_condition(&env) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    // A condition that cannot be evaluated counts as false, and says why.
                    held.condition_errors += 1;
                    held.last_condition_error = Some(e.to_string());
                    self.statuses_changed = true;
                    return None;
                }
            }
        }
        if let Some(m) = &mut held.metric {
            // A metric hit is aggregated here and produces no response.
            match measure(m, &env) {
                Ok((tags, value)) => {
                    let time = rfc3339(self.clock.wall_ns(hit.time_ns));
                    m.series.record(tags, value, &time);
                    held.emitted += 1;
                    held.status.hits = held.emitted;
                }
                Err(why) => {
                    m.eval_errors += 1;
                    m.last_eval_error = Some(why);
                }
            }
            self.statuses_changed = true;
            return None;
        }
        let snapshot = held.rule.action == Action::Snapshot;
        let frames = if snapshot {
            nonstop_model::fold_runtime_frames(self.stacks.frames(
                &mem.regs,
                mem,
                held.capture.frames as usize,
            ))
        } else {
            site_frames(&site.site)
        };
        let message = held.template.as_ref().map(|t| t.render(&env).text);
        let watch = Locals(
            held.watch
                .iter()
                .map(|w| (w.source().to_owned(), w.eval_value(&env)))
                .collect(),
        );
        held.emitted += 1;
        held.status.hits = held.emitted;
        self.statuses_changed = true;
        Some(Response {
            rule: rule_id.to_owned(),
            agent: self.identity.agent.clone(),
            service: self.identity.service.clone(),
            time: rfc3339(self.clock.wall_ns(hit.time_ns)),
            thread: thread.to_owned(),
            location: SourceLocation {
                file: site.site.file.clone(),
                line: site.site.line,
                function: site.site.functions.first().cloned().unwrap_or_default(),
            },
            message,
            frames,
            locals: if snapshot { locals } else { Locals::default() },
            watch,
        })
    }

    /// Updates statuses from the engine's counters, expiry and max hits; disarms what is
    /// finished. Returns the statuses when any changed since the last call.
    pub fn check(&mut self) -> Option<Vec<RuleStatus>> {
        self.collect_counts();
        let budget_percent = self.engine.budget_fraction() * 100.0;
        let ids: Vec<String> = self.rules.keys().cloned().collect();
        for id in ids {
            let Some(mut held) = self.rules.remove(&id) else {
                continue;
            };
            let before = held.status.clone();
            if matches!(
                held.status.status,
                StatusKind::Armed | StatusKind::RateLimited
            ) {
                let mut dropped = held.gated;
                let mut trap_condition_errors = 0;
                let mut disarm_reason = None;
                let mut sampled: Option<String> = None;
                let mut uncounted = 0u64;
                for addr in &held.probes {
                    let Some(site) = self.sites.get(addr) else {
                        continue;
                    };
                    if let Some(s) = self.engine.stats(site.id) {
                        dropped += s.dropped_rate + s.dropped_budget + s.dropped_full;
                        let sm = s.sampling;
                        if sampling_now(&sm) {
                            let why = match sm.reason {
                                Some(nonstop_probe::OutReason::Rate) => format!(
                                    "rate limit {}/s",
                                    group_digits(held.limits.per_second.round() as u64)
                                ),
                                _ => format!("budget {budget_percent} % of a core"),
                            };
                            sampled = Some(sampled_text(&sm, &why));
                            // Executions while out: the line's rate, times the share of
                            // traps that matched the condition.
                            let matching = s.traps.saturating_sub(s.filtered + s.filter_errors);
                            let share = matching as f64 / s.traps.max(1) as f64;
                            uncounted += (sm.line_runs_per_second as f64
                                * sm.out_time.as_secs_f64()
                                * share) as u64;
                        }
                        trap_condition_errors += s.filter_errors;
                        // Max hits are enforced exactly below, across the rule's probes.
                        if let Some(r @ nonstop_probe::DisarmReason::TimeCap { .. }) =
                            s.disarm_reason
                        {
                            disarm_reason = Some(format!("disarmed on this agent: {r}"));
                        }
                    }
                }
                held.status.dropped = dropped;
                // A probe armed later inside this rule's fast-path jump puts it back on int3.
                held.status.fast_path = self.fast_path_summary(&held.probes);
                if let Some(reason) = disarm_reason {
                    self.disarm_all(&mut held);
                    held.status.status = StatusKind::Error;
                    held.status.message = Some(reason);
                } else if held.limits.max_hits.is_some_and(|m| held.emitted >= m) {
                    self.disarm_all(&mut held);
                    held.status.status = StatusKind::Done;
                    held.status.message = Some(format!("reached its max hits ({})", held.emitted));
                } else if held.armed_at.elapsed() >= held.limits.expires {
                    self.disarm_all(&mut held);
                    held.status.status = StatusKind::Expired;
                    held.status.message = Some(format!(
                        "expired after {}",
                        held.rule
                            .expires
                            .as_deref()
                            .unwrap_or("its default lifetime")
                    ));
                } else if let Some(text) = sampled {
                    held.status.status = StatusKind::RateLimited;
                    let mut text = text;
                    if held.metric.is_some() && uncounted > 0 {
                        text.push_str(&format!(
                            "; ~{} executions uncounted while the probe was out (estimate)",
                            group_digits(uncounted)
                        ));
                    }
                    held.status.message = Some(text);
                } else if dropped > held.last_dropped {
                    held.status.status = StatusKind::RateLimited;
                    held.status.message = Some(format!(
                        "{dropped} hits dropped by the rate limit ({}/s) or the CPU budget",
                        held.limits.per_second
                    ));
                } else if held.status.status == StatusKind::RateLimited {
                    held.status.status = StatusKind::Armed;
                    held.status.message = None;
                }
                if trap_condition_errors > 0 && held.last_condition_error.is_none() {
                    held.status.message = Some(format!(
                        "{trap_condition_errors} hits where the condition could not be evaluated \
                         (a null pointer or unreadable memory; counted as false)"
                    ));
                }
                if held.status.status == StatusKind::Armed {
                    let mut notes = Vec::new();
                    if let Some(why) = &held.last_condition_error {
                        notes.push(format!(
                            "{} hits where the condition could not be evaluated (counted as false); last: {why}",
                            held.condition_errors
                        ));
                    }
                    if let Some(m) = &held.metric {
                        notes.extend(m.notes());
                    }
                    if !notes.is_empty() {
                        held.status.message = Some(notes.join("; "));
                    }
                }
                held.last_dropped = dropped;
            }
            if held.status != before {
                self.statuses_changed = true;
            }
            self.rules.insert(id, held);
        }
        if !std::mem::take(&mut self.statuses_changed) {
            return None;
        }
        let mut all: Vec<RuleStatus> = self.rules.values().map(|r| r.status.clone()).collect();
        all.sort_by(|a, b| a.rule.cmp(&b.rule));
        Some(all)
    }

    /// The metric series that changed since the last call, and the metric rules removed
    /// since then (whose series are gone).
    pub fn take_metrics(&mut self) -> MetricsUpdate {
        self.collect_counts();
        let mut changed = Vec::new();
        for held in self.rules.values_mut() {
            if let Some(m) = &mut held.metric {
                changed.extend(m.series.take_changed());
            }
        }
        MetricsUpdate {
            changed,
            removed_rules: std::mem::take(&mut self.removed_metric_rules),
        }
    }

    /// Every series of every metric rule this agent holds.
    pub fn all_series(&self) -> impl Iterator<Item = &MetricSeries> {
        self.rules
            .values()
            .filter_map(|r| r.metric.as_ref())
            .flat_map(|m| m.series.all())
    }

    /// This agent's service.
    pub fn service(&self) -> &str {
        &self.identity.service
    }

    fn thread_name(&mut self, tid: u32) -> String {
        self.threads
            .entry(tid)
            .or_insert_with(|| {
                std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                    .map(|s| s.trim_end().to_owned())
                    .unwrap_or_else(|_| format!("thread-{tid}"))
            })
            .clone()
    }
}

/// What changed in the metrics since the last report.
#[derive(Debug, Default)]
pub struct MetricsUpdate {
    /// Series with new values (cumulative).
    pub changed: Vec<MetricSeries>,
    /// Metric rules no longer held: their series are to be dropped.
    pub removed_rules: Vec<String>,
}

impl MetricsUpdate {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed_rules.is_empty()
    }
}

/// The metric of a `metric` rule, parsed; its expressions are checked per site later.
fn parse_metric(rule: &Rule) -> Result<MetricRule, String> {
    let m = rule.metric.as_ref().ok_or(
        "a metric rule needs a metric: add \"metric\": {\"kind\": \"count\", \"name\": \"orders\"} \
         (or kind gauge or histogram with a \"value\" expression)",
    )?;
    if m.name.trim().is_empty() {
        return Err("the metric needs a name: add \"name\": \"orders\" to \"metric\"".into());
    }
    let value = match (m.kind, &m.value) {
        (MetricKind::Count, None) => None,
        (MetricKind::Count, Some(v)) => {
            return Err(format!(
                "a count metric counts hits and takes no value: remove \"value\": {v:?}, \
                 or make the metric a gauge or histogram of it"
            ));
        }
        (kind, None) => {
            let kind = if kind == MetricKind::Gauge {
                "gauge"
            } else {
                "histogram"
            };
            return Err(format!(
                "a {kind} metric needs a value expression: add \"value\": \"order.total\" to \"metric\""
            ));
        }
        (_, Some(v)) => Some(Expr::parse(v).map_err(|e| format!("bad metric value:\n{e}"))?),
    };
    let mut tags = Vec::with_capacity(m.tags.len());
    for (name, src) in &m.tags {
        let expr = Expr::parse(src).map_err(|e| format!("bad metric tag {name}:\n{e}"))?;
        tags.push((name.clone(), expr));
    }
    Ok(MetricRule {
        value,
        tags,
        series: RuleSeries::new(&rule.id, &m.name, m.kind),
        eval_errors: 0,
        last_eval_error: None,
    })
}

/// A snapshot rule's watch expressions, parsed; they are checked per site later.
fn parse_watch(rule: &Rule) -> Result<Vec<Expr>, String> {
    if rule.watch.is_empty() {
        return Ok(Vec::new());
    }
    if rule.action != Action::Snapshot {
        return Err(
            "watch expressions belong to snapshot rules: put the expressions in the log \
             template (\"{order.total}\") or make the rule a snapshot"
                .into(),
        );
    }
    if rule.watch.len() > nonstop_model::rule::MAX_WATCH {
        return Err(format!(
            "{} watch expressions: a rule takes at most {}",
            rule.watch.len(),
            nonstop_model::rule::MAX_WATCH
        ));
    }
    rule.watch
        .iter()
        .enumerate()
        .map(|(i, src)| {
            Expr::parse(src).map_err(|e| format!("bad watch expression {} `{src}`:\n{e}", i + 1))
        })
        .collect()
}

/// A metric hit's tag values (display form: strings without quotes, enum variants by
/// name) and value, or why they cannot be had.
fn measure(
    m: &MetricRule,
    env: &HitEnv<'_>,
) -> Result<(std::collections::BTreeMap<String, String>, Option<f64>), String> {
    let value = match &m.value {
        Some(v) => Some(v.eval_number(env).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut tags = std::collections::BTreeMap::new();
    for (name, expr) in &m.tags {
        let text = expr
            .eval_display(env)
            .map_err(|e| format!("tag {name}: {e}"))?;
        tags.insert(name.clone(), text);
    }
    Ok((tags, value))
}

/// Resolves a condition's paths to trap-path reads at one site.
struct SiteResolver<'a> {
    debug: &'a DebugInfo,
    vars: &'a [Variable],
    bias: u64,
    /// Whether a companion records this site's entry registers: without one, a variable
    /// computed from them has no value in the trap path (the agent then says why).
    entry_recorded: bool,
}

impl SiteResolver<'_> {
    fn var(&self, name: &str) -> Option<&Variable> {
        self.vars.iter().find(|v| {
            v.name == name
                && (self.entry_recorded || !matches!(v.availability, Availability::FromEntry(_)))
        })
    }
}

impl nonstop_expr::filter::PathResolver for SiteResolver<'_> {
    fn read(&self, path: &[String]) -> Option<nonstop_capture::filter::FilterRead> {
        let (name, rest) = path.split_first()?;
        let mut read = self.debug.filter_read(self.var(name)?, rest)?;
        relocate_source(&mut read.root, self.bias);
        Some(read)
    }

    fn variant(
        &self,
        path: &[String],
        variant: &str,
    ) -> Option<(nonstop_capture::filter::FilterRead, u64)> {
        let (name, rest) = path.split_first()?;
        let (mut read, value) = self.debug.filter_variant(self.var(name)?, rest, variant)?;
        relocate_source(&mut read.root, self.bias);
        Some((read, value))
    }
}

fn relocate_source(source: &mut nonstop_capture::capture::PieceSource, bias: u64) {
    nonstop_debuginfo::relocate_source(source, bias);
}

/// What a condition or template sees at a hit.
struct HitEnv<'a> {
    locals: &'a Locals,
    thread: &'a str,
    hit_count: u64,
}

impl Env for HitEnv<'_> {
    fn var(&self, name: &str) -> Option<&Value> {
        self.locals.get(name)
    }
    fn thread(&self) -> &str {
        self.thread
    }
    fn hit_count(&self) -> u64 {
        self.hit_count
    }
}

/// Adds the load bias to addresses of statics in the plan.
fn relocate(plan: &mut CapturePlan, bias: u64) {
    for root in &mut plan.roots {
        for piece in &mut root.pieces {
            relocate_source(&mut piece.source, bias);
        }
    }
}

/// The frames a log response carries: the site's inline chain, no unwinding.
fn site_frames(site: &Site) -> Vec<Frame> {
    site.functions
        .iter()
        .enumerate()
        .map(|(i, f)| Frame {
            function: f.clone(),
            file: (i == 0).then(|| site.file.clone()),
            line: (i == 0).then_some(site.line),
            folded: Vec::new(),
        })
        .collect()
}

/// Whether the budget samples the site now: it is out, or it went back in and has not yet
/// stayed in for a calm window (which resets the back-off).
fn sampling_now(sm: &nonstop_probe::Sampling) -> bool {
    sm.times_out > 0 && (sm.out || sm.backoff > nonstop_probe::FIRST_BACKOFF)
}

/// The status text of a site the budget samples: how often the line runs, and how much of
/// the time the probe was in, `why` (the budget or the rate limit): `line runs
/// ~7,100,000/s; probe sampled 1 window in 8 (budget 1 % of a core)`.
fn sampled_text(sm: &nonstop_probe::Sampling, why: &str) -> String {
    let in_ns = sm.in_time.as_nanos().max(1) as f64;
    let total = in_ns + sm.out_time.as_nanos() as f64;
    let one_in = (total / in_ns).round().max(1.0) as u64;
    // Where the line's own time was lost in the traps', the rate is only a floor.
    let about = if sm.line_rate_is_floor { "over " } else { "~" };
    format!(
        "line runs {about}{}/s; probe sampled 1 window in {one_in} ({why})",
        group_digits(sm.line_runs_per_second)
    )
}

/// `7100000` → `7,100,000`.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats nanoseconds since the Unix epoch as RFC 3339 with microseconds, UTC.
pub fn rfc3339(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns);
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped_by_three() {
        let all: Vec<String> = [0, 7, 999, 1000, 65_536, 7_100_000, 1_000_000_000]
            .into_iter()
            .map(group_digits)
            .collect();
        assert_eq!(
            all,
            [
                "0",
                "7",
                "999",
                "1,000",
                "65,536",
                "7,100,000",
                "1,000,000,000"
            ]
        );
    }

    fn sampling(in_ms: u64, out_ms: u64, runs: u64) -> nonstop_probe::Sampling {
        nonstop_probe::Sampling {
            out: true,
            times_out: 3,
            out_time: Duration::from_millis(out_ms),
            in_time: Duration::from_millis(in_ms),
            reason: Some(nonstop_probe::OutReason::Budget),
            backoff: Duration::from_millis(400),
            line_runs_per_second: runs,
            line_rate_is_floor: false,
        }
    }

    #[test]
    fn the_sampled_status_says_how_often_the_line_runs_and_the_probe_was_in() {
        assert_eq!(
            sampled_text(&sampling(125, 875, 7_100_000), "budget 1 % of a core"),
            "line runs ~7,100,000/s; probe sampled 1 window in 8 (budget 1 % of a core)"
        );
        // 1 in 2.6 rounds to 3; never less than 1 in 1.
        assert_eq!(
            sampled_text(&sampling(500, 800, 42), "rate limit 1,000/s"),
            "line runs ~42/s; probe sampled 1 window in 3 (rate limit 1,000/s)"
        );
        let mut floor = sampling(10, 990, 13_000_000);
        floor.line_rate_is_floor = true;
        assert_eq!(
            sampled_text(&floor, "budget 1 % of a core"),
            "line runs over 13,000,000/s; probe sampled 1 window in 100 (budget 1 % of a core)"
        );
        assert_eq!(
            sampled_text(&sampling(0, 0, 0), "budget 0.5 % of a core"),
            "line runs ~0/s; probe sampled 1 window in 1 (budget 0.5 % of a core)"
        );
    }

    #[test]
    fn a_site_is_sampled_until_a_calm_window_resets_its_back_off() {
        let mut sm = sampling(10, 100, 1);
        assert!(sampling_now(&sm), "out");
        sm.out = false;
        assert!(sampling_now(&sm), "back in, back-off 400 ms");
        sm.backoff = nonstop_probe::FIRST_BACKOFF;
        assert!(
            !sampling_now(&sm),
            "calm: the back-off is the first one again"
        );
        let never = nonstop_probe::Sampling::default();
        assert!(!sampling_now(&never));
    }

    fn metric_rule(metric: serde_json::Value) -> Result<MetricRule, String> {
        let rule: Rule = serde_json::from_value(serde_json::json!({
            "id": "m", "at": "a.rs:1", "action": "metric", "metric": metric
        }))
        .map_err(|e| e.to_string())?;
        parse_metric(&rule)
    }

    #[test]
    fn metric_rules_without_what_they_need_say_what_to_add() {
        let rule: Rule = serde_json::from_str(r#"{"at":"a.rs:1","action":"metric"}"#).unwrap();
        let e = parse_metric(&rule).err().unwrap();
        assert!(e.contains("a metric rule needs a metric"), "{e}");
        let e = metric_rule(serde_json::json!({"kind": "gauge", "name": "g"}))
            .err()
            .unwrap();
        assert!(e.contains("a gauge metric needs a value expression"), "{e}");
        let e = metric_rule(serde_json::json!({"kind": "count", "name": "c", "value": "x"}))
            .err()
            .unwrap();
        assert!(
            e.contains("a count metric counts hits and takes no value"),
            "{e}"
        );
        let e = metric_rule(serde_json::json!({"kind": "count", "name": " "}))
            .err()
            .unwrap();
        assert!(e.contains("the metric needs a name"), "{e}");
        let e =
            metric_rule(serde_json::json!({"kind": "count", "name": "c", "tags": {"t": "a +"}}))
                .err()
                .unwrap();
        assert!(e.starts_with("bad metric tag t:"), "{e}");
    }

    #[test]
    fn the_status_counts_evaluation_errors_and_overflow() {
        let mut m =
            metric_rule(serde_json::json!({"kind": "count", "name": "c", "tags": {"t": "x"}}))
                .unwrap();
        assert!(m.notes().is_empty());
        for i in 0..=nonstop_model::metrics::MAX_SERIES_PER_RULE {
            let tags = std::collections::BTreeMap::from([("t".to_owned(), i.to_string())]);
            m.series.record(tags, None, "t");
        }
        m.eval_errors = 2;
        m.last_eval_error = Some("division by zero in `a / b`".into());
        assert_eq!(
            m.notes(),
            [
                "2 hits not recorded because the metric's value or a tag could not be evaluated; \
                 last: division by zero in `a / b`",
                "1 hits not recorded: the metric already has 1000 tag combinations on this agent \
                 (use tags with fewer values)"
            ]
        );
    }
}
