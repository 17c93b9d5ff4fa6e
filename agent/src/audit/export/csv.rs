//! The CSV rendering: one row per command, for a spreadsheet beside the
//! incident doc. Columns only grow at the end, so old sheets keep working.

use std::fmt::Write as _;

use super::Export;
use crate::command::payload::Timestamp;

/// The CSV columns, in order.
pub const CSV_HEADER: &str = "command,claimed_command,envelope_sha256,kind,outcome,last_state,first_seen,issued_at,applied_at,settled_at,time_to_apply_ms,issue_to_apply_ms,reverted_by,reverted_by_command,reason_code,issuer,reason,ticket,message,recovered,drifts,changes";

/// Quotes a CSV field when it needs it (RFC 4180).
pub(super) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Export {
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
}
