//! The Store: the only writer of the state dir, and the one place that
//! decides what is durable when (DESIGN §5, "Durability").
//!
//! What it holds:
//! - the journal (`journal.jsonl`): intents, steps and settles of commands
//!   in flight, the replay set, audit checkpoints; compacted while running
//!   once dead lines outweigh live ones;
//! - the audit log (`audit.jsonl` and `audit/`), rotated into segments;
//! - the receipt archive (`receipts/`), filled by compaction.
//!
//! What it keeps in memory: records not yet terminal, a bounded cache of
//! recently settled ones with their receipts, and the replay set as ids
//! and expiry only. Anything older is read from disk on request.
//!
//! When it syncs (at most five syncs per unguarded flip, counting the
//! provider's two):
//! - an intent: the journal, before anything changes;
//! - a settle: the audit log, then a checkpoint of its head into the
//!   journal, then the journal; settles that arrive together share one
//!   pair of syncs (group commit).
//!
//! Every other step is written but not synced: after a crash, recovery
//! works from the last durable intent or settle.
//!
//! It fails closed: a write that fails is cut back off (no torn line), the
//! store reports itself unhealthy, and the caller refuses or undoes what
//! it could not record. A probe every second heals it once the disk
//! accepts writes again.

pub mod journal;
pub mod receipts;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use serde_json::Value;

use crate::audit::{AuditError, AuditHead, AuditLimits, AuditLog};
use crate::command::payload::Timestamp;
use crate::lifecycle::id::RecordId;
use crate::lifecycle::record::CommandRecord;

use journal::{Folded, Line, LineRef};
use receipts::{ReceiptArchive, ReceiptLimits};

pub use receipts::Archived;

/// The journal's file name.
pub const JOURNAL: &str = "journal.jsonl";

/// Free space below which the state dir counts as full.
const MIN_FREE_BYTES: u64 = 64 * 1024;

/// Most settled records kept in memory.
pub const RECENT_RECORDS: usize = 128;

/// The journal is compacted once it is this big and twice its size after
/// the last compaction.
const COMPACT_MIN_BYTES: u64 = 1024 * 1024;

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl StoreError {
    fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The state dir cannot be written now; `why` names the first failure
/// (or the full or read-only filesystem) since it last could.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct Unhealthy {
    pub why: String,
}

/// Retention and size bounds of everything the store keeps.
#[derive(Debug, Clone, Default)]
pub struct StoreLimits {
    pub audit: AuditLimits,
    pub receipts: ReceiptLimits,
}

/// What opening the store found, for the audit log and the operator.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub live: usize,
    pub skipped_lines: usize,
    pub torn_bytes: usize,
    pub compacted: bool,
}

struct JournalFile {
    /// Open while in use; released when idle (see [`Store::release_idle`]).
    file: Option<Arc<File>>,
    len: u64,
    compact_at: u64,
}

struct Inner {
    journal: JournalFile,
    audit: AuditLog,
    archive: ReceiptArchive,
    /// Records refused after their intent was written: dropped from the
    /// journal by the next line written.
    tombstones: Vec<RecordId>,
    last_write: std::time::Instant,
    live: HashMap<RecordId, CommandRecord>,
    /// Receipts (name, signed envelope) of records in memory.
    receipts: HashMap<RecordId, Vec<(String, Box<RawValue>)>>,
    recent: HashMap<RecordId, CommandRecord>,
    recent_order: VecDeque<RecordId>,
    replay: HashMap<u128, u64>,
    checkpoint: Option<AuditHead>,
}

/// The state dir, open.
pub struct Store {
    dir: PathBuf,
    inner: Mutex<Inner>,
    sync_lock: tokio::sync::Mutex<()>,
    journal_written: AtomicU64,
    journal_synced: AtomicU64,
    audit_written: AtomicU64,
    audit_synced: AtomicU64,
    unhealthy: Mutex<Option<String>>,
    fail_writes: AtomicBool,
    syncs: AtomicU64,
    scan_lock: Mutex<()>,
}

/// Opens a state-dir file for appending through the directory handle:
/// never through a symlink planted at its name.
fn open_append(dir: &Path, name: &str) -> std::io::Result<File> {
    crate::state::open_private_dir(dir)?.open_append(std::ffi::OsStr::new(name), 0o600)
}

