//! Judging a change: each bake round is compared with the before-window,
//! check by check, and the rounds add up to a verdict with Argo Rollouts'
//! analysis semantics: a failure limit, an early abort on consecutive
//! failures, and `inconclusive` kept apart from `pass`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ProbeSample, Unit, MAX_RAW_SAMPLES};
use crate::command::payload::{Check, Guard, Threshold, Timestamp};

/// Consecutive breaching rounds that abort the bake at once.
pub const ABORT_AFTER_CONSECUTIVE: u32 = 2;

/// Pass, breach, or can't tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Breach,
    Inconclusive,
}

/// One threshold, judged over the bake.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub probe: String,
    /// `max`, `min`, `max_increase` or `max_decrease`.
    pub check: String,
    pub threshold: String,
    pub unit: Unit,
    pub before: Option<f64>,
    /// The value of the last round judged.
    pub after: Option<f64>,
    pub verdict: Verdict,
    /// This probe's value in every bake round, oldest first (bounded).
    #[serde(default)]
    pub samples: Vec<Option<f64>>,
}

/// One bake round, summarised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub at: Timestamp,
    pub verdict: Verdict,
    pub values: BTreeMap<String, Option<f64>>,
}

/// What a receipt says about telemetry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TelemetryReport {
    /// The before-window, sampled before apply.
    #[serde(default)]
    pub before: Vec<ProbeSample>,
    /// The last bake round's samples, with their detail.
    #[serde(default)]
    pub after: Vec<ProbeSample>,
    /// Every bake round (bounded), oldest first.
    #[serde(default)]
    pub rounds: Vec<Round>,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// The bake was cut short by consecutive breaches.
    #[serde(default)]
    pub early_abort: bool,
    #[serde(default)]
    pub breached_rounds: u32,
    #[serde(default)]
    pub inconclusive_rounds: u32,
}

/// The checks in force: the guard's, or for every ratio probe without one,
/// "must not rise above its before".
pub fn effective_checks(guard: &Guard, unit_of: impl Fn(&str) -> Option<Unit>) -> Vec<Check> {
    let mut checks = guard.checks.clone();
    for p in &guard.probes {
        if !checks.iter().any(|c| &c.probe == p) && unit_of(p) == Some(Unit::Ratio) {
            checks.push(Check {
                probe: p.clone(),
                max: None,
                min: None,
                max_increase: Some(Threshold {
                    value: 0.0,
                    text: "0%".into(),
                }),
                max_decrease: None,
            });
        }
    }
    checks
}

