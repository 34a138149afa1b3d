//! `nonstop metrics`: the series of metric rules, summed per service over its agents.

use crate::client::{Client, ServerArgs, outln};
use crate::cmd_rules::path_id;
use anyhow::{Result, bail};
use nonstop_model::Action;
use nonstop_model::MetricKind;
use nonstop_model::metrics::{HISTOGRAM_BOUNDS, MAX_SERIES_PER_RULE, quantile_upper_bound};
use nonstop_model::views::{RuleView, ServiceSeries};
use std::process::ExitCode;

/// Show the values of metric rules: counts, gauges and histograms per service and tags.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only this rule's series.
    #[arg(long, value_name = "ID")]
    pub rule: Option<String>,
    /// Print the server's JSON (`GET /api/v1/metrics`).
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print what Prometheus scrapes (`GET /metrics`, every rule's series).
    #[arg(long, conflicts_with = "rule")]
    pub prometheus: bool,
}

/// Prints the metric series as a table, JSON or Prometheus text.
pub fn run(args: Args) -> Result<ExitCode> {
    let client = Client::new(&args.server)?;
    if args.prometheus {
        let text = client.get_text("/metrics")?;
        let text = text.trim_end_matches('\n');
        if !text.is_empty() {
            outln!("{text}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = match &args.rule {
        Some(id) => format!("/api/v1/metrics?rule={}", path_id(id)?),
        None => "/api/v1/metrics".to_string(),
    };
    if args.json {
        outln!("{}", client.get_text(&path)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut all: Vec<ServiceSeries> = client.get(&path)?;
    if all.is_empty() {
        explain_empty(&client, args.rule.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    // By metric name, then rule; the server's order (service, then tags) within that.
    all.sort_by(|a, b| (&a.series.name, &a.series.rule).cmp(&(&b.series.name, &b.series.rule)));
    let mut rows = vec![
        [
            "RULE", "METRIC", "KIND", "SERVICE", "TAGS", "COUNT", "LAST", "SUM", "MEAN", "P50",
            "P90", "P99", "AGENTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut overflow = Vec::new();
    let mut histograms = false;
    for s in &all {
        rows.push(row(s));
        histograms |= s.series.kind == MetricKind::Histogram;
        if s.series.overflow > 0 {
            overflow.push(format!(
                "{} ({}): {} hits not recorded: an agent had {MAX_SERIES_PER_RULE} tag combinations for it already",
                s.series.rule, s.service, s.series.overflow
            ));
        }
    }
    crate::cmd_rules::print_table(&rows);
    if histograms {
        outln!(
            "P50/P90/P99 of a histogram are upper bounds: the bound of the bucket the quantile falls in (buckets 1, 2.5, 5 × 10^k)."
        );
    }
    for line in overflow {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The table row of one series: `-` where a column does not apply to its kind.
fn row(s: &ServiceSeries) -> Vec<String> {
    let m = &s.series;
    let dash = || "-".to_string();
    let tags = if m.tags.is_empty() {
        dash()
    } else {
        m.tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let measured = m.kind != MetricKind::Count;
    let mean = if measured && m.count > 0 {
        number(m.sum / m.count as f64)
    } else {
        dash()
    };
    let quantile = |q: f64| {
        if m.kind != MetricKind::Histogram {
            return dash();
        }
        match quantile_upper_bound(&m.buckets, q) {
            Some(b) if b.is_infinite() => {
                format!(">{}", number(HISTOGRAM_BOUNDS[HISTOGRAM_BOUNDS.len() - 1]))
            }
            Some(b) => format!("≤{}", number(b)),
            None => dash(),
        }
    };
    vec![
        m.rule.clone(),
        m.name.clone(),
        kind_word(m.kind).into(),
        s.service.clone(),
        tags,
        m.count.to_string(),
        match (m.kind, m.last) {
            (MetricKind::Gauge, Some(v)) => number(v),
            _ => dash(),
        },
        if measured { number(m.sum) } else { dash() },
        mean,
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
        s.agents.to_string(),
    ]
}

fn kind_word(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Count => "count",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    }
}

/// A number for people: whole numbers as such, others to six significant digits.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (5 - magnitude).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Says why there is nothing to show: no metric rule, an unknown rule, a rule of
/// another action, or no report yet.
fn explain_empty(client: &Client, rule: Option<&str>) -> Result<()> {
    let Some(id) = rule else {
        outln!(
            "no metric series yet: add a metric rule (`nonstop rules add FILE:LINE --metric NAME`); its series appear once an agent records a hit"
        );
        return Ok(());
    };
    // A 404 here says the rule does not exist, in the server's words.
    let view: RuleView = client.get(&format!("/api/v1/rules/{id}"))?;
    let action = view.rule.action.as_str();
    if view.rule.action != Action::Metric {
        bail!(
            "rule {id} is a {action} rule, not a metric rule: `nonstop tail --rule {id}` shows its responses"
        );
    }
    outln!(
        "rule {id} has no series yet: they appear once one of its agents records a hit (`nonstop rules show {id}` shows its status on each agent)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(number(7.0), "7");
        assert_eq!(number(-3.0), "-3");
        assert_eq!(number(4.5), "4.5");
        assert_eq!(number(10.0 / 3.0), "3.33333");
        assert_eq!(number(0.000123456789), "0.000123457");
        assert_eq!(number(7000000003.5), "7000000004");
        assert_eq!(number(0.0025), "0.0025");
        assert_eq!(number(5e9), "5000000000");
    }
}
