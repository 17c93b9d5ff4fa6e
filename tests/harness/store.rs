//! Storage helpers for the bounded-store and fail-closed tests and the soak
//! bench: a small tmpfs a test mounts as the agent's state dir (and always
//! unmounts), the whole audit log across its sealed segments, the agent's
//! drift counter, and how much the state dir holds.
//!
//! A tmpfs is real storage with a real size limit: filling it makes every
//! write the agent does fail with `ENOSPC`, exactly as a full disk would,
//! and remounting it read-only makes writes fail with `EROFS`. Nothing here
//! intercepts the agent's I/O.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{get_json, http_request, read_answer, Agent};

/// A tmpfs mounted by a test; unmounted on drop (lazily if it is busy).
pub struct Tmpfs {
    path: PathBuf,
    size: String,
}

/// Why a mount call failed: the path and the system's answer.
#[derive(Debug)]
pub struct MountError {
    pub what: String,
    pub path: PathBuf,
    pub source: io::Error,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.source)?;
        if matches!(self.source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            write!(
                f,
                " (mounting needs root or CAP_SYS_ADMIN; run the storage tests as root, as CI does)"
            )?;
        }
        Ok(())
    }
}

fn c_path(path: &Path) -> CString {
    // Test paths come from tempfile and never hold a NUL byte.
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

fn sys_mount(path: &Path, flags: libc::c_ulong, data: &str, what: &str) -> Result<(), MountError> {
    let target = c_path(path);
    let source = CString::new("tmpfs").expect("literal");
    let data = CString::new(data).expect("mount options");
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(MountError {
            what: what.to_string(),
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        })
    }
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`"1m"`, `"512k"`) on `path` (created if
    /// missing), private to root like a state dir. Fails the test with the
    /// reason when the system refuses: this test never skips.
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path)
            .unwrap_or_else(|e| panic!("creating the mount point {}: {e}", path.display()));
        let data = format!("size={size},mode=0700");
        if let Err(e) = sys_mount(path, 0, &data, "mounting a tmpfs on") {
            panic!("{e}");
        }
        Tmpfs {
            path: path.to_path_buf(),
            size: size.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remounts read-only. The kernel refuses (`EBUSY`) while any process
    /// holds a file on it open for writing, so this retries until
    /// `timeout` and then returns the last refusal.
    pub fn try_remount_ro(&self, timeout: Duration) -> Result<(), MountError> {
        let data = format!("size={},mode=0700", self.size);
        let deadline = Instant::now() + timeout;
        loop {
            match sys_mount(
                &self.path,
                libc::MS_REMOUNT | libc::MS_RDONLY,
                &data,
                "remounting read-only",
            ) {
                Ok(()) => return Ok(()),
                Err(e) if e.source.raw_os_error() == Some(libc::EBUSY) => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Remounts read-write.
    pub fn remount_rw(&self) {
        let data = format!("size={},mode=0700", self.size);
        if let Err(e) = sys_mount(&self.path, libc::MS_REMOUNT, &data, "remounting read-write") {
            panic!("{e}");
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = c_path(&self.path);
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
        if rc != 0 {
            // Busy (an agent still running): detach now, freed when the last user goes.
            // SAFETY: as above.
            let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                eprintln!(
                    "could not unmount the test tmpfs {}: {}",
                    self.path.display(),
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// Files under `dir` that process `pid` holds open for writing: why a
/// read-only remount is refused with `EBUSY`.
pub fn files_open_for_writing(pid: u32, dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if !target.starts_with(&dir) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        let access = flags & libc::O_ACCMODE as u32;
        if access == libc::O_WRONLY as u32 || access == libc::O_RDWR as u32 {
            out.push(target);
        }
    }
    out.sort();
    out
}

/// Fills the filesystem holding `dir` with a file `dir/NAME` until a write
/// fails with `ENOSPC`. Returns the filler's path.
pub fn fill(dir: &Path, name: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("creating the filler {}: {e}", path.display()));
    // Big writes first, then smaller ones, so not even a page is left.
    for chunk in [65536usize, 4096, 512, 1] {
        let block = vec![0u8; chunk];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = f.sync_all();
    path
}

/// Every audit entry, oldest first: the sealed segments in `state/audit/`
/// (by name), then the active `state/audit.jsonl`. Lines that do not parse
/// are left out.
pub fn all_audit_entries(state: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("audit"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.push(state.join("audit.jsonl"));
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `GET /healthz`: (status, JSON body or Null).
pub fn healthz(agent: &Agent) -> (u16, Value) {
    match http_request("GET", &format!("{}/healthz", agent.url), b"") {
        Some((s, b)) => (s, serde_json::from_slice(&b).unwrap_or(Value::Null)),
        None => (0, Value::Null),
    }
}

/// The sum of `tourniquet_drift_events_total` over all resources, from
/// `GET /metrics` (0 when no drift was ever counted).
pub fn drift_events_total(agent: &Agent) -> f64 {
    let (status, body) = http_request("GET", &format!("{}/metrics", agent.url), b"")
        .unwrap_or_else(|| panic!("GET /metrics: no answer"));
    assert_eq!(status, 200, "GET /metrics");
    metric_sum(
        &String::from_utf8_lossy(&body),
        "tourniquet_drift_events_total",
    )
}

/// Sums every sample of `name` (any labels) in an exposition text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// `GET /v1/hotfixes`: the ids in force (None if the agent did not answer
/// with a list).
pub fn hotfix_ids(agent: &Agent) -> Option<Vec<String>> {
    let (status, v) = get_json(agent, tourniquet::api::HOTFIXES_PATH);
    if status != 200 {
        return None;
    }
    let list: tourniquet::api::Hotfixes = read_answer("hotfixes", &v);
    Some(list.hotfixes.into_iter().map(|h| h.id).collect())
}

/// How much a directory tree holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirUsage {
    pub files: u64,
    /// Sum of file lengths.
    pub bytes: u64,
    /// Space allocated on the filesystem (what `du` shows).
    pub allocated: u64,
}

/// Walks `dir` (not following symlinks). Files that vanish mid-walk (the
/// agent rotating or pruning) are skipped.
pub fn dir_usage(dir: &Path) -> DirUsage {
    let mut usage = DirUsage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                usage.files += 1;
                usage.bytes += m.len();
                usage.allocated += m.blocks().saturating_mul(512);
            }
        }
    }
    usage
}
