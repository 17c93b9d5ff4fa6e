//! The write-ahead journal's line format, and how a file of lines folds
//! back into records.
//!
//! The journal is append-only JSON lines. A command enters with one `put`
//! (the whole record, envelope included) when its intent is made durable;
//! each later step appends a `step` (the record without its envelope), and
//! each settle a `settle` carrying the signed receipt. `replay` lines keep
//! the ids of commands compaction has dropped, until they expire; `head`
//! lines are checkpoints of the audit log's head. Compaction rewrites the
//! file as `replay` lines, one `put` per live record, and the last `head`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::audit::AuditHead;
use crate::command::payload::Timestamp;
use crate::lifecycle::id::RecordId;
use crate::lifecycle::record::{ActionRecord, CommandRecord, DriftEvent, State, Transition};
use crate::telemetry::TelemetryReport;

/// One journal line, as read back.
#[derive(Debug)]
pub enum Line {
    /// A record, whole: its intent is durable from here on.
    Put {
        rec: Box<CommandRecord>,
        envelope: String,
    },
    /// A record's new state: only what a step can change.
    Step { delta: Box<Delta> },
    /// A record settled: its new state and the receipt signed for it.
    Settle {
        name: String,
        rec: Box<CommandRecord>,
        receipt: Box<RawValue>,
    },
    /// A command id compaction dropped, refused as a replay until `until`.
    Replay { id: RecordId, until: Timestamp },
    /// The audit log's head as of a sync of the log.
    Head { head: AuditHead },
    /// A record refused after its intent was written: forget it.
    Drop { id: RecordId },
}

/// The wire shape of a line: flat, because serde cannot buffer a raw
/// receipt through an internally tagged enum.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLine {
    t: String,
    #[serde(default)]
    rec: Option<Box<CommandRecord>>,
    #[serde(default)]
    delta: Option<Box<Delta>>,
    #[serde(default)]
    envelope: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    receipt: Option<Box<RawValue>>,
    #[serde(default)]
    id: Option<RecordId>,
    #[serde(default)]
    until: Option<Timestamp>,
    #[serde(default)]
    head: Option<AuditHead>,
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not a journal line: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a {0:?} line lacks a field it needs")]
    Incomplete(String),
}

impl Line {
    /// Parses one line (without its newline).
    pub fn parse(bytes: &[u8]) -> Result<Line, LineError> {
        let w: WireLine = serde_json::from_slice(bytes)?;
        let incomplete = || LineError::Incomplete(w.t.clone());
        Ok(match w.t.as_str() {
            "put" => Line::Put {
                rec: w.rec.ok_or_else(incomplete)?,
                envelope: w.envelope.ok_or_else(incomplete)?,
            },
            "step" => Line::Step {
                delta: w.delta.ok_or_else(incomplete)?,
            },
            "settle" => Line::Settle {
                name: w.name.ok_or_else(incomplete)?,
                rec: w.rec.ok_or_else(incomplete)?,
                receipt: w.receipt.ok_or_else(incomplete)?,
            },
            "replay" => Line::Replay {
                id: w.id.ok_or_else(incomplete)?,
                until: w.until.ok_or_else(incomplete)?,
            },
            "head" => Line::Head {
                head: w.head.ok_or_else(incomplete)?,
            },
            "drop" => Line::Drop {
                id: w.id.ok_or_else(incomplete)?,
            },
            _ => return Err(incomplete()),
        })
    }
}

/// One journal line, as written: borrowed, so writing copies nothing.
#[derive(Debug, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum LineRef<'a> {
    Put {
        rec: &'a CommandRecord,
        envelope: &'a str,
    },
    Step {
        delta: DeltaRef<'a>,
    },
    Settle {
        name: &'a str,
        rec: &'a CommandRecord,
        receipt: &'a RawValue,
    },
    Replay {
        id: RecordId,
        until: Timestamp,
    },
    Head {
        head: &'a AuditHead,
    },
    Drop {
        id: RecordId,
    },
}

/// What a step can change in a record: everything but the envelope, the
/// payload, the signers and the guard, which are fixed once it verified,
/// and the timeline's past, to which a step only adds.
#[derive(Debug, Serialize)]
pub struct DeltaRef<'a> {
    pub id: RecordId,
    pub state: State,
    pub transition: Option<&'a Transition>,
    pub actions: &'a [ActionRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<&'a TelemetryReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_until: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub related: Option<&'a str>,
    #[serde(skip_serializing_if = "<[DriftEvent]>::is_empty")]
    pub drifts: &'a [DriftEvent],
    pub receipts: &'a [String],
}

