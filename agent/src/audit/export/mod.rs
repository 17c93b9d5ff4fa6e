//! `tourniquet audit export`: the audit log as an incident timeline, with
//! the numbers a postmortem reports (hotfix guide M3, M5–M7).
//!
//! The hash-chained audit log is the source of truth: the chain is verified
//! first, and the export refuses a broken one. The audit entries say what
//! happened and when; what they do not carry is read from two other places
//! in the state dir, each checked against the chain before it is believed:
//!
//! - the signed receipts an entry names (`detail.receipt`): the rejection
//!   reason code, issuer and stated reason, what kind of command it was, and
//!   why a hotfix was reverted (its hold ran out, or a revert command). Only
//!   receipts whose signature verifies against the agent key, and whose
//!   envelope hash and outcome match the entry, are used.
//! - the journal (`journal.jsonl`): the command's envelope, whose payload
//!   carries `issued_at`. Used only if the envelope's SHA-256 is the one the
//!   audit entries carry. The journal is compacted at agent start, so old
//!   settled commands lose their `issued_at` there.
//!
//! Commands are grouped by the entries' `command` field. Entries without one
//! (`received`, and `rejected` ones keyed only by the envelope hash) are
//! tied to the submission of the same envelope hash that is still open, so
//! a rejected replay of an envelope is a command of its own and never merged
//! into the command it replays.
//!
//! Window: a command is reported if any of its entries is at or after
//! `since`; its durations use all of its entries. The rates are over the
//! hotfixes applied within the window; revert commands (a signed `revert`)
//! are counted apart, since they undo a hotfix rather than being one.
//! Percentiles are nearest-rank.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::audit::{self, AuditEntry, AuditError};
use crate::command::envelope::{
    self, sha256_hex, Envelope, RECEIPT_NAMESPACE, RECEIPT_PAYLOAD_TYPE,
};
use crate::command::payload::Timestamp;
use crate::lifecycle::receipt::ReceiptAction;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object: window, chain, summary, commands, timeline.
    Json,
    /// One row per command, with a header line.
    Csv,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}; refusing to export: a postmortem must not start from a tampered log (`tourniquet audit verify` shows the same)")]
    Broken(AuditError),
    #[error("{0}")]
    Io(String),
    #[error("--since: {0}")]
    Since(String),
}

impl ExportError {
    /// The chain is broken (as opposed to an I/O or usage error).
    pub fn is_broken(&self) -> bool {
        matches!(self, ExportError::Broken(_))
    }
}

/// The whole export.
#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub since: Timestamp,
    pub until: Timestamp,
    /// The verified chain the export was built from.
    pub chain: Chain,
    pub summary: Summary,
    pub commands: Vec<CommandReport>,
    /// The audit entries at or after `since`, unchanged.
    pub timeline: Vec<AuditEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    pub entries: u64,
    pub last_hash: String,
}

/// One command (or one rejected submission) in the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandReport {
    /// The command id; `null` for a submission rejected before it had one.
    pub command: Option<String>,
    /// For those: the id its payload claimed (unverified if it was refused
    /// before its signatures were checked).
    pub claimed_command: Option<String>,
    pub envelope_sha256: Option<String>,
    /// `hotfix`, `revert` (a signed revert command), or `null` if unknown.
    pub kind: Option<String>,
    /// The last settled state: kept, rolled_back, reverted, failed,
    /// superseded, rejected, planned (dry run); `null` while in flight.
    pub outcome: Option<String>,
    /// The last state the audit log saw.
    pub last_state: String,
    pub first_seen: Option<Timestamp>,
    pub issued_at: Option<Timestamp>,
    pub applied_at: Option<Timestamp>,
    pub settled_at: Option<Timestamp>,
    /// first seen (received) → applied.
    pub time_to_apply_ms: Option<i64>,
    /// payload `issued_at` (the operator's clock) → applied (the agent's);
    /// negative if the clocks disagree by more than the delay.
    pub issue_to_apply_ms: Option<i64>,
    /// For reverted ones: `hold` (its hold ran out), `command` (a revert
    /// command) or `unknown`.
    pub reverted_by: Option<String>,
    pub reverted_by_command: Option<String>,
    /// For rejected ones: the stable reason code, or `unknown`.
    pub reason_code: Option<String>,
    pub message: Option<String>,
    pub issuer: Option<String>,
    /// Why the operator asked.
    pub reason: Option<String>,
    pub ticket: Option<String>,
    /// A crash recovery touched it.
    pub recovered: bool,
    /// Times the resource was found changed behind the hotfix (`drifted`).
    pub drifts: u64,
    /// Each action's change in words, from the newest receipt, e.g.
    /// `edge-waf waf.block: +203.0.113.7/32 (3 → 4 addresses)`.
    pub changes: Vec<String>,
    pub receipts: Vec<String>,
    /// Where the fields came from: `audit`, `receipt`, `journal`.
    pub sources: Vec<&'static str>,
}

