//! Human output: short, aligned, and saying what changed first.
//!
//! It reads the agent's answers as the typed [`crate::api`] structs, so a
//! field renamed on the agent's side fails the build here instead of
//! printing blank.

use serde_json::{Map, Value};

use crate::api::{CommandAnswer, Hotfixes};
use crate::lifecycle::record::{State, Transition};
use crate::telemetry::{ProbeSample, TelemetryReport, Unit, Verdict};

/// A probe value in its unit: ratios as %, seconds as ms.
fn value_text(v: Option<f64>, unit: Unit) -> String {
    match (v, unit) {
        (None, _) => "n/a".into(),
        (Some(x), Unit::Ratio) => format!("{:.2}%", x * 100.0),
        (Some(x), Unit::Seconds) => format!("{:.1}ms", x * 1000.0),
        (Some(x), Unit::Number) => format!("{x:.3}"),
    }
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Breach => "breach",
        Verdict::Inconclusive => "inconclusive",
    }
}

/// One probe sample: its value, plus the http detail when there is one.
fn sample_text(v: &ProbeSample) -> String {
    let value = value_text(v.value, v.unit);
    // The detail is the probe kind's own; only an http probe's is shown.
    let d = &v.detail;
    let extra = match (
        d.get("ok").and_then(Value::as_u64),
        d.get("requests").and_then(Value::as_u64),
    ) {
        (Some(ok), Some(n)) => {
            let p99 = d
                .get("p99_ms")
                .and_then(Value::as_f64)
                .map(|x| format!(", p99 {x:.1}ms"))
                .unwrap_or_default();
            format!(" ({ok}/{n} ok{p99})")
        }
        _ => String::new(),
    };
    let note = v
        .note
        .as_deref()
        .map(|n| format!(" [{n}]"))
        .unwrap_or_default();
    format!("{value}{extra}{note}")
}

/// One action's change, whichever shape of answer it came in.
struct Change<'a> {
    resource: &'a str,
    op: &'a str,
    params: &'a Map<String, Value>,
    before: Option<&'a Value>,
    /// The state after, or the intended one for a dry run.
    after: Option<&'a Value>,
    reverted: bool,
}

impl Change<'_> {
    /// The op's own words: `checkout-flags flag.set new_flow: on → off`,
    /// `edge-waf waf.block: +203.0.113.7/32 (3 → 4 addresses)`.
    fn line(&self) -> String {
        let line = tourniquet_providers::registry::change_line(
            self.resource,
            self.op,
            self.params,
            self.before,
            self.after,
        );
        if self.reverted {
            format!("{line} (reverted)")
        } else {
            line
        }
    }
}

/// What a command answer shows, the same for a live record and an
/// archived one.
struct Shown<'a> {
    id: String,
    state: State,
    signers: Vec<&'a str>,
    /// Issuer and stated reason, when the answer carries the payload.
    asked_by: Option<(&'a str, &'a str)>,
    changes: Vec<Change<'a>>,
    telemetry: Option<&'a TelemetryReport>,
    hold_left_s: Option<u64>,
    hold_until: Option<String>,
    timeline: &'a [Transition],
}

