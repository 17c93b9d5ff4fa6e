//! The hash-chained audit log, in segments.
//!
//! JSON lines, each carrying the SHA-256 of the line before it, so deleting,
//! reordering or editing an entry breaks the chain that `tourniquet audit
//! verify` checks. It answers "what changed, who asked, what the metrics
//! did" after an incident; secrets never reach it because providers never
//! report secret values.
//!
//! The active segment is `state_dir/audit.jsonl`. Past a size it is sealed
//! into `state_dir/audit/<first seq>-<last seq>.jsonl` and a new one begins;
//! the chain simply continues (the new segment's first `prev` is the hash
//! of the sealed segment's last line), so verification spans segments and
//! retention can delete the oldest ones without touching the rest.
//!
//! Cutting the tail cannot be seen from the log alone: the head (seq and
//! hash) is also kept in every signed receipt and in a checkpoint in the
//! journal, and `verify` compares the log against that checkpoint.

pub mod export;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::envelope::sha256_hex;
use crate::command::payload::Timestamp;

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The active segment's file name.
pub const ACTIVE: &str = "audit.jsonl";
/// The folder of sealed segments.
pub const SEGMENTS: &str = "audit";

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

/// Where the chain ends: the last entry's sequence number and line hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// What went wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {path} line {line}: {why}")]
    Broken {
        path: String,
        line: usize,
        why: String,
    },
    #[error("audit log cut: {missing} entries missing after seq {last_seq} (the checkpoint records seq {checkpoint_seq})")]
    Truncated {
        missing: u64,
        last_seq: u64,
        checkpoint_seq: u64,
    },
}

