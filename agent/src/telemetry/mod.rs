//! Before/after telemetry around a change.
//!
//! An emergency change is only safe if it can show it helped. A guard
//! samples its probes before apply, then repeatedly while the change bakes,
//! and judges every round against the command's checks. Two breaching rounds
//! in a row roll the change back at once; a probe that could not be read is
//! `inconclusive`, never a pass.
//!
//! Every probe kind reduces a window of observations to one number (its
//! SLI): an error ratio, a latency in seconds, a rate or a gauge. Checks then
//! compare numbers and stay the same whatever the probe measures.

pub mod guard;
pub mod http;
pub mod metrics;
pub mod prometheus;
pub mod promql;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use guard::{
    effective_checks, evaluate_round, CheckResult, Judgement, Round, TelemetryReport, Verdict,
};
pub use http::HttpProbeConfig;

use crate::command::payload::Timestamp;

/// Most raw observations kept per probe sample or check in a receipt.
pub const MAX_RAW_SAMPLES: usize = 50;

/// `[probes.NAME]` in the agent config.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum ProbeConfig {
    /// N requests to a URL: error ratio or latency.
    #[serde(rename = "http")]
    Http(HttpProbeConfig),
    /// Series of the local service's Prometheus exposition: a rate, an
    /// error ratio, a gauge or a histogram quantile.
    #[serde(rename = "prometheus")]
    Prometheus(prometheus::PrometheusProbeConfig),
    /// An instant query against a Prometheus-compatible API.
    #[serde(rename = "promql")]
    Promql(promql::PromqlProbeConfig),
}

impl ProbeConfig {
    /// Checks the probe's fields; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            ProbeConfig::Http(c) => c.validate(),
            ProbeConfig::Prometheus(c) => c.validate(),
            ProbeConfig::Promql(c) => c.validate(),
        }
    }

    /// What the probe's value means.
    pub fn unit(&self) -> Unit {
        match self {
            ProbeConfig::Http(c) => c.unit(),
            ProbeConfig::Prometheus(c) => c.unit(),
            ProbeConfig::Promql(c) => c.unit(),
        }
    }
}

/// What a probe's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A fraction in [0, 1], e.g. an error ratio.
    Ratio,
    /// A duration in seconds, e.g. a p99 latency.
    Seconds,
    /// Anything else: a rate per second, a gauge.
    Number,
}

/// One probe's reading over one window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeSample {
    pub probe: String,
    pub at: Timestamp,
    /// The SLI; `None` when the window could not be measured (unreachable,
    /// no matching series, no traffic).
    pub value: Option<f64>,
    pub unit: Unit,
    /// Why `value` is missing, or a short note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Kind-specific detail, e.g. the requests and latencies of an http
    /// probe. Bounded in size.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

impl ProbeSample {
    pub fn missing(probe: &str, unit: Unit, why: impl Into<String>) -> ProbeSample {
        ProbeSample {
            probe: probe.to_string(),
            at: Timestamp::now(),
            value: None,
            unit,
            note: Some(why.into()),
            detail: Value::Null,
        }
    }
}

/// The declared probes, ready to sample.
pub struct Probes {
    configs: BTreeMap<String, ProbeConfig>,
    /// Built on first use: most agents idle for days between samples.
    client: std::sync::OnceLock<reqwest::Client>,
    /// The lifecycle's tests read values from here instead of the network.
    #[cfg(test)]
    fake: std::sync::OnceLock<FakeSampler>,
}

#[cfg(test)]
type FakeSampler = std::sync::Arc<dyn Fn(&str) -> Option<f64> + Send + Sync>;

impl Probes {
    pub fn new(configs: BTreeMap<String, ProbeConfig>) -> Probes {
        Probes {
            configs,
            client: std::sync::OnceLock::new(),
            #[cfg(test)]
            fake: std::sync::OnceLock::new(),
        }
    }