fn unix(t: Timestamp) -> u64 {
    t.unix()
}

fn injected() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::ENOSPC)
}

impl Store {
    /// Opens the state dir: folds the journal, opens the audit log and the
    /// receipt archive, cuts torn tails, compacts if worthwhile.
    pub fn open(
        dir: &Path,
        limits: StoreLimits,
        now: Timestamp,
    ) -> Result<(Store, OpenReport), StoreError> {
        let path = dir.join(JOURNAL);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let folded = journal::fold(&bytes);
        let file = open_append(dir, JOURNAL).map_err(|e| StoreError::io(&path, e))?;
        if folded.torn > 0 {
            file.set_len(folded.complete_len as u64)
                .and_then(|_| file.sync_all())
                .map_err(|e| StoreError::io(&path, e))?;
        }
        let mut audit = AuditLog::open(dir, limits.audit.clone())?;
        if folded.torn > 0 {
            audit.append(
                "torn_tail_repaired",
                None,
                None,
                serde_json::json!({"dropped_bytes": folded.torn, "segment": JOURNAL}),
            )?;
        }
        if folded.skipped > 0 {
            audit.append(
                "journal_lines_skipped",
                None,
                None,
                serde_json::json!({"lines": folded.skipped}),
            )?;
        }
        let archive = ReceiptArchive::open(dir, limits.receipts.clone())
            .map_err(|e| StoreError::io(&dir.join("receipts"), e))?;
        let Folded {
            live,
            settled,
            live_receipts,
            replay,
            head,
            skipped,
            torn,
            complete_len,
        } = folded;
        let mut report = OpenReport {
            live: live.len(),
            skipped_lines: skipped,
            torn_bytes: torn,
            compacted: false,
        };
        let now_s = unix(now);
        let mut inner = Inner {
            journal: JournalFile {
                file: Some(Arc::new(file)),
                len: complete_len as u64,
                compact_at: COMPACT_MIN_BYTES,
            },
            audit,
            archive,
            tombstones: Vec::new(),
            last_write: std::time::Instant::now(),
            live,
            receipts: live_receipts,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            replay: replay
                .into_iter()
                .map(|(k, v)| (k, unix(v)))
                .filter(|(_, until)| *until >= now_s)
                .collect(),
            checkpoint: head,
        };
        for (rec, receipts) in settled {
            let id = rec.id;
            inner.receipts.insert(id, receipts);
            remember_recent(&mut inner, rec);
            let _ = id;
        }
        let store = Store {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
            sync_lock: tokio::sync::Mutex::new(()),
            journal_written: AtomicU64::new(0),
            journal_synced: AtomicU64::new(0),
            audit_written: AtomicU64::new(1),
            audit_synced: AtomicU64::new(0),
            unhealthy: Mutex::new(None),
            fail_writes: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            scan_lock: Mutex::new(()),
        };
        {
            let mut inner = store.lock();
            if inner.journal.len >= COMPACT_MIN_BYTES || skipped > 0 || torn > 0 {
                store.compact(&mut inner)?;
                report.compacted = true;
            }
        }
        Ok((store, report))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Debug fault hook: from now on every write fails as if the disk were
    /// full.
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }

