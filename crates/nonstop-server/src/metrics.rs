//! The metrics of `metric` rules: `GET /metrics` for Prometheus and `GET /api/v1/metrics`
//! for the IDE and the CLI, both summed per service over its agents.

use crate::app::App;
use crate::clock::rfc3339;
use crate::error::{ApiError, checked_id, query};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use nonstop_model::metrics::{DroppedHits, render_dropped, render_prometheus};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use nonstop_model::views::ServiceSeries;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: every stored series in the Prometheus text format, summed per service.
///
/// After the series, `nonstop_metric_dropped_hits_total` gives, for each metric rule with a
/// status from at least one agent, the hits its agents dropped (rate limit, CPU budget):
/// a count that undercounts says so where the count is read.
pub async fn prometheus(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let (stored, dropped) = app
        .blocking(|s| {
            let series = s.metric_series(None)?;
            let mut dropped = Vec::new();
            for r in s.rules()? {
                let Some(metric) = r.rule.metric.as_ref() else {
                    continue;
                };
                let statuses = s.statuses(&r.rule.id)?;
                if statuses.is_empty() {
                    continue;
                }
                dropped.push(DroppedHits {
                    rule: r.rule.id.clone(),
                    metric: metric.name.clone(),
                    dropped: statuses
                        .iter()
                        .fold(0u64, |d, st| d.saturating_add(st.status.dropped)),
                });
            }
            Ok((series, dropped))
        })
        .await?;
    let mut text = render_prometheus(stored.iter().map(|s| (s.service.as_str(), &s.series)));
    text.push_str(&render_dropped(&dropped));
    Ok(([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response())
}

/// The query of `GET /api/v1/metrics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// Only this rule's series.
    pub rule: Option<String>,
    /// The UI's token (read by the auth layer, ignored here).
    #[serde(default, rename = "token")]
    _token: Option<serde::de::IgnoredAny>,
}

/// `GET /api/v1/metrics[?rule=ID]`: the series summed per service, by service, rule and tags.
pub async fn list_metrics(
    State(app): State<Arc<App>>,
    q: Result<Query<MetricsQuery>, QueryRejection>,
) -> Result<Json<Vec<ServiceSeries>>, ApiError> {
    let q = query(q)?;
    if let Some(r) = &q.rule {
        checked_id(r)?;
    }
    let stored = app
        .blocking(move |s| s.metric_series(q.rule.as_deref()))
        .await?;
    let mut merged: BTreeMap<SeriesKey, (ServiceSeries, i64)> = BTreeMap::new();
    for s in stored {
        let key = (
            s.service.clone(),
            s.series.rule.clone(),
            s.series.tags.clone(),
        );
        match merged.get_mut(&key) {
            None => {
                let view = ServiceSeries {
                    service: s.service,
                    agents: 1,
                    series: s.series,
                    received: String::new(),
                };
                merged.insert(key, (view, s.updated_ms));
            }
            Some((view, received)) => {
                view.series.merge(&s.series);
                view.agents += 1;
                *received = (*received).max(s.updated_ms);
            }
        }
    }
    Ok(Json(
        merged
            .into_values()
            .map(|(mut view, received)| {
                view.received = rfc3339(received);
                view
            })
            .collect(),
    ))
}

/// A series of a service: (service, rule, tags).
type SeriesKey = (String, String, BTreeMap<String, String>);
