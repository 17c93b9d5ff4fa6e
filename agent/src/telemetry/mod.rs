//! Before/after telemetry around a change.
//!
//! An emergency change is only safe if it can show it helped. Guards sample
//! declared probes before apply and again after a bake window, compare the
//! two with the command's thresholds, and the verdict decides between
//! keeping the change and rolling it back. A probe that could not be read
//! is `inconclusive`, never a pass.

pub mod http;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ProbeConfig;
use crate::payload::{Check, Guard};

/// Most raw samples kept per probe in a receipt.
pub const MAX_RAW_SAMPLES: usize = 50;

/// One probe's sample window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeSummary {
    pub probe: String,
    pub samples: u32,
    /// Requests that got a success status.
    pub ok: u32,
    /// Requests that got no answer at all (refused, timed out).
    pub unreachable: u32,
    pub success_ratio: f64,
    #[serde(default)]
    pub p50_ms: Option<f64>,
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// Raw latencies (ms) of answered requests, at most [`MAX_RAW_SAMPLES`].
    #[serde(default)]
    pub raw_ms: Vec<f64>,
}

/// Pass, breach, or can't tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Breach,
    Inconclusive,
}

/// One threshold, judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub probe: String,
    /// `success_ratio` or `p99_ms`.
    pub metric: String,
    pub before: Option<f64>,
    pub after: Option<f64>,
    /// The threshold, as a human reads it.
    pub threshold: String,
    pub verdict: Verdict,
}

/// What a receipt says about telemetry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TelemetryReport {
    #[serde(default)]
    pub before: Vec<ProbeSummary>,
    #[serde(default)]
    pub after: Vec<ProbeSummary>,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
}

/// The declared probes, ready to sample.
pub struct Probes {
    configs: BTreeMap<String, ProbeConfig>,
    /// Built on first use: most agents idle for days between samples.
    client: std::sync::OnceLock<reqwest::Client>,
}

impl Probes {
    pub fn new(configs: BTreeMap<String, ProbeConfig>) -> Probes {
        Probes {
            configs,
            client: std::sync::OnceLock::new(),
        }
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

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.configs.keys()
    }

    /// Samples every named probe concurrently.
    pub async fn sample(&self, names: &[String]) -> Vec<ProbeSummary> {
        let mut set = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let client = self.client();
            let cfg = self.configs.get(name).cloned();
            let name = name.clone();
            set.spawn(async move {
                let summary = match cfg {
                    Some(ProbeConfig::Http(cfg)) => http::sample(&client, &name, &cfg).await,
                    None => ProbeSummary::unreachable(&name, 0),
                };
                (i, summary)
            });
        }
        let mut out: Vec<(usize, ProbeSummary)> = Vec::with_capacity(names.len());
        while let Some(joined) = set.join_next().await {
            if let Ok(item) = joined {
                out.push(item);
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, s)| s).collect()
    }
}

impl ProbeSummary {
    pub fn unreachable(probe: &str, samples: u32) -> ProbeSummary {
        ProbeSummary {
            probe: probe.to_string(),
            samples,
            ok: 0,
            unreachable: samples,
            success_ratio: 0.0,
            p50_ms: None,
            p99_ms: None,
            raw_ms: Vec::new(),
        }
    }

    /// Nothing answered: the window says nothing about the service.
    pub fn is_blind(&self) -> bool {
        self.samples == 0 || self.unreachable == self.samples
    }