fn io_err(path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Size and age bounds of the log.
#[derive(Debug, Clone)]
pub struct AuditLimits {
    /// The active segment is sealed once it grows past this.
    pub segment_bytes: u64,
    /// Most sealed segments kept.
    pub max_segments: usize,
    /// Sealed segments older than this are deleted.
    pub max_age: Duration,
}

impl Default for AuditLimits {
    fn default() -> Self {
        AuditLimits {
            segment_bytes: 64 * 1024 * 1024,
            max_segments: 16,
            max_age: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// An open audit log.
pub struct AuditLog {
    dir: PathBuf,
    /// Open while in use; released when idle, so the agent holds nothing
    /// open for writing between commands.
    file: Option<Arc<File>>,
    len: u64,
    /// Sequence number of the active segment's first entry.
    first_seq: u64,
    last_hash: String,
    next_seq: u64,
    limits: AuditLimits,
    /// Bumped each time a new active segment is opened.
    generation: u64,
}

fn open_active(path: &Path) -> std::io::Result<File> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().unwrap_or_default();
    tourniquet_providers::SafeDir::open(dir)?.open_append(name, 0o600)
}

impl AuditLog {
    /// Opens (creating 0600) the log in `state_dir` and finds the chain's
    /// tail by reading only the end of the active segment, so start-up stays
    /// fast however long the log is. A torn last line (a crash or a full
    /// disk mid-write) is cut off and the cut recorded as
    /// `torn_tail_repaired`.
    pub fn open(state_dir: &Path, limits: AuditLimits) -> Result<AuditLog, AuditError> {
        let path = state_dir.join(ACTIVE);
        let mut file = open_active(&path).map_err(|e| io_err(&path, e))?;
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        let tail_start = len.saturating_sub(256 * 1024);
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(tail_start))
            .map_err(|e| io_err(&path, e))?;
        file.read_to_end(&mut buf).map_err(|e| io_err(&path, e))?;
        let mut torn = None;
        let mut len = len;
        if !buf.is_empty() && !buf.ends_with(b"\n") {
            let keep = buf
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0);
            torn = Some(buf.len() - keep);
            buf.truncate(keep);
            len = tail_start + keep as u64;
            file.set_len(len).map_err(|e| io_err(&path, e))?;
            file.sync_all().map_err(|e| io_err(&path, e))?;
        }
        if tail_start > 0 {
            // Skip the partial first line of the window.
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                buf.drain(..=i);
            }
        }
        let last_line = buf.split(|&b| b == b'\n').rfind(|l| !l.is_empty());
        let (last_hash, next_seq) = match last_line {
            Some(line) => {
                let entry: AuditEntry =
                    serde_json::from_slice(line).map_err(|e| AuditError::Broken {
                        path: path.display().to_string(),
                        line: 0,
                        why: format!("the last entry does not parse: {e}"),
                    })?;
                (sha256_hex(line), entry.seq.saturating_add(1))
            }
            // An empty active segment continues the newest sealed one.
            None => match last_sealed_head(state_dir)? {
                Some(head) => (head.hash, head.seq.saturating_add(1)),
                None => (GENESIS.to_string(), 1),
            },
        };
        let first_seq = if len == 0 {
            next_seq
        } else {
            first_entry(&path)?.map(|e| e.seq).unwrap_or(next_seq)
        };
        let mut log = AuditLog {
            dir: state_dir.to_path_buf(),
            file: Some(Arc::new(file)),
            len,
            first_seq,
            last_hash,
            next_seq,
            limits,
            generation: 0,
        };
        if let Some(bytes) = torn {
            log.append(
                "torn_tail_repaired",
                None,
                None,
                serde_json::json!({"dropped_bytes": bytes, "segment": ACTIVE}),
            )?;
            log.sync()?;
        }
        Ok(log)
    }

    /// Appends an entry (not synced; see [`AuditLog::sync`]). A failed write
    /// is cut back off, so a full disk never leaves a torn line that would
    /// break the chain; the chain does not advance.
    pub fn append(
        &mut self,
        event: &str,
        command: Option<&str>,
        envelope_sha256: Option<&str>,
        detail: Value,
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
        let path = self.dir.join(ACTIVE);
        let mut line =
            serde_json::to_vec(&entry).map_err(|e| io_err(&path, std::io::Error::other(e)))?;
        let hash = sha256_hex(&line);
        line.push(b'\n');
        let file = self.file()?;
        if let Err(e) = (&*file).write_all(&line) {
            // Best effort: if even the cut fails, the next start repairs it.
            let _ = file.set_len(self.len);
            return Err(io_err(&path, e));
        }
        self.len += line.len() as u64;
        self.last_hash = hash;
        self.next_seq += 1;
        if self.len >= self.limits.segment_bytes {
            self.rotate()?;
        }
        Ok(entry)
    }

    /// The chain's head: the last entry written (synced or not).
    pub fn head(&self) -> AuditHead {
        AuditHead {
            seq: self.next_seq.saturating_sub(1),
            hash: self.last_hash.clone(),
        }
    }

    /// Changes whenever rotation opens a new active segment.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The active segment, opened again if it was released.
    fn file(&mut self) -> Result<Arc<File>, AuditError> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let path = self.dir.join(ACTIVE);
        let f = Arc::new(open_active(&path).map_err(|e| io_err(&path, e))?);
        self.file = Some(f.clone());
        Ok(f)
    }

    /// Closes the active segment until the next write.
    pub fn release(&mut self) {
        self.file = None;
    }

    /// A handle that syncs the active segment, usable off the lock.
    pub fn sync_handle(&mut self) -> Result<Arc<File>, AuditError> {
        self.file()
    }

    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.file()?
            .sync_data()
            .map_err(|e| io_err(&self.dir.join(ACTIVE), e))
    }

    /// Seals the active segment into `audit/` and starts a new one; then
    /// applies retention to the sealed ones.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let seg_dir = self.dir.join(SEGMENTS);
        crate::state::create_private_dir(&seg_dir).map_err(|e| io_err(&seg_dir, e))?;
        let active = self.dir.join(ACTIVE);
        self.sync()?;
        let name = format!(
            "{:020}-{:020}.jsonl",
            self.first_seq,
            self.next_seq.saturating_sub(1)
        );
        self.file = None;
        fs::rename(&active, seg_dir.join(&name)).map_err(|e| io_err(&active, e))?;
        File::open(&seg_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&seg_dir, e))?;
        self.file = Some(Arc::new(
            open_active(&active).map_err(|e| io_err(&active, e))?,
        ));
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.dir, e))?;
        self.len = 0;
        self.generation += 1;
        self.first_seq = self.next_seq;
        self.prune(SystemTime::now());
        Ok(())
    }

    /// Deletes sealed segments beyond the count or older than the age
    /// limit, oldest first. The active segment is never deleted.
    pub fn prune(&self, now: SystemTime) -> usize {
        let mut segments = sealed_segments(&self.dir).unwrap_or_default();
        let mut removed = 0;
        while let Some(oldest) = segments.first() {
            let too_many = segments.len() > self.limits.max_segments;
            let too_old = fs::metadata(&oldest.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > self.limits.max_age);
            if !(too_many || too_old) {
                break;
            }
            if fs::remove_file(&oldest.path).is_err() {
                break;
            }
            removed += 1;
            segments.remove(0);
        }
        removed
    }
}