/// Nearest-rank percentiles of one duration, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    pub count: usize,
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub max: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Reverted {
    pub by_hold: u64,
    pub by_command: u64,
    pub unknown: u64,
}

/// How much of the data beyond the audit log could be used.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Provenance {
    /// Receipts read and verified against the agent key.
    pub receipts_verified: u64,
    /// Receipts used without a signature check: no agent public key found.
    pub receipts_unverified: u64,
    /// Receipts named by an entry but missing or unreadable.
    pub receipts_missing: u64,
    /// Receipts ignored: bad signature, or not matching their entry.
    pub receipts_rejected: u64,
    /// Commands whose envelope was found in the journal, hash-checked.
    pub journal_envelopes: u64,
    /// Journal records ignored: their envelope does not hash to the one
    /// the audit log names.
    pub journal_mismatches: u64,
}

/// The numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Audit entries in the window.
    pub entries: usize,
    /// Commands (and rejected submissions) in the window.
    pub commands: usize,
    pub by_outcome: BTreeMap<String, u64>,
    /// M5: hotfixes applied in the window.
    pub hotfix_frequency: u64,
    /// Hotfixes applied in the window (the rates' denominator).
    pub applied: u64,
    /// Of those, rolled back by their guard.
    pub rollbacks: u64,
    /// M6: rollbacks / applied.
    pub regression_rate: Option<f64>,
    /// Of those applied, kept or reverted when the hold ran out.
    pub succeeded: u64,
    /// M7: succeeded / applied.
    pub success_rate: Option<f64>,
    pub reverted: Reverted,
    /// Signed revert commands applied in the window (not hotfixes).
    pub revert_commands: u64,
    pub rejected: u64,
    pub rejections_by_reason: BTreeMap<String, u64>,
    /// `drifted` entries of the reported commands.
    pub drifts: u64,
    /// M3 on the agent: received → applied, hotfixes applied in the window.
    pub time_to_apply_ms: Stats,
    /// issued → applied, for those whose `issued_at` is known.
    pub issue_to_apply_ms: Stats,
    pub provenance: Provenance,
}

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