    /// Syncs done so far (for benchmarks and tests).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// `Err(why)` while the state dir cannot be written.
    pub fn health(&self) -> Result<(), Unhealthy> {
        match &*self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(why) => Err(Unhealthy { why: why.clone() }),
        }
    }

    fn mark_unhealthy(&self, why: &dyn std::fmt::Display) {
        let mut u = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        if u.is_none() {
            tracing::error!(error = %why, "the state dir cannot be written; refusing commands until it can");
        }
        *u = Some(why.to_string());
    }

    /// Why the state dir's filesystem cannot take writes now (read-only,
    /// or nearly full), from one `statvfs`: cheap enough to ask every
    /// second, so an idle agent notices before a command arrives.
    fn filesystem_refuses(&self) -> Option<String> {
        let path = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a NUL-terminated string and `st` a valid out-pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Some(format!(
                "{}: {}",
                self.dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        if st.f_flag & libc::ST_RDONLY != 0 {
            return Some(format!(
                "{} is on a read-only filesystem",
                self.dir.display()
            ));
        }
        #[allow(clippy::useless_conversion)]
        let free = u64::from(st.f_bavail).saturating_mul(st.f_frsize as u64);
        if free < MIN_FREE_BYTES {
            return Some(format!(
                "{} has {free} bytes free; Tourniquet needs at least {MIN_FREE_BYTES} to record commands",
                self.dir.display()
            ));
        }
        None
    }

    /// Marks the store unhealthy when its filesystem is read-only or full.
    pub fn check_space(&self) {
        if let Some(why) = self.filesystem_refuses() {
            self.mark_unhealthy(&why);
        }
    }

    /// Tries a small synced write in the state dir; clears the unhealthy
    /// mark when it works. Returns whether the store is healthy.
    pub fn heal(&self) -> bool {
        if self.health().is_ok() {
            return true;
        }
        if self.fail_writes.load(Ordering::SeqCst) || self.filesystem_refuses().is_some() {
            return false;
        }
        let probe = self.dir.join(format!(
            ".probe.{:016x}",
            rand_core::RngCore::next_u64(&mut rand_core::OsRng)
        ));
        let ok = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&probe)?;
            f.write_all(&[0u8; 4096])?;
            f.sync_all()
        })();
        let _ = fs::remove_file(&probe);
        if ok.is_ok() {
            *self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!("the state dir accepts writes again");
        }
        ok.is_ok()
    }

    fn append_line(&self, inner: &mut Inner, line: &LineRef<'_>) -> Result<(), StoreError> {
        let path = self.dir.join(JOURNAL);
        if self.fail_writes.load(Ordering::SeqCst) {
            let e = StoreError::io(&path, injected());
            self.mark_unhealthy(&e);
            return Err(e);
        }
        let mut bytes = Vec::new();
        for id in &inner.tombstones {
            bytes.extend(
                journal::encode(&LineRef::Drop { id: *id })
                    .map_err(|e| StoreError::io(&path, e))?,
            );
        }
        bytes.extend(journal::encode(line).map_err(|e| StoreError::io(&path, e))?);
        let file = match self.journal_file(inner) {
            Ok(f) => f,
            Err(e) => {
                self.mark_unhealthy(&e);
                return Err(e);
            }
        };
        if let Err(e) = (&*file).write_all(&bytes) {
            let _ = file.set_len(inner.journal.len);
            let e = StoreError::io(&path, e);
            self.mark_unhealthy(&e);
            return Err(e);
        }
        inner.tombstones.clear();
        inner.last_write = std::time::Instant::now();
        inner.journal.len += bytes.len() as u64;
        self.journal_written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn journal_file(&self, inner: &mut Inner) -> Result<Arc<File>, StoreError> {
        if let Some(f) = &inner.journal.file {
            return Ok(f.clone());
        }
        let f = Arc::new(
            open_append(&self.dir, JOURNAL)
                .map_err(|e| StoreError::io(&self.dir.join(JOURNAL), e))?,
        );
        inner.journal.file = Some(f.clone());
        Ok(f)
    }

    /// Closes the journal and the audit log when nothing was written for
    /// a second: an idle agent holds no file open for writing, so its
    /// state dir can be remounted read-only (and every write after that
    /// fails closed).
    pub fn release_idle(&self) {
        let mut inner = self.lock();
        if inner.last_write.elapsed() >= Duration::from_secs(1) {
            inner.journal.file = None;
            inner.audit.release();
        }
    }

    fn append_audit(
        &self,
        inner: &mut Inner,
        event: &str,
        command: Option<&str>,
        envelope_sha256: Option<&str>,
        detail: Value,
    ) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            let e = StoreError::io(&self.dir.join(crate::audit::ACTIVE), injected());
            self.mark_unhealthy(&e);
            return Err(e);
        }
        match inner.audit.append(event, command, envelope_sha256, detail) {
            Ok(_) => {
                self.audit_written.fetch_add(1, Ordering::SeqCst);
                inner.last_write = std::time::Instant::now();
                Ok(())
            }
            Err(e) => {
                self.mark_unhealthy(&e);
                Err(e.into())
            }
        }
    }

    /// Appends an agent-level event to the audit log (not synced).
    pub fn audit_event(&self, event: &str, detail: Value) -> Result<(), StoreError> {
        let mut inner = self.lock();
        self.append_audit(&mut inner, event, None, None, detail)
    }

    /// Appends an event about an envelope no trusted key vouched for.
    pub fn audit_envelope(
        &self,
        event: &str,
        envelope_sha256: &str,
        detail: Value,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        self.append_audit(&mut inner, event, None, Some(envelope_sha256), detail)
    }

    /// Appends a command's event to the audit log (not synced).
    pub fn audit_command(
        &self,
        event: &str,
        rec: &CommandRecord,
        detail: Value,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        self.append_record_audit(&mut inner, event, rec, detail)
    }

    /// An audit entry about a record: its command id (once it has one) and
    /// its envelope hash.
    fn append_record_audit(
        &self,
        inner: &mut Inner,
        event: &str,
        rec: &CommandRecord,
        detail: Value,
    ) -> Result<(), StoreError> {
        let command = rec.id.command().map(|u| u.to_string());
        self.append_audit(
            inner,
            event,
            command.as_deref(),
            Some(&rec.envelope_sha256),
            detail,
        )
    }

    /// The audit log's head (written, not necessarily synced).
    pub fn audit_head(&self) -> AuditHead {
        self.lock().audit.head()
    }

    /// Records a command's durable intent: the whole record, its envelope
    /// and its replay entry. Follow with [`Store::sync_journal`].
    pub fn write_intent(&self, rec: &CommandRecord, audit: Value) -> Result<(), StoreError> {
        let mut inner = self.lock();
        self.append_line(
            &mut inner,
            &LineRef::Put {
                rec,
                envelope: &rec.envelope,
            },
        )?;
        // The audit entry follows the journal line: a failure here leaves
        // a durable intent, which recovery finishes.
        let _ = self.append_record_audit(&mut inner, rec.state.as_str(), rec, audit);
        if let (Some(u), Some(until)) = (rec.id.command(), rec.replay_until) {
            inner.replay.insert(u.0, unix(until));
        }
        inner.live.insert(rec.id, rec.clone());
        Ok(())
    }

    /// Records a step of a live record (not synced).
    pub fn write_step(&self, rec: &CommandRecord, audit: Value) -> Result<(), StoreError> {
        let mut inner = self.lock();
        self.append_step(&mut inner, rec)?;
        self.append_record_audit(&mut inner, rec.state.as_str(), rec, audit)
    }

    /// Writes a live record's step line; a record not journaled yet has none.
    fn append_step(&self, inner: &mut Inner, rec: &CommandRecord) -> Result<(), StoreError> {
        if inner.live.contains_key(&rec.id) {
            self.append_line(
                inner,
                &LineRef::Step {
                    delta: journal::DeltaRef::of(rec),
                },
            )?;
            inner.live.insert(rec.id, rec.clone());
        }
        Ok(())
    }

    /// Records a settle and its signed receipt. Follow with
    /// [`Store::sync_all`] for a durable settle; a rejection is left to the
    /// next sync.
    pub fn write_settle(
        &self,
        rec: &CommandRecord,
        name: &str,
        receipt: &RawValue,
        audit: Value,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        self.append_line(&mut inner, &LineRef::Settle { name, rec, receipt })?;
        self.append_record_audit(&mut inner, rec.state.as_str(), rec, audit)?;
        if let (Some(u), Some(until)) = (rec.id.command(), rec.replay_until) {
            inner.replay.insert(u.0, unix(until));
        }
        inner
            .receipts
            .entry(rec.id)
            .or_default()
            .push((name.to_string(), receipt.to_owned()));
        if rec.is_terminal() {
            let mut done = rec.clone();
            if let Some(live) = inner.live.remove(&rec.id) {
                done.envelope = live.envelope;
            }
            remember_recent(&mut inner, done);
        } else {
            inner.live.insert(rec.id, rec.clone());
        }
        if inner.journal.len >= inner.journal.compact_at {
            if let Err(e) = self.compact(&mut inner) {
                tracing::error!(error = %e, "journal compaction failed; will retry");
                self.mark_unhealthy(&e);
            }
        }
        Ok(())
    }

    /// Records a live record's new state without an audit entry (the
    /// caller wrote its own).
    pub fn write_record(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        self.append_step(&mut inner, rec)
    }

    /// Shows a record's state in memory without writing it: a settle the
    /// disk refused, until it can be written.
    pub fn show(&self, rec: CommandRecord) {
        let mut inner = self.lock();
        if rec.is_terminal() {
            if let Some(live) = inner.live.remove(&rec.id) {
                let mut rec = rec;
                rec.envelope = live.envelope;
                remember_recent(&mut inner, rec);
            } else {
                remember_recent(&mut inner, rec);
            }
        } else {
            inner.live.insert(rec.id, rec);
        }
    }

    /// Forgets a live record whose intent was written but could not be
    /// made durable (the command was refused).
    pub fn forget(&self, id: &RecordId) {
        let mut inner = self.lock();
        inner.live.remove(id);
        if let Some(u) = id.command() {
            inner.replay.remove(&u.0);
        }
        inner.tombstones.push(*id);
    }

    /// Makes every journal line written so far durable.
    pub async fn sync_journal(&self) -> Result<(), StoreError> {
        let want = self.journal_written.load(Ordering::SeqCst);
        let _g = self.sync_lock.lock().await;
        if self.journal_synced.load(Ordering::SeqCst) >= want {
            return Ok(());
        }
        self.sync_journal_locked().await
    }

    async fn sync_journal_locked(&self) -> Result<(), StoreError> {
        let (file, upto) = {
            let mut inner = self.lock();
            let upto = self.journal_written.load(Ordering::SeqCst);
            match self.journal_file(&mut inner) {
                Ok(f) => (f, upto),
                Err(e) => {
                    self.mark_unhealthy(&e);
                    return Err(e);
                }
            }
        };
        self.blocking_sync(file, &self.dir.join(JOURNAL)).await?;
        self.journal_synced.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    async fn blocking_sync(&self, file: Arc<File>, path: &Path) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            let e = StoreError::io(path, injected());
            self.mark_unhealthy(&e);
            return Err(e);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let result = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        result.map_err(|e| {
            let e = StoreError::io(path, e);
            self.mark_unhealthy(&e);
            e
        })
    }

    /// Makes the audit log durable, checkpoints its head into the journal,
    /// and makes the journal durable: what a settle needs.
    pub async fn sync_all(&self) -> Result<(), StoreError> {
        let want_j = self.journal_written.load(Ordering::SeqCst);
        let want_a = self.audit_written.load(Ordering::SeqCst);
        let _g = self.sync_lock.lock().await;
        if self.journal_synced.load(Ordering::SeqCst) >= want_j
            && self.audit_synced.load(Ordering::SeqCst) >= want_a
        {
            return Ok(());
        }
        let (file, head, upto) = {
            let mut inner = self.lock();
            let upto = self.audit_written.load(Ordering::SeqCst);
            let head = inner.audit.head();
            match inner.audit.sync_handle() {
                Ok(f) => (f, head, upto),
                Err(e) => {
                    self.mark_unhealthy(&e);
                    return Err(e.into());
                }
            }
        };
        self.blocking_sync(file, &self.dir.join(crate::audit::ACTIVE))
            .await?;
        self.audit_synced.fetch_max(upto, Ordering::SeqCst);
        {
            let mut inner = self.lock();
            if inner.checkpoint.as_ref() != Some(&head) {
                self.append_line(&mut inner, &LineRef::Head { head: &head })?;
                inner.checkpoint = Some(head);
            }
        }
        self.sync_journal_locked().await
    }

    /// Rewrites the journal as replay ids, live records and the last
    /// checkpoint, after moving every receipt it held into the archive.
    fn compact(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let path = self.dir.join(JOURNAL);
        // Read line by line, and parse only settle lines: the journal can
        // be megabytes, and compaction must not hold all of it at once.
        let reader = std::io::BufReader::new(
            crate::state::open_private_dir(&self.dir)
                .and_then(|d| d.open_read(std::ffi::OsStr::new(JOURNAL)))
                .map_err(|e| StoreError::io(&path, e))?,
        );
        let mut moved: Vec<(String, String, Box<RawValue>)> = Vec::new();
        for line in std::io::BufRead::split(reader, b'\n') {
            let line = line.map_err(|e| StoreError::io(&path, e))?;
            if !line.starts_with(b"{\"t\":\"settle\"") {
                continue;
            }
            if let Ok(Line::Settle { name, rec, receipt }) = Line::parse(&line) {
                let id = rec
                    .id
                    .command()
                    .map(|u| u.to_string())
                    .or_else(|| rec.command_id())
                    .unwrap_or_else(|| rec.id.to_string());
                moved.push((name, id, receipt));
            }
        }
        let items: Vec<(&str, &str, &RawValue)> = moved
            .iter()
            .map(|(n, i, r)| (n.as_str(), i.as_str(), r.as_ref()))
            .collect();
        inner
            .archive
            .append(&items)
            .map_err(|e| StoreError::io(&self.dir.join("receipts"), e))?;

        let now = unix(Timestamp::now());
        inner.replay.retain(|_, until| *until >= now);
        let mut out = Vec::new();
        let live_ids: std::collections::HashSet<u128> = inner
            .live
            .keys()
            .filter_map(|id| id.command())
            .map(|u| u.0)
            .collect();
        for (id, until) in &inner.replay {
            if live_ids.contains(id) {
                continue;
            }
            let until = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(*until));
            out.extend(
                journal::encode(&LineRef::Replay {
                    id: RecordId::Command(ulid::Ulid(*id)),
                    until,
                })
                .map_err(|e| StoreError::io(&path, e))?,
            );
        }
        let mut live: Vec<&CommandRecord> = inner.live.values().collect();
        live.sort_by_key(|r| r.received_at);
        for rec in live {
            out.extend(
                journal::encode(&LineRef::Put {
                    rec,
                    envelope: &rec.envelope,
                })
                .map_err(|e| StoreError::io(&path, e))?,
            );
        }
        if let Some(head) = &inner.checkpoint {
            out.extend(
                journal::encode(&LineRef::Head { head }).map_err(|e| StoreError::io(&path, e))?,
            );
        }
        inner.journal.file = None;
        crate::state::open_private_dir(&self.dir)
            .and_then(|d| d.replace(std::ffi::OsStr::new(JOURNAL), &out, 0o600, true))
            .map_err(|e| StoreError::io(&path, e))?;
        self.syncs.fetch_add(3, Ordering::Relaxed);
        inner.journal.len = out.len() as u64;
        inner.journal.compact_at = (inner.journal.len * 2).max(COMPACT_MIN_BYTES);
        // Everything the new file holds is durable.
        self.journal_synced.fetch_max(
            self.journal_written.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        let now = SystemTime::now();
        inner.archive.prune(now);
        inner.audit.prune(now);
        Ok(())
    }

    /// A record by id: from memory, else from the receipt archive (a view
    /// rebuilt from its newest receipt).
    pub fn record(&self, id: &RecordId) -> Option<CommandRecord> {
        let inner = self.lock();
        inner.live.get(id).or_else(|| inner.recent.get(id)).cloned()
    }

    /// Records not yet terminal, oldest first.
    pub fn live(&self) -> Vec<CommandRecord> {
        let mut v: Vec<CommandRecord> = self.lock().live.values().cloned().collect();
        v.sort_by_key(|r| r.received_at);
        v
    }

    /// Live records matching `f`, oldest first, without cloning the rest.
    pub fn live_where(&self, f: impl Fn(&CommandRecord) -> bool) -> Vec<CommandRecord> {
        let mut v: Vec<CommandRecord> = self
            .lock()
            .live
            .values()
            .filter(|r| f(r))
            .cloned()
            .collect();
        v.sort_by_key(|r| r.received_at);
        v
    }

    /// How many live records match `f`.
    pub fn count_live(&self, f: impl Fn(&CommandRecord) -> bool) -> usize {
        self.lock().live.values().filter(|r| f(r)).count()
    }

    /// Whether a command id was already received (and has not expired).
    pub fn seen(&self, id: ulid::Ulid) -> bool {
        let inner = self.lock();
        inner.replay.contains_key(&id.0) || inner.live.contains_key(&RecordId::Command(id))
    }

    /// Forgets replay ids past their expiry.
    pub fn prune_replay(&self, now: Timestamp) {
        let now = unix(now);
        self.lock().replay.retain(|_, until| *until >= now);
    }

    /// A receipt by name: from memory, else from the journal's receipts or
    /// the archive.
    pub fn receipt(&self, name: &str) -> Option<Value> {
        {
            let inner = self.lock();
            for list in inner.receipts.values() {
                if let Some((_, r)) = list.iter().rev().find(|(n, _)| n == name) {
                    return serde_json::from_str(r.get()).ok();
                }
            }
        }
        self.archived(Some(name), None)
            .and_then(|a| serde_json::from_str(a.receipt.get()).ok())
    }

    /// The newest receipt of command `id` the archive holds.
    pub fn archived(&self, name: Option<&str>, id: Option<&str>) -> Option<Archived> {
        // The journal holds receipts the archive does not have yet.
        let path = self.dir.join(JOURNAL);
        if let Ok(bytes) = fs::read(&path) {
            for line in bytes.rsplit(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(Line::Settle {
                    name: n,
                    rec,
                    receipt,
                }) = Line::parse(line)
                {
                    let rid = rec
                        .id
                        .command()
                        .map(|u| u.to_string())
                        .unwrap_or_else(|| rec.id.to_string());
                    if name.is_none_or(|x| x == n) && id.is_none_or(|x| x == rid) {
                        return Some(Archived {
                            name: n,
                            id: rid,
                            receipt,
                        });
                    }
                }
            }
        }
        // One scan at a time, and never under the store's lock: commands
        // keep flowing while an old receipt is looked up.
        let _one = self.scan_lock.lock().unwrap_or_else(|e| e.into_inner());
        receipts::find(&self.dir, name, id)
    }

    /// The last audit checkpoint.
    pub fn checkpoint(&self) -> Option<AuditHead> {
        self.lock().checkpoint.clone()
    }

    /// Sizes, for the soak bench and `/metrics`.
    pub fn stats(&self) -> StoreStats {
        let inner = self.lock();
        StoreStats {
            live: inner.live.len(),
            recent: inner.recent.len(),
            replay: inner.replay.len(),
            journal_bytes: inner.journal.len,
        }
    }
}