impl<'a> DeltaRef<'a> {
    pub fn of(rec: &'a CommandRecord) -> DeltaRef<'a> {
        DeltaRef {
            id: rec.id,
            state: rec.state,
            transition: rec.timeline.last(),
            actions: &rec.actions,
            telemetry: rec.telemetry.as_ref(),
            hold_until: rec.hold_until,
            message: rec.message.as_deref(),
            related: rec.related.as_deref(),
            drifts: &rec.drifts,
            receipts: &rec.receipts,
        }
    }
}

/// A step, as read back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    pub id: RecordId,
    pub state: State,
    #[serde(default)]
    pub transition: Option<Transition>,
    #[serde(default)]
    pub actions: Vec<ActionRecord>,
    #[serde(default)]
    pub telemetry: Option<TelemetryReport>,
    #[serde(default)]
    pub hold_until: Option<Timestamp>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub related: Option<String>,
    #[serde(default)]
    pub drifts: Vec<DriftEvent>,
    #[serde(default)]
    pub receipts: Vec<String>,
}

impl Delta {
    fn apply(self, rec: &mut CommandRecord) {
        rec.state = self.state;
        if let Some(t) = self.transition {
            let dup = rec
                .timeline
                .last()
                .is_some_and(|l| l.state == t.state && l.at == t.at);
            if !dup {
                rec.timeline.push(t);
            }
        }
        rec.actions = self.actions;
        rec.telemetry = self.telemetry;
        rec.hold_until = self.hold_until;
        rec.message = self.message;
        rec.related = self.related;
        rec.drifts = self.drifts;
        rec.receipts = self.receipts;
    }
}

/// Receipts of one record: (name, signed envelope), oldest first.
pub type Receipts = Vec<(String, Box<RawValue>)>;

/// What folding a journal found.
#[derive(Default)]
pub struct Folded {
    /// Records not yet terminal (in order of arrival).
    pub live: HashMap<RecordId, CommandRecord>,
    /// Records that settled terminally since the last compaction, with
    /// their receipts, oldest first.
    pub settled: Vec<(CommandRecord, Receipts)>,
    /// Receipts of live records, by record.
    pub live_receipts: HashMap<RecordId, Vec<(String, Box<RawValue>)>>,
    /// Command ids still to be refused as replays, with their expiry.
    pub replay: HashMap<u128, Timestamp>,
    /// The last audit checkpoint.
    pub head: Option<AuditHead>,
    /// Lines that did not parse (not counting a torn last line).
    pub skipped: usize,
    /// Length of the complete lines; anything after it is a torn tail.
    pub complete_len: usize,
    /// Bytes of a torn last line.
    pub torn: usize,
}

/// Folds journal bytes: the last line of each record wins.
pub fn fold(bytes: &[u8]) -> Folded {
    let mut out = Folded::default();
    let complete_len = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    out.complete_len = complete_len;
    out.torn = bytes.len() - complete_len;
    // Settled records by id, so a later line for the same id (a kept
    // hotfix reverted later) moves it back.
    let mut settled: HashMap<RecordId, usize> = HashMap::new();
    for line in bytes[..complete_len]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let Ok(line) = Line::parse(line) else {
            out.skipped += 1;
            continue;
        };
        match line {
            Line::Put { rec, envelope } => {
                let mut rec = *rec;
                rec.envelope = envelope.into();
                if let (Some(u), Some(until)) = (rec.id.command(), rec.replay_until) {
                    out.replay.insert(u.0, until);
                }
                out.live.insert(rec.id, rec);
            }
            Line::Step { delta } => {
                if let Some(rec) = out.live.get_mut(&delta.id) {
                    delta.apply(rec);
                }
            }
            Line::Settle { name, rec, receipt } => {
                let mut rec = *rec;
                let id = rec.id;
                if let Some(old) = out.live.remove(&id) {
                    rec.envelope = old.envelope;
                }
                let mut receipts = out.live_receipts.remove(&id).unwrap_or_default();
                if let Some(i) = settled.remove(&id) {
                    // Settled before (kept), settled again (reverted).
                    receipts = std::mem::take(&mut out.settled[i].1);
                }
                receipts.push((name, receipt));
                if let (Some(u), Some(until)) = (id.command(), rec.replay_until) {
                    out.replay.insert(u.0, until);
                }
                if rec.is_terminal() {
                    settled.insert(id, out.settled.len());
                    out.settled.push((rec, receipts));
                } else {
                    out.live_receipts.insert(id, receipts);
                    out.live.insert(id, rec);
                }
            }
            Line::Replay { id, until } => {
                if let Some(u) = id.command() {
                    out.replay.insert(u.0, until);
                }
            }
            Line::Head { head } => out.head = Some(head),
            Line::Drop { id } => {
                out.live.remove(&id);
                out.live_receipts.remove(&id);
                if let Some(u) = id.command() {
                    out.replay.remove(&u.0);
                }
            }
        }
    }
    // A record settled and then moved back to live is no longer settled.
    out.settled
        .retain(|(r, rs)| !rs.is_empty() && !out.live.contains_key(&r.id));
    out
}

/// Serialises one line, newline included.
pub fn encode(line: &LineRef<'_>) -> std::io::Result<Vec<u8>> {
    let mut v = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    v.push(b'\n');
    Ok(v)
}
