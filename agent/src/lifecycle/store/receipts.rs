//! The receipt archive: signed receipts of commands the journal no longer
//! holds, in append-only segment files under `state_dir/receipts/`.
//!
//! Why segments and not a file per receipt: a file per receipt cost a file
//! sync and a directory sync each (four syncs for a superseding flip) and
//! left tens of thousands of files behind. A receipt is first made durable
//! inside the journal's `settle` line, with the sync the settle needs
//! anyway; journal compaction then moves receipts here in batches, with one
//! sync per batch. Retention deletes whole segments, oldest first, so
//! pruning is one unlink.
//!
//! Layout: the active segment is `NNNNNNNN.jsonl`; a sealed one is renamed
//! `NNNNNNNN-COUNT.jsonl`, so retention by count needs no reading. A line
//! is `{"name": …, "id": …, "receipt": <signed envelope>}`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Bounds of the archive.
#[derive(Debug, Clone)]
pub struct ReceiptLimits {
    /// The active segment is sealed once it grows past this.
    pub segment_bytes: u64,
    /// Most receipts kept (whole segments are deleted, oldest first).
    pub max_count: u64,
    /// Segments whose newest receipt is older than this are deleted.
    pub max_age: Duration,
}

impl Default for ReceiptLimits {
    fn default() -> Self {
        ReceiptLimits {
            segment_bytes: 8 * 1024 * 1024,
            max_count: 100_000,
            max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// One archived receipt.
#[derive(Debug, Serialize, Deserialize)]
pub struct Archived {
    pub name: String,
    pub id: String,
    pub receipt: Box<RawValue>,
}

#[derive(Debug, Serialize)]
struct ArchivedRef<'a> {
    name: &'a str,
    id: &'a str,
    receipt: &'a RawValue,
}

#[derive(Debug, Clone)]
struct Segment {
    no: u64,
    /// Receipts in it; `None` for the active one.
    count: Option<u64>,
    path: PathBuf,
}

/// The open archive.
pub struct ReceiptArchive {
    dir: PathBuf,
    active: Option<File>,
    active_no: u64,
    active_len: u64,
    active_count: u64,
    limits: ReceiptLimits,
}

fn segments(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        let (no, count) = match stem.split_once('-') {
            Some((a, b)) => match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) => (a, Some(b)),
                _ => continue,
            },
            None => match stem.parse() {
                Ok(a) => (a, None),
                Err(_) => continue,
            },
        };
        out.push(Segment {
            no,
            count,
            path: e.path(),
        });
    }
    out.sort_by_key(|s| s.no);
    Ok(out)
}

impl ReceiptArchive {
    /// Opens `state_dir/receipts/` (created 0700).
    pub fn open(state_dir: &Path, limits: ReceiptLimits) -> std::io::Result<ReceiptArchive> {
        let dir = state_dir.join("receipts");
        crate::state::create_private_dir(&dir)?;
        let segs = segments(&dir)?;
        let (active_no, active_len, active_count) = match segs.last() {
            Some(s) if s.count.is_none() => {
                let bytes = fs::read(&s.path)?;
                let count = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
                (s.no, bytes.len() as u64, count)
            }
            Some(s) => (s.no + 1, 0, 0),
            None => (1, 0, 0),
        };
        Ok(ReceiptArchive {
            dir,
            active: None,
            active_no,
            active_len,
            active_count,
            limits,
        })
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join(format!("{:08}.jsonl", self.active_no))
    }

