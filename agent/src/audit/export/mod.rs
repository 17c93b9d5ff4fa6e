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

mod csv;
mod grouping;
mod report;
mod sources;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::audit::{self, AuditEntry, AuditError};
use crate::command::payload::Timestamp;

pub use csv::CSV_HEADER;
pub use report::build;
pub use sources::Sources;

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

impl Export {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
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