/// Sizes of what the store holds.
#[derive(Debug, Clone, Copy)]
pub struct StoreStats {
    pub live: usize,
    pub recent: usize,
    pub replay: usize,
    pub journal_bytes: u64,
}

fn remember_recent(inner: &mut Inner, rec: CommandRecord) {
    let id = rec.id;
    if inner.recent.insert(id, rec).is_none() {
        inner.recent_order.push_back(id);
    }
    while inner.recent_order.len() > RECENT_RECORDS {
        if let Some(old) = inner.recent_order.pop_front() {
            inner.recent.remove(&old);
            if !inner.live.contains_key(&old) {
                inner.receipts.remove(&old);
            }
        }
    }
}

/// The last audit checkpoint in a state dir's journal, read without
/// opening the store (for `tourniquet audit verify`).
pub fn read_checkpoint(state_dir: &Path) -> Option<AuditHead> {
    let bytes = fs::read(state_dir.join(JOURNAL)).ok()?;
    bytes
        .rsplit(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .find_map(|l| match Line::parse(l) {
            Ok(Line::Head { head }) => Some(head),
            _ => None,
        })
}

/// Every envelope the journal still holds, by command id (for `audit
/// export`).
pub fn read_envelopes(state_dir: &Path) -> HashMap<String, (String, CommandRecord)> {
    let mut out = HashMap::new();
    let Ok(bytes) = fs::read(state_dir.join(JOURNAL)) else {
        return out;
    };
    let folded = journal::fold(&bytes);
    for rec in folded.live.into_values() {
        out.insert(rec.id.to_string(), (rec.envelope.to_string(), rec));
    }
    for (rec, _) in folded.settled {
        if !rec.envelope.is_empty() {
            out.insert(rec.id.to_string(), (rec.envelope.to_string(), rec));
        }
    }
    out
}

/// A receipt by name, read without opening the store (for `audit export`).
pub fn read_receipt(state_dir: &Path, name: &str) -> Option<Value> {
    if let Ok(bytes) = fs::read(state_dir.join(JOURNAL)) {
        for line in bytes.rsplit(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(Line::Settle {
                name: n, receipt, ..
            }) = Line::parse(line)
            {
                if n == name {
                    return serde_json::from_str(receipt.get()).ok();
                }
            }
        }
    }
    receipts::find(state_dir, Some(name), None)
        .and_then(|a| serde_json::from_str(a.receipt.get()).ok())
}