/// Parses `--since` and exports `state_dir` as of now.
pub fn export_state(state_dir: &Path, since: &str) -> Result<Export, ExportError> {
    let d = humantime::parse_duration(since).map_err(|e| {
        ExportError::Since(format!("{since:?} is not a duration like \"24h\": {e}"))
    })?;
    let now = Timestamp::now();
    let since = Timestamp(now.0.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    export(state_dir, since, now)
}

/// Verifies the chain of the audit log in `state_dir` (every segment, and
/// against the journal's checkpoint) and builds the export of the entries
/// at or after `since`.
pub fn export(state_dir: &Path, since: Timestamp, until: Timestamp) -> Result<Export, ExportError> {
    let checkpoint = crate::lifecycle::store::read_checkpoint(state_dir);
    let (entries, report) =
        audit::read_verified(state_dir, checkpoint.as_ref()).map_err(|e| match e {
            AuditError::Io { .. } => ExportError::Io(e.to_string()),
            broken => ExportError::Broken(broken),
        })?;
    let sources = Sources::load(state_dir);
    let mut out = build(&entries, &sources, since, until);
    out.chain = Chain {
        entries: report.entries,
        last_hash: report.last_hash,
    };
    Ok(out)
}

/// The state beyond the audit log.
#[derive(Default)]
pub struct Sources {
    state_dir: Option<PathBuf>,
    receipts_dir: Option<PathBuf>,
    /// The agent's public key (OpenSSH line), to check receipts with.
    agent_key: Option<String>,
    /// Journal lines (full records), oldest first.
    journal: Vec<Value>,
    /// Command id → its last journal line.
    by_id: HashMap<String, usize>,
    /// Receipt name → the last journal line listing it. Rejected
    /// submissions of identical bytes share an id, never a receipt.
    by_receipt: HashMap<String, usize>,
}

impl Sources {
    /// Reads what there is; anything missing just leaves fields unknown.
    pub fn load(state_dir: &Path) -> Sources {
        let mut s = Sources {
            state_dir: Some(state_dir.to_path_buf()),
            receipts_dir: Some(state_dir.join("receipts")),
            agent_key: std::fs::read_to_string(state_dir.join("agent_ed25519.pub"))
                .ok()
                .map(|k| k.trim().to_string()),
            ..Sources::default()
        };
        // Read as plain JSON, not as records: a field added or changed in
        // a later version must not hide a whole command.
        if let Ok(text) = std::fs::read_to_string(state_dir.join("journal.jsonl")) {
            let mut envelopes: HashMap<String, Value> = HashMap::new();
            for line in text.lines() {
                let Ok(line) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                // Journal lines are `{"t": "put" | "step" | "settle", "rec": …}`;
                // an older journal held bare records.
                let mut rec = match line["t"].as_str() {
                    Some("put" | "step" | "settle") => line["rec"].clone(),
                    Some(_) => continue,
                    None => line.clone(),
                };
                let Some(id) = rec["id"].as_str().map(String::from) else {
                    continue;
                };
                if let Some(env) = line.get("envelope").filter(|e| e.is_string()) {
                    envelopes.insert(id.clone(), env.clone());
                }
                if rec.get("envelope").is_none() {
                    if let (Some(env), Some(o)) = (envelopes.get(&id), rec.as_object_mut()) {
                        o.insert("envelope".into(), env.clone());
                    }
                }
                let line = s.journal.len();
                for name in rec["receipts"].as_array().into_iter().flatten() {
                    if let Some(n) = name.as_str() {
                        s.by_receipt.insert(n.to_string(), line);
                    }
                }
                s.by_id.insert(id, line);
                s.journal.push(rec);
            }
        }
        s
    }

    /// A receipt's payload, if it verifies and belongs to `entry`.
    fn receipt(&self, name: &str, entry: &AuditEntry, prov: &mut Provenance) -> Option<Value> {
        let dir = self.receipts_dir.as_ref()?;
        // The name comes from the log: never let it leave the receipts dir.
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            prov.receipts_rejected += 1;
            return None;
        }
        let stored = self
            .state_dir
            .as_deref()
            .and_then(|d| crate::lifecycle::store::read_receipt(d, name))
            .and_then(|v| serde_json::from_value::<Envelope>(v).ok());
        // An older state dir kept a file per receipt.
        let Some(env) = stored.or_else(|| {
            std::fs::read(dir.join(format!("{name}.json")))
                .ok()
                .and_then(|b| Envelope::from_json(&b).ok())
        }) else {
            prov.receipts_missing += 1;
            return None;
        };
        let verified = match &self.agent_key {
            Some(key) => {
                if !receipt_signature_ok(&env, key) {
                    prov.receipts_rejected += 1;
                    return None;
                }
                true
            }
            None => false,
        };
        let Some(payload) = env
            .payload_bytes()
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            prov.receipts_rejected += 1;
            return None;
        };
        let matches = payload["outcome"].as_str() == Some(entry.event.as_str())
            && entry
                .envelope_sha256
                .as_deref()
                .is_none_or(|sha| payload["envelope_sha256"].as_str() == Some(sha));
        if !matches {
            prov.receipts_rejected += 1;
            return None;
        }
        if verified {
            prov.receipts_verified += 1;
        } else {
            prov.receipts_unverified += 1;
        }
        Some(payload)
    }
}

/// Checks a receipt envelope's signature against the agent key.
fn receipt_signature_ok(env: &Envelope, agent_key: &str) -> bool {
    let Ok(expected) = ssh_key::PublicKey::from_openssh(agent_key) else {
        return false;
    };
    let Ok(bytes) = env.payload_bytes() else {
        return false;
    };
    if env.payload_type != RECEIPT_PAYLOAD_TYPE {
        return false;
    }
    let Some(sig) = env
        .signatures
        .first()
        .and_then(|s| envelope::decode_signature(&s.sig).ok())
    else {
        return false;
    };
    sig.public_key() == expected.key_data()
        && envelope::verify_sshsig(
            RECEIPT_NAMESPACE,
            &envelope::pae(&env.payload_type, &bytes),
            &sig,
        )
        .is_ok()
}