/// A sealed segment on disk.
#[derive(Debug, Clone)]
pub struct Segment {
    pub path: PathBuf,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Sealed segments, oldest first.
pub fn sealed_segments(state_dir: &Path) -> std::io::Result<Vec<Segment>> {
    let dir = state_dir.join(SEGMENTS);
    let mut out = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        let Some((a, b)) = stem.split_once('-') else {
            continue;
        };
        let (Ok(first_seq), Ok(last_seq)) = (a.parse(), b.parse()) else {
            continue;
        };
        out.push(Segment {
            path: e.path(),
            first_seq,
            last_seq,
        });
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

fn first_entry(path: &Path) -> Result<Option<AuditEntry>, AuditError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut line = String::new();
    BufReader::new(f)
        .read_line(&mut line)
        .map_err(|e| io_err(path, e))?;
    Ok(serde_json::from_str(line.trim_end()).ok())
}

/// The head of the newest sealed segment, read from its last line.
fn last_sealed_head(state_dir: &Path) -> Result<Option<AuditHead>, AuditError> {
    let segments = sealed_segments(state_dir).map_err(|e| io_err(state_dir, e))?;
    let Some(last) = segments.last() else {
        return Ok(None);
    };
    let text = fs::read(&last.path).map_err(|e| io_err(&last.path, e))?;
    let Some(line) = text.split(|&b| b == b'\n').rfind(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let entry: AuditEntry = serde_json::from_slice(line).map_err(|e| AuditError::Broken {
        path: last.path.display().to_string(),
        line: 0,
        why: format!("the last entry does not parse: {e}"),
    })?;
    Ok(Some(AuditHead {
        seq: entry.seq,
        hash: sha256_hex(line),
    }))
}

/// Result of checking a whole log.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    pub segments: usize,
    /// The first remaining entry continues a chain whose start retention
    /// deleted.
    pub pruned_before: bool,
    /// The checkpoint the log was compared with, if any.
    pub checkpoint: Option<AuditHead>,
}

/// Walks every segment, oldest first, checking the chain and handing each
/// entry to `visit`. A last line still being written (no newline yet) is
/// not read. `checkpoint`, when given, must be at or before the end.
pub fn walk_chain(
    state_dir: &Path,
    checkpoint: Option<&AuditHead>,
    mut visit: impl FnMut(&AuditEntry),
) -> Result<VerifyReport, AuditError> {
    let mut files: Vec<PathBuf> = sealed_segments(state_dir)
        .map_err(|e| io_err(state_dir, e))?
        .into_iter()
        .map(|s| s.path)
        .collect();
    let active = state_dir.join(ACTIVE);
    let segments = files.len();
    files.push(active.clone());
    let mut prev: Option<String> = None;
    let mut expected_seq: Option<u64> = None;
    let mut report = VerifyReport {
        entries: 0,
        first_seq: 0,
        last_seq: 0,
        last_hash: GENESIS.to_string(),
        segments: segments + 1,
        pruned_before: false,
        checkpoint: checkpoint.cloned(),
    };
    for path in &files {
        // The agent always keeps an active segment: a missing one is an
        // error, never an empty log.
        let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
        let complete = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => &bytes[..=i],
            None => &bytes[..0],
        };
        for (i, line) in complete
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
        {
            let broken = |why: String| AuditError::Broken {
                path: path.display().to_string(),
                line: i + 1,
                why,
            };
            let entry: AuditEntry = serde_json::from_slice(line)
                .map_err(|e| broken(format!("not an audit entry: {e}")))?;
            match &prev {
                None => {
                    if entry.prev != GENESIS {
                        if entry.seq <= 1 {
                            return Err(broken("the first entry does not start the chain".into()));
                        }
                        report.pruned_before = true;
                    }
                    report.first_seq = entry.seq;
                }
                Some(p) if &entry.prev != p => {
                    return Err(broken(
                        "prev does not match the hash of the entry before: the log was edited, reordered or cut".into(),
                    ))
                }
                Some(_) => {}
            }
            if let Some(seq) = expected_seq {
                if entry.seq != seq {
                    return Err(broken(format!(
                        "seq {} where {seq} was expected",
                        entry.seq
                    )));
                }
            }
            expected_seq = Some(entry.seq.saturating_add(1));
            let hash = sha256_hex(line);
            visit(&entry);
            report.entries += 1;
            report.last_seq = entry.seq;
            report.last_hash = hash.clone();
            prev = Some(hash);
        }
    }
    if let Some(cp) = checkpoint {
        if cp.seq > report.last_seq {
            return Err(AuditError::Truncated {
                missing: cp.seq - report.last_seq,
                last_seq: report.last_seq,
                checkpoint_seq: cp.seq,
            });
        }
    }
    Ok(report)
}

