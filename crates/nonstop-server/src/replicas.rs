//! What a replica runs beside its handlers when several share one store
//! ([`crate::store::Store::shared`]):
//!
//! - a listener thread ([`crate::store::Store::listen`]): another replica's rule change bumps
//!   this one's rule generation, so its agent sessions send new sets (within a second);
//!   new responses wake the relay;
//! - the relay: reads what was stored after the last response it sent, in id order, and
//!   sends it to this replica's live streams (responses ingested here go the same way, so
//!   every stream sees one order); it also reads every [`RELAY_TICK`] in case a
//!   notification was missed;
//! - a re-read of the rules every [`RULES_REREAD`], for the same reason;
//! - the renewal of the leases of the agents connected here, every third of
//!   [`crate::postgres::AGENT_LEASE`].

use crate::app::App;
use crate::store::{Change, RuleState};
use crate::{RELAY_TICK, RULES_REREAD};
use nonstop_model::Rule;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// Responses the relay reads per step.
const RELAY_PAGE: u64 = 1000;

pub(crate) fn start(app: Arc<App>, stop: watch::Receiver<bool>) {
    let stopped = Arc::new(AtomicBool::new(false));
    {
        let stopped = stopped.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            stopped.store(true, Ordering::Relaxed);
        });
    }
    let listener = app.clone();
    let spawned = std::thread::Builder::new()
        .name("nonstop-listen".into())
        .spawn(move || {
            let mut on_change = |c: Change| match c {
                Change::Rules => listener.rules_changed(),
                Change::Responses => {
                    if let Some(relay) = &listener.relay {
                        relay.notify_one();
                    }
                }
            };
            if let Err(e) = listener.store.listen(&mut on_change, &stopped) {
                tracing::error!("stopped listening for other replicas' changes: {e}");
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the listener for other replicas' changes: {e}");
    }
    tokio::spawn(relay(app.clone(), stop.clone()));
    tokio::spawn(reread_rules(app.clone(), stop.clone()));
    tokio::spawn(renew_leases(app, stop));
}

async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn relay(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let Some(wake) = app.relay.clone() else {
        return;
    };
    let mut last = loop {
        match app.blocking(|s| s.last_response_id()).await {
            Ok(id) => break id,
            Err(e) => {
                tracing::error!("the live relay cannot read the newest response: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(RELAY_TICK) => {}
                    _ = stopping(&mut stop) => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RELAY_TICK) => {}
            _ = stopping(&mut stop) => return,
        }
        loop {
            let after = last;
            match app
                .blocking(move |s| s.responses_after(None, after, RELAY_PAGE))
                .await
            {
                Ok(page) => {
                    let full = page.len() as u64 == RELAY_PAGE;
                    if let Some((id, _)) = page.last() {
                        last = *id;
                    }
                    app.send_live(page);
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!("the live relay cannot read new responses: {e}");
                    break;
                }
            }
        }
    }
}

/// What makes a rule set differ for agents: ids, definitions, states, enabled flags.
fn fingerprint(rules: Vec<crate::store::StoredRule>) -> Vec<(Rule, RuleState, bool)> {
    rules
        .into_iter()
        .map(|r| (r.rule, r.state, r.enabled))
        .collect()
}

async fn reread_rules(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut seen = None;
    loop {
        match app.blocking(|s| s.rules()).await {
            Ok(rules) => {
                let now = fingerprint(rules);
                if seen.as_ref().is_some_and(|s| *s != now) {
                    tracing::debug!("the rules changed without a notification");
                    app.rules_changed();
                }
                seen = Some(now);
            }
            Err(e) => tracing::error!("cannot read the rules again: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RULES_REREAD) => {}
            _ = stopping(&mut stop) => return,
        }
    }
}

async fn renew_leases(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let every = crate::postgres::AGENT_LEASE / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopping(&mut stop) => return,
        }
        let ids: Vec<String> = {
            let c = app.connections.lock().unwrap_or_else(|p| p.into_inner());
            c.keys().cloned().collect()
        };
        if let Err(e) = app.blocking(move |s| s.renew_leases(&ids)).await {
            tracing::error!("cannot renew the leases of connected agents: {e}");
        }
    }
}
