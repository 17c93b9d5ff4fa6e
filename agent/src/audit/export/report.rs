//! From a submission's entries to its report, and from the reports to the
//! postmortem numbers. Fields the audit log lacks come from receipts and the
//! journal (see `sources`); each report lists which it used.

use serde_json::Value;

use super::grouping::{group, Group};
use super::{Chain, CommandReport, Export, Provenance, Sources, Stats, Summary};
use crate::audit::AuditEntry;
use crate::command::envelope::{sha256_hex, Envelope};
use crate::command::payload::Timestamp;
use crate::lifecycle::receipt::ReceiptAction;
use crate::telemetry::percentile;

pub(super) fn ms_between(from: Timestamp, to: Timestamp) -> i64 {
    match to.0.duration_since(from.0) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn stats(mut v: Vec<i64>) -> Stats {
    v.sort_unstable();
    Stats {
        count: v.len(),
        p50: percentile(&v, 50),
        p90: percentile(&v, 90),
        max: v.last().copied(),
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(String::from)
}

/// Whether `actions` make a revert command; `None` if there are none to tell.
fn revert_kind(actions: &Value) -> Option<bool> {
    actions
        .as_array()
        .filter(|a| !a.is_empty())
        .map(|a| a.iter().any(|x| x["op"] == "revert"))
}

/// Reads a revert's cause from its note.
fn revert_cause(note: &str) -> (String, Option<String>) {
    if note == "hold ran out" {
        ("hold".into(), None)
    } else if let Some(id) = note.strip_prefix("reverted by command ") {
        ("command".into(), Some(id.to_string()))
    } else {
        ("unknown".into(), None)
    }
}

/// The note of the last `state` transition in a timeline.
fn last_note(timeline: &Value, state: &str) -> Option<String> {
    timeline
        .as_array()?
        .iter()
        .rev()
        .find(|t| t["state"] == state)
        .and_then(|t| text(&t["note"]))
}

/// Builds the report of one group.
pub(super) fn report(
    g: &Group,
    entries: &[AuditEntry],
    sources: &Sources,
    prov: &mut Provenance,
) -> CommandReport {
    let mut r = CommandReport {
        command: g.command.clone(),
        envelope_sha256: g.sha.clone(),
        outcome: g.outcome.clone(),
        last_state: g.last_state.clone(),
        first_seen: Some(g.first_seen),
        applied_at: g.applied_at,
        settled_at: g.settled_at,
        time_to_apply_ms: g.applied_at.map(|a| ms_between(g.first_seen, a)),
        recovered: g.recovered,
        drifts: g.drifts,
        receipts: g.receipts.iter().map(|(_, n)| n.clone()).collect(),
        sources: vec!["audit"],
        ..CommandReport::default()
    };

    // Receipts, oldest first; later ones win.
    let receipts: Vec<Value> = g
        .receipts
        .iter()
        .filter_map(|(i, name)| sources.receipt(name, &entries[*i], prov))
        .collect();
    let mut kind_revert = None;
    for rc in &receipts {
        r.issuer = text(&rc["issuer"]).or(r.issuer.take());
        r.reason = text(&rc["command_reason"]).or(r.reason.take());
        r.ticket = text(&rc["ticket"]).or(r.ticket.take());
        r.message = text(&rc["message"]).or(r.message.take());
        if let Some(code) = text(&rc["reason_code"]) {
            r.reason_code = Some(code);
        }
        if r.command.is_none() {
            r.claimed_command = text(&rc["command_id"])
                .filter(|id| !id.starts_with("sha256:"))
                .or(r.claimed_command.take());
        }
        if let Some(rev) = revert_kind(&rc["actions"]) {
            kind_revert = Some(kind_revert.unwrap_or(false) | rev);
        }
        if let Ok(actions) = serde_json::from_value::<Vec<ReceiptAction>>(rc["actions"].clone()) {
            if !actions.is_empty() {
                r.changes = actions.iter().map(ReceiptAction::change_line).collect();
            }
        }
        if rc["outcome"] == "reverted" {
            if let Some(note) = last_note(&rc["timeline"], "reverted") {
                let (by, cmd) = revert_cause(&note);
                r.reverted_by = Some(by);
                r.reverted_by_command = cmd;
            }
        }
    }
    if !receipts.is_empty() {
        r.sources.push("receipt");
    }

    // The journal record: by id, or for a rejected submission by the
    // receipt it names. Believed only if its envelope is the audited one;
    // its payload's claims (issuer, issued_at, …) only if the agent
    // accepted the envelope's signatures: it logged `verified`, or a
    // receipt names the issuer, which receipts take from a verified payload.
    let signed = g.verified || receipts.iter().any(|rc| rc["issuer"].is_string());
    let record = g
        .command
        .as_ref()
        .and_then(|id| sources.by_id.get(id))
        .or_else(|| {
            g.receipts
                .iter()
                .rev()
                .find_map(|(_, n)| sources.by_receipt.get(n))
        })
        .map(|&line| &sources.journal[line]);
    if let (Some(rec), Some(sha)) = (record, &g.sha) {
        let envelope = rec["envelope"].as_str().unwrap_or_default();
        // An oversized envelope is journaled empty: nothing to check.
        let hash_ok = sha256_hex(envelope.as_bytes()) == *sha;
        if rec["envelope_sha256"].as_str() == Some(sha) && (hash_ok || envelope.is_empty()) {
            r.sources.push("journal");
            let payload = if hash_ok {
                prov.journal_envelopes += 1;
                Envelope::from_json(envelope.as_bytes())
                    .ok()
                    .and_then(|env| env.payload_bytes().ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            if signed {
                r.issued_at = payload["issued_at"]
                    .as_str()
                    .and_then(|t| Timestamp::parse(t).ok());
                r.issuer = text(&payload["issuer"]).or(r.issuer.take());
                r.reason = text(&payload["reason"]).or(r.reason.take());
                r.ticket = text(&payload["ticket"]).or(r.ticket.take());
                if let Some(rev) = revert_kind(&payload["actions"]) {
                    kind_revert = Some(kind_revert.unwrap_or(false) | rev);
                }
            }
            if r.command.is_none() {
                r.claimed_command = r.claimed_command.take().or(text(&payload["id"]));
            }
            if r.outcome.as_deref() == Some("rejected") && r.reason_code.is_none() {
                r.reason_code = text(&rec["reason"]);
            }
            if r.outcome.as_deref() == Some("reverted") && r.reverted_by.is_none() {
                if let Some(note) = last_note(&rec["timeline"], "reverted") {
                    let (by, cmd) = revert_cause(&note);
                    r.reverted_by = Some(by);
                    r.reverted_by_command = cmd;
                }
            }
            r.message = r.message.take().or(text(&rec["message"]));
        } else {
            prov.journal_mismatches += 1;
        }
    }
    r.kind = kind_revert.map(|rev| if rev { "revert" } else { "hotfix" }.to_string());
    if r.outcome.as_deref() == Some("rejected") && r.reason_code.is_none() {
        r.reason_code = Some("unknown".into());
    }
    if r.outcome.as_deref() == Some("reverted") && r.reverted_by.is_none() {
        r.reverted_by = Some("unknown".into());
    }
    if let (Some(issued), Some(applied)) = (r.issued_at, r.applied_at) {
        r.issue_to_apply_ms = Some(ms_between(issued, applied));
    }
    r
}

/// Builds the export from verified entries (the chain is left empty).
pub fn build(
    entries: &[AuditEntry],
    sources: &Sources,
    since: Timestamp,
    until: Timestamp,
) -> Export {
    let mut prov = Provenance::default();
    let commands: Vec<CommandReport> = group(entries, since)
        .iter()
        .filter(|g| g.in_window)
        .map(|g| report(g, entries, sources, &mut prov))
        .collect();

    let mut s = Summary {
        entries: entries.iter().filter(|e| e.at >= since).count(),
        commands: commands.len(),
        ..Summary::default()
    };
    let mut to_apply = Vec::new();
    let mut issue_to_apply = Vec::new();
    for c in &commands {
        s.drifts += c.drifts;
        if let Some(o) = &c.outcome {
            *s.by_outcome.entry(o.clone()).or_default() += 1;
        }
        match c.outcome.as_deref() {
            Some("rejected") => {
                s.rejected += 1;
                let code = c.reason_code.clone().unwrap_or_else(|| "unknown".into());
                *s.rejections_by_reason.entry(code).or_default() += 1;
            }
            Some("reverted") => match c.reverted_by.as_deref() {
                Some("hold") => s.reverted.by_hold += 1,
                Some("command") => s.reverted.by_command += 1,
                _ => s.reverted.unknown += 1,
            },
            _ => {}
        }
        if c.applied_at.is_none_or(|a| a < since) {
            continue;
        }
        if c.kind.as_deref() == Some("revert") {
            s.revert_commands += 1;
            continue;
        }
        s.applied += 1;
        match (c.outcome.as_deref(), c.reverted_by.as_deref()) {
            (Some("rolled_back"), _) => s.rollbacks += 1,
            (Some("kept"), _) | (Some("reverted"), Some("hold")) => s.succeeded += 1,
            _ => {}
        }
        to_apply.extend(c.time_to_apply_ms);
        issue_to_apply.extend(c.issue_to_apply_ms);
    }
    s.hotfix_frequency = s.applied;
    let rate = |n: u64| (s.applied > 0).then(|| n as f64 / s.applied as f64);
    s.regression_rate = rate(s.rollbacks);
    s.success_rate = rate(s.succeeded);
    s.time_to_apply_ms = stats(to_apply);
    s.issue_to_apply_ms = stats(issue_to_apply);
    s.provenance = prov;
    Export {
        since,
        until,
        chain: Chain {
            entries: 0,
            last_hash: String::new(),
        },
        summary: s,
        commands,
        timeline: entries.iter().filter(|e| e.at >= since).cloned().collect(),
    }
}