/// Checks the chain of the log in `state_dir` against `checkpoint`.
pub fn verify(
    state_dir: &Path,
    checkpoint: Option<&AuditHead>,
) -> Result<VerifyReport, AuditError> {
    walk_chain(state_dir, checkpoint, |_| {})
}

/// Every entry of every segment, checked.
pub fn read_verified(
    state_dir: &Path,
    checkpoint: Option<&AuditHead>,
) -> Result<(Vec<AuditEntry>, VerifyReport), AuditError> {
    let mut entries = Vec::new();
    let report = walk_chain(state_dir, checkpoint, |e| entries.push(e.clone()))?;
    Ok((entries, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn limits(segment_bytes: u64) -> AuditLimits {
        AuditLimits {
            segment_bytes,
            max_segments: 100,
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn chain_verifies_across_segments_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = AuditLog::open(dir.path(), limits(600)).unwrap();
            for i in 0..20 {
                log.append("test", Some(&format!("c{i}")), None, Value::Null)
                    .unwrap();
            }
        }
        // Reopening continues the chain.
        let mut log = AuditLog::open(dir.path(), limits(600)).unwrap();
        log.append("more", None, None, Value::Null).unwrap();
        let head = log.head();
        drop(log);
        let report = verify(dir.path(), Some(&head)).unwrap();
        assert_eq!(report.entries, 21);
        assert!(report.segments > 2, "{report:?}");
        let seg = sealed_segments(dir.path()).unwrap()[1].path.clone();
        let text = fs::read_to_string(&seg).unwrap();
        let edited = text.replacen("\"test\"", "\"tesT\"", 1);
        assert_ne!(text, edited);
        fs::write(&seg, edited).unwrap();
        assert!(verify(dir.path(), None).is_err());
    }

    #[test]
    fn a_cut_tail_is_caught_by_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), limits(1 << 30)).unwrap();
        for _ in 0..10 {
            log.append("a", None, None, Value::Null).unwrap();
        }
        let head = log.head();
        drop(log);
        let path = dir.path().join(ACTIVE);
        let text = fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.lines().take(4).collect();
        fs::write(&path, kept.join("\n") + "\n").unwrap();
        match verify(dir.path(), Some(&head)) {
            Err(AuditError::Truncated { missing, .. }) => assert_eq!(missing, 6),
            other => panic!("{other:?}"),
        }
        assert_eq!(verify(dir.path(), None).unwrap().entries, 4);
    }

    #[test]
    fn torn_tail_is_repaired_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        AuditLog::open(dir.path(), limits(1 << 30))
            .unwrap()
            .append("a", None, None, Value::Null)
            .unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(ACTIVE))
            .unwrap();
        f.write_all(b"{\"seq\":2,\"at\":").unwrap();
        drop(f);
        AuditLog::open(dir.path(), limits(1 << 30)).unwrap();
        let (entries, _) = read_verified(dir.path(), None).unwrap();
        assert_eq!(entries.last().unwrap().event, "torn_tail_repaired");
    }

    #[test]
    fn retention_deletes_the_oldest_segments_and_the_rest_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = limits(400);
        l.max_segments = 2;
        let mut log = AuditLog::open(dir.path(), l).unwrap();
        for _ in 0..40 {
            log.append("x", None, None, Value::Null).unwrap();
        }
        assert!(sealed_segments(dir.path()).unwrap().len() <= 2);
        let report = verify(dir.path(), Some(&log.head())).unwrap();
        assert!(report.pruned_before);
        assert_eq!(report.last_seq, 40);
    }
}