    /// Appends receipts and syncs them; seals and prunes as needed.
    pub fn append(&mut self, items: &[(&str, &str, &RawValue)]) -> std::io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (name, id, receipt) in items {
            serde_json::to_writer(&mut buf, &ArchivedRef { name, id, receipt })
                .map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        if self.active.is_none() {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.active_path())?;
            self.active = Some(f);
        }
        let Some(f) = self.active.as_mut() else {
            return Err(std::io::Error::other("receipt segment not open"));
        };
        if let Err(e) = f.write_all(&buf).and_then(|_| f.sync_data()) {
            let _ = f.set_len(self.active_len);
            return Err(e);
        }
        self.active_len += buf.len() as u64;
        self.active_count += items.len() as u64;
        if self.active_len >= self.limits.segment_bytes {
            self.seal()?;
        }
        Ok(())
    }

    fn seal(&mut self) -> std::io::Result<()> {
        self.active = None;
        let sealed = self
            .dir
            .join(format!("{:08}-{}.jsonl", self.active_no, self.active_count));
        fs::rename(self.active_path(), sealed)?;
        File::open(&self.dir)?.sync_all()?;
        self.active_no += 1;
        self.active_len = 0;
        self.active_count = 0;
        self.prune(SystemTime::now());
        Ok(())
    }

    /// Deletes sealed segments, oldest first, while the archive holds more
    /// than the count limit or the oldest is past the age limit.
    pub fn prune(&self, now: SystemTime) -> usize {
        let Ok(segs) = segments(&self.dir) else {
            return 0;
        };
        let sealed: Vec<&Segment> = segs.iter().filter(|s| s.count.is_some()).collect();
        let mut total: u64 = sealed.iter().filter_map(|s| s.count).sum::<u64>() + self.active_count;
        let mut removed = 0;
        for s in sealed {
            let too_many = total > self.limits.max_count;
            let too_old = fs::metadata(&s.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > self.limits.max_age);
            if !(too_many || too_old) {
                break;
            }
            if fs::remove_file(&s.path).is_err() {
                break;
            }
            total = total.saturating_sub(s.count.unwrap_or(0));
            removed += 1;
        }
        removed
    }

    /// Total bytes of the archive, for reports.
    pub fn bytes(&self) -> u64 {
        segments(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// The newest archived receipt matching `name`, or the newest of the
/// command `id`. Reads segments newest first; a lookup that finds
/// nothing reads the whole archive, which retention bounds.
pub fn find(state_dir: &Path, name: Option<&str>, id: Option<&str>) -> Option<Archived> {
    let needle = match (name, id) {
        (Some(n), _) => format!("\"name\":{}", serde_json::to_string(n).ok()?),
        (None, Some(i)) => format!("\"id\":{}", serde_json::to_string(i).ok()?),
        (None, None) => return None,
    };
    let segs = segments(&state_dir.join("receipts")).ok()?;
    for s in segs.iter().rev() {
        let Ok(text) = fs::read_to_string(&s.path) else {
            continue;
        };
        for line in text.lines().rev() {
            if !line.contains(&needle) {
                continue;
            }
            if let Ok(a) = serde_json::from_str::<Archived>(line) {
                if name.is_none_or(|n| a.name == n) && id.is_none_or(|i| a.id == i) {
                    return Some(a);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn receipts_are_found_newest_first_and_retention_drops_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ReceiptLimits {
            segment_bytes: 200,
            max_count: 10,
            max_age: Duration::from_secs(3600),
        };
        let mut a = ReceiptArchive::open(dir.path(), limits.clone()).unwrap();
        for i in 0..30 {
            let r = raw(&format!("{{\"n\":{i}}}"));
            let name = format!("C{i}.1.kept");
            a.append(&[(&name, &format!("C{i}"), &r)]).unwrap();
        }
        let d = dir.path();
        assert!(find(d, Some("C29.1.kept"), None).is_some());
        assert_eq!(
            find(d, None, Some("C28")).unwrap().receipt.get(),
            "{\"n\":28}"
        );
        assert!(
            find(d, Some("C0.1.kept"), None).is_none(),
            "pruned by count"
        );
        assert!(find(d, Some("nope"), None).is_none());
        // Reopening continues the active segment.
        let _a = ReceiptArchive::open(dir.path(), limits).unwrap();
        assert!(find(dir.path(), Some("C29.1.kept"), None).is_some());
    }
}