/// One submission's entries, as the log tells them.
struct Group {
    command: Option<String>,
    sha: Option<String>,
    first_seen: Timestamp,
    applied_at: Option<Timestamp>,
    settled_at: Option<Timestamp>,
    outcome: Option<String>,
    last_state: String,
    recovered: bool,
    drifts: u64,
    /// The agent logged it as verified.
    verified: bool,
    /// (entry index, receipt name)
    receipts: Vec<(usize, String)>,
    in_window: bool,
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
fn group(entries: &[AuditEntry], since: Timestamp) -> Vec<Group> {
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

fn ms_between(from: Timestamp, to: Timestamp) -> i64 {
    match to.0.duration_since(from.0) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// Nearest-rank percentile `p` (0–100) of `sorted`.
pub fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
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
fn report(
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

/// The CSV columns, in order.
pub const CSV_HEADER: &str = "command,claimed_command,envelope_sha256,kind,outcome,last_state,first_seen,issued_at,applied_at,settled_at,time_to_apply_ms,issue_to_apply_ms,reverted_by,reverted_by_command,reason_code,issuer,reason,ticket,message,recovered,drifts,changes";

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Export {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let ts = |v: &Option<Timestamp>| v.map(|t| t.to_string()).unwrap_or_default();
        let num = |v: &Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
        for c in &self.commands {
            let row = [
                opt(&c.command),
                opt(&c.claimed_command),
                opt(&c.envelope_sha256),
                opt(&c.kind),
                opt(&c.outcome),
                c.last_state.clone(),
                ts(&c.first_seen),
                ts(&c.issued_at),
                ts(&c.applied_at),
                ts(&c.settled_at),
                num(&c.time_to_apply_ms),
                num(&c.issue_to_apply_ms),
                opt(&c.reverted_by),
                opt(&c.reverted_by_command),
                opt(&c.reason_code),
                opt(&c.issuer),
                opt(&c.reason),
                opt(&c.ticket),
                opt(&c.message),
                c.recovered.to_string(),
                c.drifts.to_string(),
                c.changes.join("; "),
            ];
            let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
            let _ = writeln!(out, "{}", fields.join(","));
        }
        out
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => {
                let mut s = self.to_json();
                s.push('\n');
                s
            }
            Format::Csv => self.to_csv(),
        }
    }
}

/// `tourniquet audit export`: renders to stdout, or to `out` (0600).
pub fn run(
    state: Option<PathBuf>,
    since: &str,
    format: Format,
    out: Option<&Path>,
) -> Result<(), ExportError> {
    let dir = state.unwrap_or_else(|| PathBuf::from(crate::defaults::DEFAULT_DIR).join("state"));
    let text = export_state(&dir, since)?.render(format);
    match out {
        Some(path) => tourniquet_providers::write_atomically(path, text.as_bytes(), 0o600)
            .map_err(|e| ExportError::Io(format!("{}: {e}", path.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::command::envelope::COMMAND_PAYLOAD_TYPE;
    use crate::trust::keys::{self, Signer};
    use serde_json::json;

    /// A state dir with an agent key, an audit log written through
    /// [`AuditLog::append`], receipts and journal lines.
    struct Fixture {
        dir: tempfile::TempDir,
        log: AuditLog,
        signer: Signer,
        journal: Vec<Value>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("receipts")).unwrap();
            let key = dir.path().join("agent_ed25519");
            keys::generate_keypair(&key, "tourniquet-agent@test").unwrap();
            let signer = Signer::load(&key).unwrap();
            let log = AuditLog::open(dir.path(), Default::default()).unwrap();
            Fixture {
                dir,
                log,
                signer,
                journal: Vec::new(),
            }
        }

        fn state(&self) -> &Path {
            self.dir.path()
        }

        fn entry(&mut self, event: &str, cmd: Option<&str>, sha: &str, detail: Value) {
            self.log.append(event, cmd, Some(sha), detail).unwrap();
        }

        /// Signs `payload` with `signer` and stores it as receipt `name`.
        fn receipt_signed_by(&self, signer: &Signer, name: &str, payload: Value) {
            let bytes = serde_json::to_vec(&payload).unwrap();
            let mut env = Envelope::new(RECEIPT_PAYLOAD_TYPE, &bytes);
            let sig = signer
                .sign(
                    RECEIPT_NAMESPACE,
                    &envelope::pae(RECEIPT_PAYLOAD_TYPE, &bytes),
                )
                .unwrap();
            env.add_signature(&sig).unwrap();
            // The layout of an older state dir: a file per receipt.
            std::fs::write(
                self.state().join("receipts").join(format!("{name}.json")),
                serde_json::to_vec_pretty(&env).unwrap(),
            )
            .unwrap();
        }

        /// Settles like `Lifecycle::settle`: a receipt, then the entry.
        fn settle(&mut self, event: &str, cmd: Option<&str>, sha: &str, name: &str, r: Value) {
            let mut payload = json!({
                "command_id": cmd,
                "envelope_sha256": sha,
                "outcome": event,
                "decision": if event == "rejected" { "rejected" } else { "accepted" },
                "issuer": "alice@example.com",
                "command_reason": "INC-7: checkout 500s",
                "actions": [{"resource": "checkout-flags", "op": "flag.set"}],
                "timeline": [],
            });
            for (k, v) in r.as_object().unwrap() {
                payload[k] = v.clone();
            }
            self.receipt_signed_by(&self.signer, name, payload);
            self.entry(event, cmd, sha, json!({"receipt": name}));
        }

        /// Received under the envelope hash, then verified … applied.
        fn apply(&mut self, id: &str, sha: &str) {
            self.entry("received", None, sha, Value::Null);
            for st in ["verified", "planned", "journaled", "sampled", "applied"] {
                self.entry(st, Some(id), sha, Value::Null);
            }
        }

        fn write_journal(&self) {
            let text: String = self
                .journal
                .iter()
                .map(|r| format!("{}\n", serde_json::to_string(r).unwrap()))
                .collect();
            std::fs::write(self.state().join("journal.jsonl"), text).unwrap();
        }
    }

    /// A command envelope (unsigned: the export never re-verifies operator
    /// signatures, the audit hash binds it) and its SHA-256.
    fn envelope_of(
        id: &str,
        issued_at: Timestamp,
        reason: &str,
        actions: Value,
    ) -> (String, String) {
        let payload = json!({
            "id": id,
            "issuer": "alice@example.com",
            "issued_at": issued_at.to_string(),
            "expires": issued_at.plus(std::time::Duration::from_secs(600)).to_string(),
            "reason": reason,
            "ticket": "INC-7",
            "target": {},
            "actions": actions,
        });
        let env = Envelope::new(COMMAND_PAYLOAD_TYPE, &serde_json::to_vec(&payload).unwrap());
        let text = serde_json::to_string(&env).unwrap();
        let sha = sha256_hex(text.as_bytes());
        (text, sha)
    }

    fn record(id: &str, sha: &str, envelope: &str, extra: Value) -> Value {
        let mut r =
            json!({"id": id, "state": "kept", "envelope": envelope, "envelope_sha256": sha});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    }

    fn flag_set() -> Value {
        json!([{"resource": "checkout-flags", "op": "flag.set", "flag": "new_flow", "variant": "off"}])
    }

    fn far_past() -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH)
    }

    fn cmd<'a>(x: &'a Export, id: &str) -> &'a CommandReport {
        x.commands
            .iter()
            .find(|c| c.command.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no command {id}"))
    }

    /// Kept, rolled back, reverted by hold, reverted by a revert command,
    /// the revert command, and three rejections (one a replay of a kept
    /// command's envelope, one whose receipt is gone).
    fn incident() -> Fixture {
        let mut fx = Fixture::new();
        let issued = Timestamp(SystemTime::now() - std::time::Duration::from_secs(5));
        fx.log
            .append("agent_started", None, None, json!({"agent": "a"}))
            .unwrap();

        // K: kept.
        let (k_env, k_sha) = envelope_of("K", issued, "INC-7: checkout 500s, off", flag_set());
        fx.apply("K", &k_sha);
        fx.settle("kept", Some("K"), &k_sha, "K.1.kept", json!({}));
        fx.journal.push(record("K", &k_sha, &k_env, json!({})));

        // R: rolled back by its guard. Its journal envelope was edited.
        let (_, r_sha) = envelope_of("R", issued, "INC-7", flag_set());
        fx.apply("R", &r_sha);
        fx.entry("baking", Some("R"), &r_sha, Value::Null);
        fx.settle(
            "rolled_back",
            Some("R"),
            &r_sha,
            "R.1.rolled_back",
            json!({}),
        );
        let (edited, _) = envelope_of("R", issued, "INC-8", flag_set());
        fx.journal.push(record(
            "R",
            &r_sha,
            &edited,
            json!({"state": "rolled_back"}),
        ));

        // H: kept with a hold, reverted when it ran out.
        let (h_env, h_sha) = envelope_of("H", issued, "INC-7", flag_set());
        fx.apply("H", &h_sha);
        fx.settle("kept", Some("H"), &h_sha, "H.1.kept", json!({}));
        fx.settle(
            "reverted",
            Some("H"),
            &h_sha,
            "H.2.reverted",
            json!({"timeline": [{"state": "reverted", "at": "2026-01-01T00:00:00Z", "note": "hold ran out"}]}),
        );
        fx.journal
            .push(record("H", &h_sha, &h_env, json!({"state": "reverted"})));

        // D: kept, then undone by revert command V. No journal record: its
        // cause comes from the receipt alone.
        let (_, d_sha) = envelope_of("D", issued, "INC-7", flag_set());
        fx.apply("D", &d_sha);
        fx.settle("kept", Some("D"), &d_sha, "D.1.kept", json!({}));
        let revert = json!([{"op": "revert", "command": "D"}]);
        let (v_env, v_sha) = envelope_of("V", issued, "INC-7 resolved", revert.clone());
        fx.entry("received", None, &v_sha, Value::Null);
        for st in ["verified", "planned", "journaled", "sampled"] {
            fx.entry(st, Some("V"), &v_sha, Value::Null);
        }
        fx.settle(
            "reverted",
            Some("D"),
            &d_sha,
            "D.2.reverted",
            json!({"timeline": [{"state": "reverted", "at": "2026-01-01T00:00:00Z", "note": "reverted by command V"}]}),
        );
        fx.entry("applied", Some("V"), &v_sha, Value::Null);
        fx.settle(
            "kept",
            Some("V"),
            &v_sha,
            "V.1.kept",
            json!({"actions": [{"resource": "checkout-flags", "op": "revert"}]}),
        );
        fx.journal.push(record("V", &v_sha, &v_env, json!({})));

        // M: an unknown signer, refused before it had an id.
        let m_sha = "m".repeat(64);
        fx.entry("received", None, &m_sha, Value::Null);
        fx.settle(
            "rejected",
            None,
            &m_sha,
            "rejected-mmmm.1",
            json!({"command_id": null, "reason_code": "unknown_signer", "actions": [], "issuer": null}),
        );

        // A replay of K's exact envelope.
        fx.entry("received", None, &k_sha, Value::Null);
        fx.settle(
            "rejected",
            None,
            &k_sha,
            "rejected-kkkk.2",
            json!({"command_id": "K", "reason_code": "replay", "actions": []}),
        );

        // X: not targeted; its receipt is gone, the journal still says why.
        let (x_env, x_sha) = envelope_of("X", issued, "INC-7", flag_set());
        fx.entry("received", None, &x_sha, Value::Null);
        fx.entry(
            "rejected",
            None,
            &x_sha,
            json!({"receipt": "rejected-xxxx.3"}),
        );
        fx.journal.push(record(
            &format!("sha256:{x_sha}"),
            &x_sha,
            &x_env,
            json!({"state": "rejected", "reason": "not_targeted", "receipts": ["rejected-xxxx.3"]}),
        ));
        fx.write_journal();
        fx.log.sync().unwrap();
        fx
    }

    #[test]
    fn an_incident_becomes_commands_rates_and_durations() {
        let fx = incident();
        let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
        let s = &x.summary;
        assert_eq!(x.chain.entries as usize, x.timeline.len());
        assert_eq!(s.entries, x.timeline.len());
        assert_eq!(s.commands, 8, "{:#?}", x.commands);
        assert_eq!(s.applied, 4, "K, R, H and D; V is a revert command");
        assert_eq!(s.hotfix_frequency, 4);
        assert_eq!(s.revert_commands, 1);
        assert_eq!(s.rollbacks, 1);
        assert_eq!(s.regression_rate, Some(0.25));
        assert_eq!(s.succeeded, 2, "K kept and H reverted by its hold");
        assert_eq!(s.success_rate, Some(0.5));
        assert_eq!((s.reverted.by_hold, s.reverted.by_command), (1, 1));
        assert_eq!(s.rejected, 3);
        assert_eq!(
            s.rejections_by_reason,
            BTreeMap::from([
                ("not_targeted".to_string(), 1),
                ("replay".to_string(), 1),
                ("unknown_signer".to_string(), 1),
            ])
        );
        assert_eq!(s.by_outcome["kept"], 2);
        assert_eq!(s.by_outcome["reverted"], 2);
        assert_eq!(s.by_outcome["rolled_back"], 1);
        assert_eq!(s.time_to_apply_ms.count, 4);
        assert!(s.time_to_apply_ms.p50.unwrap() >= 0);
        assert!(s.time_to_apply_ms.p90 >= s.time_to_apply_ms.p50);
        // R's journal envelope does not hash to the audited one and D has
        // no journal record: only K and H have an issued_at.
        assert_eq!(s.issue_to_apply_ms.count, 2);
        assert!(s.issue_to_apply_ms.p50.unwrap() >= 5000);
        assert_eq!(s.provenance.journal_mismatches, 1);
        assert_eq!(s.provenance.receipts_missing, 1);
        assert_eq!(s.provenance.receipts_rejected, 0);
        assert!(s.provenance.receipts_verified >= 9);

        let k = cmd(&x, "K");
        assert_eq!(
            k.outcome.as_deref(),
            Some("kept"),
            "the replay is not merged into K"
        );
        assert_eq!(k.kind.as_deref(), Some("hotfix"));
        assert!(k.issue_to_apply_ms.unwrap() >= 5000);
        assert!(k.time_to_apply_ms.unwrap() >= 0);
        assert_eq!(
            k.first_seen,
            x.timeline
                .iter()
                .find(|e| e.event == "received")
                .map(|e| e.at)
        );
        assert_eq!(k.issuer.as_deref(), Some("alice@example.com"));
        assert_eq!(k.reason.as_deref(), Some("INC-7: checkout 500s, off"));
        assert_eq!(k.ticket.as_deref(), Some("INC-7"));
        assert_eq!(k.sources, vec!["audit", "receipt", "journal"]);
        let r = cmd(&x, "R");
        assert_eq!(r.outcome.as_deref(), Some("rolled_back"));
        assert_eq!(r.issued_at, None);
        assert_eq!(r.sources, vec!["audit", "receipt"]);
        assert_eq!(cmd(&x, "H").reverted_by.as_deref(), Some("hold"));
        let d = cmd(&x, "D");
        assert_eq!(d.reverted_by.as_deref(), Some("command"));
        assert_eq!(d.reverted_by_command.as_deref(), Some("V"));
        assert_eq!(d.receipts, vec!["D.1.kept", "D.2.reverted"]);
        assert_eq!(cmd(&x, "V").kind.as_deref(), Some("revert"));

        let rejected: Vec<&CommandReport> = x
            .commands
            .iter()
            .filter(|c| c.outcome.as_deref() == Some("rejected"))
            .collect();
        assert!(rejected.iter().all(|c| c.command.is_none()));
        let replay = rejected
            .iter()
            .find(|c| c.reason_code.as_deref() == Some("replay"))
            .unwrap();
        assert_eq!(replay.claimed_command.as_deref(), Some("K"));
        assert_eq!(replay.envelope_sha256, k.envelope_sha256);
        let x_rej = rejected
            .iter()
            .find(|c| c.reason_code.as_deref() == Some("not_targeted"))
            .unwrap();
        assert_eq!(x_rej.sources, vec!["audit", "journal"]);
        assert_eq!(x_rej.claimed_command.as_deref(), Some("X"));
        // Never verified: the envelope's claims are not reported as facts.
        assert_eq!((&x_rej.issuer, x_rej.issued_at), (&None, None));
        assert_eq!(x_rej.kind, None);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let fx = incident();
        let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
        let v: Value = serde_json::from_str(&x.render(Format::Json)).unwrap();
        for key in ["since", "until", "chain", "summary", "commands", "timeline"] {
            assert!(!v[key].is_null(), "{key}");
        }
        assert_eq!(v["summary"]["regression_rate"], json!(0.25));
        assert_eq!(v["timeline"][0]["event"], "agent_started");
        assert_eq!(v["commands"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_command() {
        let fx = incident();
        let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
        let csv = x.render(Format::Csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 1 + 8);
        let k = lines.iter().find(|l| l.starts_with("K,")).unwrap();
        // The reason has a comma: quoted, so the row keeps its columns.
        assert!(k.contains("\"INC-7: checkout 500s, off\""), "{k}");
        assert!(k.contains(",hotfix,kept,kept,"), "{k}");
        assert_eq!(csv_field("say \"no\""), "\"say \"\"no\"\"\"");
        assert_eq!(csv_field("a\nb"), "\"a\nb\"");
    }

    #[test]
    fn a_tampered_log_is_refused() {
        let fx = incident();
        let path = fx.state().join("audit.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("rolled_back", "kept", 1)).unwrap();
        let err = export(fx.state(), far_past(), Timestamp::now()).unwrap_err();
        assert!(err.is_broken(), "{err}");
        assert!(err.to_string().contains("refusing to export"), "{err}");

        // Dropping a line breaks it too; a missing log is an error, not
        // a broken chain.
        let lines: Vec<&str> = text.lines().collect();
        let cut = [&lines[..3], &lines[4..]].concat().join("\n") + "\n";
        std::fs::write(&path, cut).unwrap();
        assert!(export(fx.state(), far_past(), Timestamp::now())
            .unwrap_err()
            .is_broken());
        std::fs::remove_file(&path).unwrap();
        let err = export(fx.state(), far_past(), Timestamp::now()).unwrap_err();
        assert!(!err.is_broken(), "{err}");
    }

    #[test]
    fn a_forged_receipt_is_not_believed() {
        let mut fx = Fixture::new();
        let other = fx.state().join("other_ed25519");
        keys::generate_keypair(&other, "forger").unwrap();
        let forger = Signer::load(&other).unwrap();
        let sha = "f".repeat(64);
        fx.entry("received", None, &sha, Value::Null);
        fx.receipt_signed_by(
            &forger,
            "rejected-ffff.1",
            json!({"envelope_sha256": sha, "outcome": "rejected", "reason_code": "replay"}),
        );
        fx.entry(
            "rejected",
            None,
            &sha,
            json!({"receipt": "rejected-ffff.1"}),
        );
        // A receipt name that would leave the receipts dir is not opened.
        let sha2 = "e".repeat(64);
        fx.entry(
            "rejected",
            None,
            &sha2,
            json!({"receipt": "../agent_ed25519"}),
        );
        fx.log.sync().unwrap();
        let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
        assert_eq!(x.summary.provenance.receipts_rejected, 2);
        assert_eq!(x.summary.rejections_by_reason["unknown"], 2);
        assert_eq!(x.summary.regression_rate, None, "nothing applied");
    }

    #[test]
    fn since_limits_the_window() {
        let fx = incident();
        let all = export(fx.state(), far_past(), Timestamp::now()).unwrap();
        let later = Timestamp::now().plus(std::time::Duration::from_secs(3600));
        let x = export(fx.state(), later, later).unwrap();
        assert_eq!(x.summary.entries, 0);
        assert!(x.commands.is_empty() && x.timeline.is_empty());
        assert_eq!((x.summary.applied, x.summary.success_rate), (0, None));
        assert_eq!(x.summary.time_to_apply_ms, Stats::default());
        assert_eq!(
            x.chain.entries, all.chain.entries,
            "the whole chain is verified"
        );
        assert!(export_state(fx.state(), "24h").unwrap().summary.commands == 8);
        assert!(matches!(
            export_state(fx.state(), "yesterday"),
            Err(ExportError::Since(_))
        ));
    }

    #[test]
    fn a_command_settled_inside_the_window_keeps_its_earlier_start() {
        let mut fx = Fixture::new();
        let sha = "a".repeat(64);
        fx.apply("A", &sha);
        fx.settle("kept", Some("A"), &sha, "A.1.kept", json!({}));
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The log keeps milliseconds: a window starts on one.
        let since = Timestamp::parse(&Timestamp::now().to_string()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        fx.settle(
            "reverted",
            Some("A"),
            &sha,
            "A.2.reverted",
            json!({"timeline": [{"state": "reverted", "note": "hold ran out"}]}),
        );
        fx.log.sync().unwrap();
        let x = export(fx.state(), since, Timestamp::now()).unwrap();
        assert_eq!(x.timeline.len(), 1, "{x:#?}");
        let a = cmd(&x, "A");
        assert_eq!(a.outcome.as_deref(), Some("reverted"));
        assert!(a.time_to_apply_ms.is_some() && a.first_seen < Some(since));
        // Applied before the window: not a hotfix of this window.
        assert_eq!(x.summary.applied, 0);
        assert_eq!(x.summary.reverted.by_hold, 1);
    }

    #[test]
    fn identical_rejections_oversize_and_recovery_stay_apart() {
        let mut fx = Fixture::new();
        let issued = Timestamp::now();
        // The same bytes refused twice, for different reasons; the receipts
        // are gone, each journal line still names its own.
        let (z_env, z) = envelope_of("Z", issued, "INC-7", flag_set());
        for (n, reason) in [(1, "not_yet_valid"), (2, "expired")] {
            let name = format!("rejected-zzzz.{n}");
            fx.entry("received", None, &z, Value::Null);
            fx.entry("rejected", None, &z, json!({"receipt": name}));
            fx.journal.push(record(
                &format!("sha256:{z}"),
                &z,
                &z_env,
                json!({"state": "rejected", "reason": reason, "receipts": [name]}),
            ));
        }
        // Too large: refused before `received`, journaled without its bytes.
        let big = "b".repeat(64);
        fx.entry(
            "rejected",
            None,
            &big,
            json!({"receipt": "rejected-bbbb.1"}),
        );
        fx.journal.push(record(
            &format!("sha256:{big}"),
            &big,
            "",
            json!({"state": "rejected", "reason": "too_large", "receipts": ["rejected-bbbb.1"]}),
        ));
        // A crash after `verified`: recovered, verified again, then kept.
        let (c_env, c) = envelope_of("C", issued, "INC-7", flag_set());
        fx.entry("received", None, &c, Value::Null);
        fx.entry("verified", Some("C"), &c, Value::Null);
        fx.entry("recovered", Some("C"), &c, json!({"found": "verified"}));
        for st in ["verified", "planned", "journaled", "sampled", "applied"] {
            fx.entry(st, Some("C"), &c, Value::Null);
        }
        fx.settle("kept", Some("C"), &c, "C.1.kept", json!({}));
        fx.entry(
            "drifted",
            Some("C"),
            &c,
            json!({"resource": "checkout-flags", "outcome": "reasserted"}),
        );
        fx.journal.push(record("C", &c, &c_env, json!({})));
        fx.write_journal();
        fx.log.sync().unwrap();

        let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
        assert_eq!(x.summary.commands, 4, "{:#?}", x.commands);
        assert_eq!(
            x.summary.rejections_by_reason,
            BTreeMap::from([
                ("expired".to_string(), 1),
                ("not_yet_valid".to_string(), 1),
                ("too_large".to_string(), 1),
            ])
        );
        assert_eq!(x.summary.provenance.journal_mismatches, 0);
        let c = cmd(&x, "C");
        assert!(c.recovered);
        assert_eq!((c.drifts, x.summary.drifts), (1, 1));
        assert_eq!(c.last_state, "kept", "drift changes no state");
        assert_eq!(c.outcome.as_deref(), Some("kept"));
        assert!(c.issue_to_apply_ms.unwrap() >= 0);
        assert_eq!(x.summary.applied, 1);
        assert_eq!(x.summary.success_rate, Some(1.0));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 90), Some(7));
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50), Some(5));
        assert_eq!(percentile(&v, 90), Some(9));
        assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 90), Some(4));
        assert_eq!(
            ms_between(
                far_past(),
                Timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500))
            ),
            1500
        );
        assert_eq!(
            ms_between(
                Timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500)),
                far_past()
            ),
            -1500
        );
    }
}
