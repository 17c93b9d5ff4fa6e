//! The write-ahead journal: one JSON line per state change of a command,
//! each a full [`CommandRecord`], appended and fsynced at the points where
//! a crash would otherwise lose an intent or a before-state.
//!
//! The journal doubles as the durable replay set: a command id is in it, with
//! its `replay_until`, before anything is applied. One append-only file with
//! one fsync per durable step keeps the apply path short; the alternative
//! (a file per command plus a separate replay file) costs several fsyncs and
//! directory syncs per command.
//!
//! At start the journal is folded (last line per id wins) and compacted:
//! only commands that are not terminal, or whose ids must still be refused
//! as replays, are written back.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::payload::Timestamp;
use crate::record::CommandRecord;

pub struct Journal {
    path: PathBuf,
    file: File,
}

/// What a start-up load found.
pub struct Loaded {
    pub journal: Journal,
    /// Every record still of interest, by id.
    pub records: HashMap<String, CommandRecord>,
    /// Lines that did not parse (a torn write), skipped.
    pub skipped: usize,
}

/// Rewrites the journal with only `records`, then swaps it in.
fn compact(
    state_dir: &Path,
    path: &Path,
    records: &HashMap<String, CommandRecord>,
) -> std::io::Result<()> {
    let tmp = state_dir.join(".journal.jsonl.tmp");
    {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut sorted: Vec<&CommandRecord> = records.values().collect();
        sorted.sort_by_key(|r| r.received_at);
        for r in sorted {
            let mut line = serde_json::to_vec(r)?;
            line.push(b'\n');
            out.write_all(&line)?;
        }
        out.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(state_dir)?.sync_all()
}

impl Journal {
    /// Loads, folds and compacts `state_dir/journal.jsonl`.
    pub fn load(state_dir: &Path, now: Timestamp) -> std::io::Result<Loaded> {
        let path = state_dir.join("journal.jsonl");
        let mut records: HashMap<String, CommandRecord> = HashMap::new();
        let mut skipped = 0;
        let mut total_lines = 0;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                total_lines += 1;
                match serde_json::from_str::<CommandRecord>(&line) {
                    Ok(r) => {
                        records.insert(r.id.clone(), r);
                    }
                    Err(_) => skipped += 1,
                }
            }
        }
        // A command is journaled under its envelope hash until it verifies,
        // then under its id: the hash-keyed entry is superseded.
        let verified: HashSet<String> = records
            .values()
            .filter(|r| !r.id.starts_with("sha256:"))
            .map(|r| r.envelope_sha256.clone())
            .collect();
        records
            .retain(|id, r| !(id.starts_with("sha256:") && verified.contains(&r.envelope_sha256)));
        records.retain(|_, r| !r.is_terminal() || r.replay_until.is_some_and(|t| t >= now));
        // Rewrite only when some line is redundant: a start after a clean
        // compaction costs no fsync.
        if total_lines > records.len() {
            compact(state_dir, &path, &records)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Loaded {
            journal: Journal { path, file },
            records,
            skipped,
        })
    }

    /// Appends the record's current state; `durable` fsyncs it.
    pub fn append(&mut self, record: &CommandRecord, durable: bool) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        if durable {
            self.file.sync_data()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