    /// Makes every probe read its value from `f` (tests only).
    #[cfg(test)]
    pub fn set_fake(&self, f: FakeSampler) {
        let _ = self.fake.set(f);
    }

    fn client(&self) -> reqwest::Client {
        self.client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(2)
                    .build()
                    .unwrap_or_default()
            })
            .clone()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.configs.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<&ProbeConfig> {
        self.configs.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.configs.keys()
    }

    /// Samples every named probe concurrently. `window` stretches a probe's
    /// observations over that long where the probe kind allows (the guard's
    /// `before`); `None` uses each probe's own window.
    pub async fn sample(&self, names: &[String], window: Option<Duration>) -> Vec<ProbeSample> {
        #[cfg(test)]
        if let Some(f) = self.fake.get() {
            let _ = window;
            return names
                .iter()
                .map(|n| {
                    let unit = self
                        .configs
                        .get(n)
                        .map(|c| c.unit())
                        .unwrap_or(Unit::Number);
                    ProbeSample {
                        probe: n.clone(),
                        at: Timestamp::now(),
                        value: f(n),
                        unit,
                        note: None,
                        detail: Value::Null,
                    }
                })
                .collect();
        }
        let mut set = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let client = self.client();
            let cfg = self.configs.get(name).cloned();
            let name = name.clone();
            set.spawn(async move {
                let sample = match cfg {
                    Some(ProbeConfig::Http(cfg)) => {
                        http::measure(&client, &name, &cfg, window).await
                    }
                    Some(ProbeConfig::Prometheus(cfg)) => {
                        prometheus::measure(&client, &name, &cfg, window).await
                    }
                    Some(ProbeConfig::Promql(cfg)) => {
                        promql::measure(&client, &name, &cfg, window).await
                    }
                    None => ProbeSample::missing(&name, Unit::Number, "no such probe"),
                };
                (i, sample)
            });
        }
        let mut out: Vec<(usize, ProbeSample)> = Vec::with_capacity(names.len());
        while let Some(joined) = set.join_next().await {
            if let Ok(item) = joined {
                out.push(item);
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, s)| s).collect()
    }
}

/// Checks a probe's `url`: http or https, and parseable, so a typo fails
/// at `agent --check` rather than at the first sample. The error is the
/// field and why, as the probes' `validate` return it.
pub(crate) fn check_probe_url(url: &str) -> Result<(), (String, String)> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(("url".into(), "must be an http:// or https:// URL".into()));
    }
    if reqwest::Url::parse(url).is_err() {
        return Err(("url".into(), format!("{url:?} does not parse")));
    }
    Ok(())
}

/// Nearest-rank percentile `p` (0 to 100, above 100 counts as 100) of
/// sorted values: the smallest value with at least `p`% of the values at or
/// below it. `None` for no values. The crate's one percentile: probe
/// latencies, fleet medians, `audit export` and the benches all use it, so
/// their numbers agree on what "p50" means.
pub fn percentile<T: Copy>(sorted: &[T], p: u32) -> Option<T> {
    let p = usize::try_from(p.min(100)).ok()?;
    let rank = p.saturating_mul(sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// An error and its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Reads a response body, refusing one over `max` bytes: a probe must not
/// let a misbehaving endpoint grow the agent's memory.
pub(crate) async fn read_body_limited(
    mut resp: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading {what}: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("{what} is over {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Rounds to 6 decimal places, so receipts stay readable.
pub fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), Some(50.0));
        assert_eq!(percentile(&v, 99), Some(99.0));
        assert_eq!(percentile(&v, 100), Some(100.0));
        assert_eq!(percentile(&v, 0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99), Some(7.0));
        assert_eq!(percentile::<f64>(&[], 50), None);
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50), Some(5));
        assert_eq!(percentile(&v, 90), Some(9));
        assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 90), Some(4));
        assert_eq!(percentile(&[1, 2, 3, 4], u32::MAX), Some(4));
    }
}