    /// Builds a summary from per-request outcomes: `Some(ms)` with success.
    pub fn from_outcomes(probe: &str, outcomes: &[(Option<f64>, bool)]) -> ProbeSummary {
        let samples = outcomes.len() as u32;
        let ok = outcomes.iter().filter(|(_, s)| *s).count() as u32;
        let mut answered: Vec<f64> = outcomes.iter().filter_map(|(ms, _)| *ms).collect();
        let unreachable = samples - answered.len() as u32;
        let raw_ms: Vec<f64> = answered
            .iter()
            .take(MAX_RAW_SAMPLES)
            .map(|m| round3(*m))
            .collect();
        answered.sort_by(|a, b| a.total_cmp(b));
        ProbeSummary {
            probe: probe.to_string(),
            samples,
            ok,
            unreachable,
            success_ratio: if samples == 0 {
                0.0
            } else {
                f64::from(ok) / f64::from(samples)
            },
            p50_ms: percentile(&answered, 50.0).map(round3),
            p99_ms: percentile(&answered, 99.0).map(round3),
            raw_ms,
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Judges after against before with the guard's checks. With no checks, a
/// probe breaches when its success ratio falls.
pub fn evaluate(
    guard: &Guard,
    before: &[ProbeSummary],
    after: &[ProbeSummary],
) -> (Vec<CheckResult>, Verdict) {
    let find = |set: &[ProbeSummary], name: &str| set.iter().find(|s| s.probe == name).cloned();
    let default_checks: Vec<Check>;
    let checks: &[Check] = if guard.checks.is_empty() {
        default_checks = guard
            .probes
            .iter()
            .map(|p| Check {
                probe: p.clone(),
                min_success: None,
                max_success_drop: Some(crate::payload::Percent(0)),
                max_p99: None,
            })
            .collect();
        &default_checks
    } else {
        &guard.checks
    };
    let mut results = Vec::new();
    for check in checks {
        let b = find(before, &check.probe);
        let a = find(after, &check.probe);
        let blind_after = a.as_ref().is_none_or(|s| s.samples == 0);
        let blind_before = b.as_ref().is_none_or(ProbeSummary::is_blind);
        let ratio = |s: &Option<ProbeSummary>| s.as_ref().map(|s| s.success_ratio);
        if let Some(drop) = check.max_success_drop {
            let verdict = if blind_after || blind_before {
                Verdict::Inconclusive
            } else if ratio(&a).unwrap_or(0.0) + 1e-9 < ratio(&b).unwrap_or(0.0) - drop.as_ratio() {
                Verdict::Breach
            } else {
                Verdict::Pass
            };
            results.push(CheckResult {
                probe: check.probe.clone(),
                metric: "success_ratio".into(),
                before: ratio(&b),
                after: ratio(&a),
                threshold: format!("falls at most {drop}"),
                verdict,
            });
        }
        if let Some(min) = check.min_success {
            let verdict = if blind_after {
                Verdict::Inconclusive
            } else if ratio(&a).unwrap_or(0.0) + 1e-9 < min.as_ratio() {
                Verdict::Breach
            } else {
                Verdict::Pass
            };
            results.push(CheckResult {
                probe: check.probe.clone(),
                metric: "success_ratio".into(),
                before: ratio(&b),
                after: ratio(&a),
                threshold: format!(">= {min}"),
                verdict,
            });
        }
        if let Some(max) = check.max_p99 {
            let max_ms = max.0.as_secs_f64() * 1000.0;
            let after_p99 = a.as_ref().and_then(|s| s.p99_ms);
            let verdict = match after_p99 {
                None => Verdict::Inconclusive,
                Some(v) if v > max_ms => Verdict::Breach,
                Some(_) => Verdict::Pass,
            };
            results.push(CheckResult {
                probe: check.probe.clone(),
                metric: "p99_ms".into(),
                before: b.as_ref().and_then(|s| s.p99_ms),
                after: after_p99,
                threshold: format!("<= {max}"),
                verdict,
            });
        }
    }
    let verdict = if results.iter().any(|r| r.verdict == Verdict::Breach) {
        Verdict::Breach
    } else if results.iter().any(|r| r.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    (results, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{OnBreach, Percent};

    fn summary(name: &str, ok: u32, n: u32) -> ProbeSummary {
        let outcomes: Vec<(Option<f64>, bool)> =
            (0..n).map(|i| (Some(1.0 + f64::from(i)), i < ok)).collect();
        ProbeSummary::from_outcomes(name, &outcomes)
    }

    fn guard(checks: Vec<Check>) -> Guard {
        Guard {
            probes: vec!["p".into()],
            bake: None,
            on_breach: OnBreach::Rollback,
            checks,
        }
    }

    #[test]
    fn default_check_breaches_when_success_falls() {
        let (_, v) = evaluate(&guard(vec![]), &[summary("p", 5, 5)], &[summary("p", 3, 5)]);
        assert_eq!(v, Verdict::Breach);
        let (_, v) = evaluate(&guard(vec![]), &[summary("p", 3, 5)], &[summary("p", 5, 5)]);
        assert_eq!(v, Verdict::Pass);
    }

    #[test]
    fn blind_before_is_inconclusive_not_pass() {
        let blind = ProbeSummary::unreachable("p", 5);
        let (_, v) = evaluate(&guard(vec![]), &[blind], &[summary("p", 5, 5)]);
        assert_eq!(v, Verdict::Inconclusive);
    }

    #[test]
    fn explicit_thresholds() {
        let g = guard(vec![Check {
            probe: "p".into(),
            min_success: Some(Percent(8000)),
            max_success_drop: None,
            max_p99: Some(crate::payload::HumanDuration(
                std::time::Duration::from_millis(3),
            )),
        }]);
        let (r, v) = evaluate(&g, &[summary("p", 5, 5)], &[summary("p", 4, 5)]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].verdict, Verdict::Pass);
        assert_eq!(r[1].verdict, Verdict::Breach, "p99 of 1..5ms is 5ms > 3ms");
        assert_eq!(v, Verdict::Breach);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }
}