impl<'a> Shown<'a> {
    fn of(answer: &'a CommandAnswer) -> Shown<'a> {
        match answer {
            CommandAnswer::Live(v) => {
                let r = &v.record;
                let dry_run = r.dry_run();
                Shown {
                    id: r.id.to_string(),
                    state: r.state,
                    signers: r.signers.iter().map(|s| s.name.as_str()).collect(),
                    asked_by: r
                        .payload
                        .as_ref()
                        .map(|p| (p.issuer.as_str(), p.reason.as_str())),
                    changes: r
                        .actions
                        .iter()
                        .map(|a| Change {
                            resource: &a.resource,
                            op: &a.op,
                            params: &a.params,
                            before: a.before.as_ref(),
                            after: if dry_run {
                                a.planned.as_ref()
                            } else {
                                a.after.as_ref()
                            },
                            reverted: a.reverted,
                        })
                        .collect(),
                    telemetry: r.telemetry.as_ref(),
                    hold_left_s: v.hold_left_s,
                    hold_until: r.hold_until.map(|t| t.to_string()),
                    timeline: &r.timeline,
                }
            }
            CommandAnswer::Archived(a) => Shown {
                id: a.id.clone(),
                state: a.state.state(),
                signers: a.signers.iter().map(|s| s.name.as_str()).collect(),
                asked_by: None,
                changes: a
                    .actions
                    .iter()
                    .map(|x| Change {
                        resource: &x.resource,
                        op: &x.op,
                        params: &x.params,
                        before: x.before.as_ref(),
                        // A receipt's `after` is the intended state for a
                        // dry run already.
                        after: x.after.as_ref(),
                        reverted: x.reverted,
                    })
                    .collect(),
                telemetry: a.telemetry.as_ref(),
                hold_left_s: None,
                hold_until: a.hold_until.map(|t| t.to_string()),
                timeline: &a.timeline,
            },
        }
    }
}

/// One command (as GET /v1/commands/ID answers).
pub fn record(answer: &CommandAnswer) -> String {
    let r = Shown::of(answer);
    let mut out = String::new();
    let reason = answer.reason();
    let decision = if reason.is_some() {
        "rejected"
    } else {
        "accepted"
    };
    out.push_str(&format!("{:<12} {}\n", r.state.as_str(), r.id));
    out.push_str(&format!(
        "  decision:  {decision}{}\n",
        if r.signers.is_empty() {
            String::new()
        } else {
            format!(" (signed by {})", r.signers.join(", "))
        }
    ));
    if let Some(reason) = reason {
        out.push_str(&format!(
            "  reason:    {reason}: {}\n",
            answer.message().unwrap_or("")
        ));
    }
    if let Some((issuer, why)) = r.asked_by {
        out.push_str(&format!("  asked by:  {issuer} — {why}\n"));
    }
    for c in &r.changes {
        out.push_str(&format!("  change:    {}\n", c.line()));
    }
    if let Some(t) = r.telemetry {
        telemetry(&mut out, t);
    }
    if let (Some(left), State::Kept) = (r.hold_left_s, r.state) {
        out.push_str(&format!(
            "  hold:      {} left (reverts at {})\n",
            humantime::format_duration(std::time::Duration::from_secs(left)),
            r.hold_until.unwrap_or_default()
        ));
    }
    if let Some(note) = r.timeline.last().and_then(|t| t.note.as_deref()) {
        out.push_str(&format!("  note:      {note}\n"));
    }
    out
}

/// The guard's probes before and after, its checks, and its verdict.
fn telemetry(out: &mut String, t: &TelemetryReport) {
    for b in &t.before {
        let a = t.after.iter().find(|a| a.probe == b.probe);
        out.push_str(&format!(
            "  probe:     {}: before {} | after {}\n",
            b.probe,
            sample_text(b),
            a.map(sample_text).unwrap_or_else(|| "-".into())
        ));
    }
    if !t.checks.is_empty() {
        out.push_str(&format!(
            "  {:<16} {:<13} {:<10} {:>10} {:>10}  {}\n",
            "PROBE", "CHECK", "THRESHOLD", "BEFORE", "AFTER", "VERDICT"
        ));
        for c in &t.checks {
            out.push_str(&format!(
                "  {:<16} {:<13} {:<10} {:>10} {:>10}  {}\n",
                c.probe,
                c.check,
                c.threshold,
                value_text(c.before, c.unit),
                value_text(c.after, c.unit),
                verdict_text(c.verdict)
            ));
        }
    }
    if let Some(v) = t.verdict {
        let aborted = if t.early_abort { ", aborted early" } else { "" };
        out.push_str(&format!(
            "  verdict:   {} after {} bake round(s){aborted}\n",
            verdict_text(v),
            t.rounds.len()
        ));
    }
}

/// The active hotfixes list (as GET /v1/hotfixes answers).
pub fn hotfixes(body: &Hotfixes) -> String {
    if body.hotfixes.is_empty() {
        return "no active hotfixes\n".into();
    }
    let mut out = format!(
        "{:<28} {:<10} {:<40} {}\n",
        "ID", "HOLD LEFT", "CHANGE", "REASON"
    );
    for h in &body.hotfixes {
        let change: Vec<String> = h
            .actions
            .iter()
            .map(|a| {
                Change {
                    resource: &a.resource,
                    op: &a.op,
                    params: &a.params,
                    before: a.before.as_ref(),
                    after: a.after.as_ref(),
                    reverted: false,
                }
                .line()
            })
            .collect();
        let left = h
            .hold_left_s
            .map(|l| humantime::format_duration(std::time::Duration::from_secs(l)).to_string())
            .unwrap_or_else(|| "none".into());
        out.push_str(&format!(
            "{:<28} {:<10} {:<40} {}\n",
            h.id,
            left,
            change.join("; "),
            h.reason.as_deref().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!("{}/testdata/api/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_kept_command_shows_its_change_probe_and_hold() {
        let text = record(&fixture("get_kept"));
        for want in [
            "kept         01M91FE6KERKX3CPQ6APV1X0YK\n",
            "  decision:  accepted (signed by alice)\n",
            "  asked by:  alice@example.com — INC-1: checkout 500s\n",
            "  change:    checkout-flags flag.set new_flow: on → off\n",
            "  probe:     web: before 0.00% (3/3 ok, p99 4.7ms) | after 0.00% (3/3 ok, p99 4.2ms)\n",
            "  web              max_increase  0%              0.00%      0.00%  pass\n",
            "  verdict:   pass after 2 bake round(s)\n",
            "  hold:      ",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn a_rejected_command_shows_its_reason() {
        let text = record(&fixture("get_rejected"));
        assert!(
            text.contains(
                "  reason:    not_permitted: no policy rule allows flag.set on locked-flags\n"
            ),
            "{text}"
        );
        assert!(text.starts_with("rejected     sha256:"), "{text}");
    }

    #[test]
    fn a_dry_run_shows_the_intended_state() {
        for name in ["get_planned", "get_archived_planned"] {
            let text = record(&fixture(name));
            assert!(
                text.contains("  change:    checkout-flags flag.set dark_mode: off (DISABLED) → on (DISABLED)\n"),
                "{name}:\n{text}"
            );
        }
    }

    #[test]
    fn an_archived_command_shows_what_its_receipt_says() {
        let text = record(&fixture("get_archived_reverted"));
        assert!(
            text.starts_with("reverted     01M91FE6KERKX3CPQ6APV1X0YK\n"),
            "{text}"
        );
        assert!(
            text.contains("  change:    checkout-flags flag.set new_flow: on → off (reverted)\n"),
            "{text}"
        );
        assert!(text.contains("  verdict:   pass"), "{text}");
        assert!(!text.contains("  hold:"), "{text}");
    }

    #[test]
    fn hotfixes_show_change_hold_and_reason() {
        let text = hotfixes(&fixture("hotfixes"));
        let line = text.lines().nth(1).unwrap_or_default();
        assert!(
            line.starts_with("01M91FE6KERKX3CPQ6APV1X0YK   29m 58s"),
            "{text}"
        );
        assert!(
            line.contains("checkout-flags flag.set new_flow: on → off")
                && line.ends_with("INC-1: checkout 500s"),
            "{text}"
        );
        assert_eq!(hotfixes(&fixture("hotfixes_empty")), "no active hotfixes\n");
    }
}
