//! The hash-chained audit log.
//!
//! JSON lines, each carrying the SHA-256 of the line before it, so deleting,
//! reordering or editing an entry breaks the chain that `tourniquet audit
//! verify` checks. It answers "what changed, who asked, what the metrics
//! did" after an incident; secrets never reach it because providers never
//! report secret values.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::sha256_hex;
use crate::payload::Timestamp;

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Timestamp,
    /// A lifecycle state (`applied`, `rolled_back`, …) or an agent event
    /// (`agent_started`, `policy_reloaded`, `recovered`).
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
    /// SHA-256 of the previous line.
    pub prev: String,
}

/// An open audit log.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    last_hash: String,
    next_seq: u64,
}

/// What went wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {why}")]
    Io { path: String, why: String },
    #[error("audit log line {line}: {why}")]
    Broken { line: usize, why: String },
}

fn io_err(path: &Path, e: impl ToString) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

impl AuditLog {
    /// Opens (creating 0600) and finds the chain's tail by reading only the
    /// end of the file, so start-up stays fast however long the log is. A
    /// torn last line (a crash mid-write) is cut off and the cut recorded.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let mut tail_start = len.saturating_sub(256 * 1024);
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(tail_start))
            .map_err(|e| io_err(path, e))?;
        file.read_to_end(&mut buf).map_err(|e| io_err(path, e))?;
        let mut torn = None;
        if !buf.is_empty() && !buf.ends_with(b"\n") {
            let keep = buf
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0);
            torn = Some(buf.len() - keep);
            buf.truncate(keep);
            file.set_len(tail_start + keep as u64)
                .map_err(|e| io_err(path, e))?;
            file.sync_all().map_err(|e| io_err(path, e))?;
        }
        if tail_start > 0 {
            // Skip the partial first line of the window.
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                buf.drain(..=i);
                tail_start += 1;
            }
        }
        let last_line = buf.split(|&b| b == b'\n').rfind(|l| !l.is_empty());
        let (last_hash, next_seq) = match last_line {
            Some(line) => {
                let entry: AuditEntry = serde_json::from_slice(line)
                    .map_err(|e| io_err(path, format!("last entry does not parse: {e}")))?;
                (sha256_hex(line), entry.seq + 1)
            }
            None => (GENESIS.to_string(), 1),
        };
        let _ = tail_start;
        let mut log = AuditLog {
            path: path.to_path_buf(),
            file,
            last_hash,
            next_seq,
        };
        if let Some(bytes) = torn {
            log.append(
                "audit_tail_repaired",
                None,
                None,
                serde_json::json!({"dropped_bytes": bytes}),
                true,
            )?;
        }
        Ok(log)
    }

    /// Appends an entry; `durable` fsyncs it before returning.
    pub fn append(
        &mut self,
        event: &str,
        command: Option<&str>,
        envelope_sha256: Option<&str>,
        detail: Value,
        durable: bool,
    ) -> Result<AuditEntry, AuditError> {
        let entry = AuditEntry {
            seq: self.next_seq,
            at: Timestamp::now(),
            event: event.to_string(),
            command: command.map(str::to_string),
            envelope_sha256: envelope_sha256.map(str::to_string),
            detail,
            prev: self.last_hash.clone(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| io_err(&self.path, e))?;
        let hash = sha256_hex(&line);
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| io_err(&self.path, e))?;
        if durable {
            self.file.sync_data().map_err(|e| io_err(&self.path, e))?;
        }
        self.last_hash = hash;
        self.next_seq += 1;
        Ok(entry)
    }

    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }
}

/// Result of checking a whole log.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub last_hash: String,
}

/// Reads every entry of a log.
pub fn read_entries(path: &Path) -> Result<Vec<AuditEntry>, AuditError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io_err(path, e))?;
        let entry: AuditEntry = serde_json::from_str(&line).map_err(|e| AuditError::Broken {
            line: i + 1,
            why: format!("not an audit entry: {e}"),
        })?;
        out.push(entry);
    }
    Ok(out)
}

/// Checks the chain from the first line to the last.
pub fn verify_chain(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    let mut expected_seq = None;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io_err(path, e))?;
        let entry: AuditEntry = serde_json::from_str(&line).map_err(|e| AuditError::Broken {
            line: i + 1,
            why: format!("not an audit entry: {e}"),
        })?;
        if entry.prev != prev {
            return Err(AuditError::Broken {
                line: i + 1,
                why: "prev does not match the hash of the line before: the log was edited, reordered or cut".into(),
            });
        }
        if let Some(seq) = expected_seq {
            if entry.seq != seq {
                return Err(AuditError::Broken {
                    line: i + 1,
                    why: format!("seq {} where {seq} was expected", entry.seq),
                });
            }
        }
        expected_seq = Some(entry.seq + 1);
        prev = sha256_hex(line.as_bytes());
        count += 1;
    }
    Ok(VerifyReport {
        entries: count,
        last_hash: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_verifies_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        {
            let mut log = AuditLog::open(&path).unwrap();
            for i in 0..5 {
                log.append("test", Some(&format!("c{i}")), None, Value::Null, false)
                    .unwrap();
            }
        }
        // Reopening continues the chain.
        AuditLog::open(&path)
            .unwrap()
            .append("more", None, None, Value::Null, true)
            .unwrap();
        assert_eq!(verify_chain(&path).unwrap().entries, 6);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("c2", "cX", 1)).unwrap();
        assert!(verify_chain(&path).is_err());
    }

    #[test]
    fn torn_tail_is_repaired_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        AuditLog::open(&path)
            .unwrap()
            .append("a", None, None, Value::Null, true)
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"at\":").unwrap();
        drop(f);
        AuditLog::open(&path).unwrap();
        let entries = read_entries(&path).unwrap();
        assert_eq!(entries.last().unwrap().event, "audit_tail_repaired");
        verify_chain(&path).unwrap();
    }
}