/// Judges one round of samples against the before-window.
pub fn evaluate_round(
    checks: &[Check],
    before: &[ProbeSample],
    after: &[ProbeSample],
) -> (Vec<CheckResult>, Verdict) {
    let find = |set: &[ProbeSample], name: &str| set.iter().find(|s| s.probe == name).cloned();
    let mut results = Vec::new();
    for check in checks {
        let b = find(before, &check.probe);
        let a = find(after, &check.probe);
        let unit = a
            .as_ref()
            .or(b.as_ref())
            .map(|s| s.unit)
            .unwrap_or(Unit::Number);
        let bv = b.as_ref().and_then(|s| s.value);
        let av = a.as_ref().and_then(|s| s.value);
        let mut judge =
            |name: &str, t: &Threshold, needs_before: bool, breached: &dyn Fn(f64, f64) -> bool| {
                let verdict = match (av, bv) {
                    (None, _) => Verdict::Inconclusive,
                    (Some(_), None) if needs_before => Verdict::Inconclusive,
                    (Some(a), b) if breached(a, b.unwrap_or(0.0)) => Verdict::Breach,
                    _ => Verdict::Pass,
                };
                results.push(CheckResult {
                    probe: check.probe.clone(),
                    check: name.to_string(),
                    threshold: t.text.clone(),
                    unit,
                    before: bv,
                    after: av,
                    verdict,
                    samples: Vec::new(),
                });
            };
        const EPS: f64 = 1e-9;
        if let Some(t) = &check.max {
            judge("max", t, false, &|a, _| a > t.value + EPS);
        }
        if let Some(t) = &check.min {
            judge("min", t, false, &|a, _| a + EPS < t.value);
        }
        if let Some(t) = &check.max_increase {
            judge("max_increase", t, true, &|a, b| a > b + t.value + EPS);
        }
        if let Some(t) = &check.max_decrease {
            judge("max_decrease", t, true, &|a, b| a + t.value + EPS < b);
        }
    }
    let verdict = if results.iter().any(|r| r.verdict == Verdict::Breach) {
        Verdict::Breach
    } else if results.is_empty() || results.iter().any(|r| r.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    (results, verdict)
}

/// Accumulates bake rounds into a verdict.
pub struct Judgement {
    checks: Vec<Check>,
    failure_limit: u32,
    consecutive: u32,
    passed: u32,
    pub report: TelemetryReport,
}

impl Judgement {
    pub fn new(guard: &Guard, checks: Vec<Check>, report: TelemetryReport) -> Judgement {
        Judgement {
            checks,
            failure_limit: guard.failure_limit.unwrap_or(1),
            consecutive: 0,
            passed: 0,
            report,
        }
    }

    /// Judges one round. Returns true when the bake must abort now.
    pub fn push(&mut self, samples: Vec<ProbeSample>) -> bool {
        let (results, verdict) = evaluate_round(&self.checks, &self.report.before, &samples);
        // Carry each check's history of values across rounds.
        let history: Vec<Vec<Option<f64>>> = results
            .iter()
            .map(|r| {
                let mut h = self
                    .report
                    .checks
                    .iter()
                    .find(|c| c.probe == r.probe && c.check == r.check)
                    .map(|c| c.samples.clone())
                    .unwrap_or_default();
                h.push(r.after);
                if h.len() > MAX_RAW_SAMPLES {
                    h.remove(0);
                }
                h
            })
            .collect();
        self.report.checks = results
            .into_iter()
            .zip(history)
            .map(|(mut r, h)| {
                r.samples = h;
                r
            })
            .collect();
        self.report.rounds.push(Round {
            at: Timestamp::now(),
            verdict,
            values: samples.iter().map(|s| (s.probe.clone(), s.value)).collect(),
        });
        if self.report.rounds.len() > MAX_RAW_SAMPLES {
            self.report.rounds.remove(0);
        }
        self.report.after = samples;
        match verdict {
            Verdict::Breach => {
                self.report.breached_rounds += 1;
                self.consecutive += 1;
            }
            Verdict::Inconclusive => {
                self.report.inconclusive_rounds += 1;
                self.consecutive = 0;
            }
            Verdict::Pass => {
                self.passed += 1;
                self.consecutive = 0;
            }
        }
        if self.consecutive >= ABORT_AFTER_CONSECUTIVE {
            self.report.early_abort = true;
            self.report.verdict = Some(Verdict::Breach);
            return true;
        }
        false
    }

    /// The verdict once the bake is over.
    pub fn finish(mut self) -> TelemetryReport {
        if self.report.verdict.is_none() {
            self.report.verdict = Some(if self.report.breached_rounds > self.failure_limit {
                Verdict::Breach
            } else if self.passed == 0 {
                Verdict::Inconclusive
            } else {
                Verdict::Pass
            });
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::payload::OnBreach;

    fn sample(name: &str, v: Option<f64>) -> ProbeSample {
        ProbeSample {
            probe: name.into(),
            at: Timestamp::now(),
            value: v,
            unit: Unit::Ratio,
            note: None,
            detail: serde_json::Value::Null,
        }
    }

    fn guard() -> Guard {
        Guard {
            probes: vec!["err".into()],
            bake: None,
            before: None,
            interval: None,
            on_breach: OnBreach::Rollback,
            on_inconclusive: Default::default(),
            failure_limit: None,
            checks: Vec::new(),
        }
    }

    fn judgement(before: f64) -> Judgement {
        let g = guard();
        let checks = effective_checks(&g, |_| Some(Unit::Ratio));
        let report = TelemetryReport {
            before: vec![sample("err", Some(before))],
            ..Default::default()
        };
        Judgement::new(&g, checks, report)
    }

    #[test]
    fn two_consecutive_breaches_abort_early() {
        let mut j = judgement(0.0);
        assert!(!j.push(vec![sample("err", Some(0.3))]));
        assert!(
            j.push(vec![sample("err", Some(0.4))]),
            "second breach in a row aborts"
        );
        let r = j.finish();
        assert_eq!(r.verdict, Some(Verdict::Breach));
        assert!(r.early_abort);
        assert_eq!(r.checks[0].samples, vec![Some(0.3), Some(0.4)]);
    }

    #[test]
    fn one_breach_within_the_failure_limit_passes() {
        let mut j = judgement(0.1);
        assert!(!j.push(vec![sample("err", Some(0.3))]));
        assert!(!j.push(vec![sample("err", Some(0.0))]));
        assert!(!j.push(vec![sample("err", Some(0.05))]));
        assert_eq!(j.finish().verdict, Some(Verdict::Pass));
    }

    #[test]
    fn unreadable_probe_is_inconclusive_never_pass() {
        let mut j = judgement(0.0);
        j.push(vec![sample("err", None)]);
        j.push(vec![sample("err", None)]);
        let r = j.finish();
        assert_eq!(r.verdict, Some(Verdict::Inconclusive));
        assert_eq!(r.inconclusive_rounds, 2);
    }

    #[test]
    fn thresholds_by_kind() {
        let checks = vec![Check {
            probe: "p99".into(),
            max: Some(Threshold::parse("400ms").unwrap()),
            min: None,
            max_increase: None,
            max_decrease: None,
        }];
        let (_, v) = evaluate_round(&checks, &[], &[sample("p99", Some(0.5))]);
        assert_eq!(v, Verdict::Breach);
        let (_, v) = evaluate_round(&checks, &[], &[sample("p99", Some(0.3))]);
        assert_eq!(v, Verdict::Pass);
        let inc = vec![Check {
            probe: "err".into(),
            max: None,
            min: None,
            max_increase: Some(Threshold::parse("0.5%").unwrap()),
            max_decrease: None,
        }];
        let (_, v) = evaluate_round(
            &inc,
            &[sample("err", Some(0.01))],
            &[sample("err", Some(0.014))],
        );
        assert_eq!(v, Verdict::Pass);
        let (_, v) = evaluate_round(
            &inc,
            &[sample("err", Some(0.01))],
            &[sample("err", Some(0.02))],
        );
        assert_eq!(v, Verdict::Breach);
        let (_, v) = evaluate_round(&inc, &[sample("err", None)], &[sample("err", Some(0.0))]);
        assert_eq!(
            v,
            Verdict::Inconclusive,
            "no before value: cannot judge an increase"
        );
    }
}
