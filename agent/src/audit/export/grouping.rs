//! Splitting the audit log into submissions. Entries carry a command id
//! only once the command verified; a received or early-rejected envelope is
//! known by its hash alone, and a replay of the same bytes must stay a
//! submission of its own.

use std::collections::HashMap;

use serde_json::Value;

use crate::audit::AuditEntry;
use crate::command::payload::Timestamp;

const SETTLED_ALWAYS: [&str; 5] = [
    "rolled_back",
    "reverted",
    "failed",
    "superseded",
    "rejected",
];
const LIFECYCLE: [&str; 13] = [
    "received",
    "verified",
    "rejected",
    "planned",
    "journaled",
    "sampled",
    "applied",
    "baking",
    "kept",
    "rolled_back",
    "reverted",
    "failed",
    "superseded",
];

/// One submission's entries, as the log tells them.
pub(super) struct Group {
    pub(super) command: Option<String>,
    pub(super) sha: Option<String>,
    pub(super) first_seen: Timestamp,
    pub(super) applied_at: Option<Timestamp>,
    pub(super) settled_at: Option<Timestamp>,
    pub(super) outcome: Option<String>,
    pub(super) last_state: String,
    pub(super) recovered: bool,
    pub(super) drifts: u64,
    /// The agent logged it as verified.
    pub(super) verified: bool,
    /// (entry index, receipt name)
    pub(super) receipts: Vec<(usize, String)>,
    pub(super) in_window: bool,
}

impl Group {
    fn new(e: &AuditEntry) -> Group {
        Group {
            command: e.command.clone(),
            sha: e.envelope_sha256.clone(),
            first_seen: e.at,
            applied_at: None,
            settled_at: None,
            outcome: None,
            last_state: String::new(),
            recovered: false,
            drifts: 0,
            verified: false,
            receipts: Vec::new(),
            in_window: false,
        }
    }
}

fn settles(e: &AuditEntry) -> bool {
    SETTLED_ALWAYS.contains(&e.event.as_str()) || e.detail.get("receipt").is_some()
}

/// Splits the log into submissions, oldest first.
pub(super) fn group(entries: &[AuditEntry], since: Timestamp) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    // Envelope hash → submissions of it not yet settled (or kept, which
    // later entries find by id), oldest first.
    let mut open: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        // Lifecycle states, and the command events that change no state.
        let lifecycle = LIFECYCLE.contains(&e.event.as_str());
        if !lifecycle && !matches!(e.event.as_str(), "recovered" | "drifted") {
            continue;
        }
        let g = match (&e.command, &e.envelope_sha256) {
            (Some(id), sha) => match by_id.get(id) {
                Some(&g) => g,
                None => {
                    // The first entry with the id: the submission received
                    // under its envelope hash now has it.
                    let pending = sha.as_ref().and_then(|s| {
                        open.get(s)
                            .and_then(|v| v.iter().rev().find(|&&g| groups[g].command.is_none()))
                            .copied()
                    });
                    let g = pending.unwrap_or_else(|| {
                        groups.push(Group::new(e));
                        if let Some(s) = sha {
                            open.entry(s.clone()).or_default().push(groups.len() - 1);
                        }
                        groups.len() - 1
                    });
                    groups[g].command = Some(id.clone());
                    by_id.insert(id.clone(), g);
                    g
                }
            },
            (None, Some(sha)) => {
                let pending = (e.event != "received")
                    .then(|| open.get(sha))
                    .flatten()
                    .and_then(|v| {
                        // A submission still without an id first (a replay
                        // of an envelope in flight), else the one that got
                        // its id and was then refused.
                        v.iter()
                            .rev()
                            .find(|&&g| groups[g].command.is_none())
                            .or_else(|| v.last())
                            .copied()
                    });
                pending.unwrap_or_else(|| {
                    groups.push(Group::new(e));
                    open.entry(sha.clone()).or_default().push(groups.len() - 1);
                    groups.len() - 1
                })
            }
            (None, None) => continue,
        };
        let grp = &mut groups[g];
        grp.in_window |= e.at >= since;
        match e.event.as_str() {
            "recovered" => grp.recovered = true,
            "drifted" => grp.drifts += 1,
            _ => {}
        }
        if !lifecycle {
            continue;
        }
        grp.last_state = e.event.clone();
        grp.verified |= e.event == "verified";
        if e.event == "applied" && grp.applied_at.is_none() {
            grp.applied_at = Some(e.at);
        }
        if let Some(name) = e.detail.get("receipt").and_then(Value::as_str) {
            grp.receipts.push((i, name.to_string()));
        }
        if settles(e) {
            grp.outcome = Some(e.event.clone());
            grp.settled_at = Some(e.at);
            if let Some(sha) = &grp.sha {
                if let Some(v) = open.get_mut(sha) {
                    v.retain(|&x| x != g);
                }
            }
        }
    }
    groups
}
