//! Writing files in directories that someone else may be able to write too.
//!
//! Tourniquet runs as root, and the files it manages (a flags file, an nginx
//! include) often live in directories a service's deploy user can write.
//! Anyone who can write such a directory can plant a symlink at any name in
//! it, and a root process that writes by path follows the link: a write
//! anywhere on the host. So every file the agent writes goes through a
//! [`SafeDir`], an open handle on its directory, and is named relative to
//! that handle (`openat`), never by a path:
//!
//! - a file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`: whatever is planted
//!   at the name (a symlink, a file, a FIFO) makes the create fail, and it is
//!   never opened;
//! - a replacement is written to a temp file under an unpredictable name
//!   (`.{name}.{16 random hex}.tmp`) and renamed over the target within the
//!   same directory; a rename replaces a symlink planted at the target, it
//!   never writes through it;
//! - reads and appends refuse a symlink (`O_NOFOLLOW`) and anything that is
//!   not a regular file (a FIFO would block the agent).
//!
//! Readers (flagd clients, nginx, the agent after a crash) see the old file
//! or the new one, never a torn write; with `sync` the rename survives a
//! power cut.
//!
//! [`ManagedFile`] is the start-up check on top: a resource's file whose last
//! component is a symlink is refused unless its config says
//! `follow_symlinks = true`, and then the link is resolved once, at start.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How many fresh temp names `replace` tries before giving up. A clash
/// needs someone to guess 64 random bits; a few tries is only for luck.
const TEMP_ATTEMPTS: usize = 8;

/// An open directory: every file operation is relative to it, so no
/// symlink planted at a name in it is ever followed.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl SafeDir {
    /// Opens `path` as a directory. A symlink at its last component is
    /// refused (`O_NOFOLLOW`): use this for directories the agent owns,
    /// such as its state dir.
    pub fn open(path: &Path) -> io::Result<SafeDir> {
        Self::open_with(path, false)
    }

    /// Opens `path` as a directory, following a symlink at its last
    /// component: for directories the operator names in the config, where a
    /// link such as `/etc/app -> /srv/app/current` is deliberate. The files
    /// in it are still never followed.
    pub fn open_following(path: &Path) -> io::Result<SafeDir> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, follow: bool) -> io::Result<SafeDir> {
        let c = path_cstring(path.as_os_str())?;
        let mut flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        if !follow {
            flags |= libc::O_NOFOLLOW;
        }
        // SAFETY: `c` is a valid NUL-terminated string for the whole call.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let link = || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if !follow && (is_symlink_error(&e) || link()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symlink; refusing to follow it to a directory",
                        path.display()
                    ),
                ));
            }
            return Err(e);
        }
        Ok(SafeDir {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    /// The path the directory was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `name` with `bytes`: a temp file under an unpredictable name
    /// is created (`O_CREAT|O_EXCL|O_NOFOLLOW`), written, fsynced if `sync`,
    /// and renamed over `name`; with `sync` the directory is fsynced too.
    /// The new file gets exactly `mode`, or, if `name` is already a regular
    /// file, that file's permission bits (set-id and sticky bits are never
    /// carried over). A symlink at `name` is replaced, never written
    /// through. On any error the temp file is removed.
    pub fn replace(&self, name: &OsStr, bytes: &[u8], mode: u32, sync: bool) -> io::Result<()> {
        let target = name_cstring(name)?;
        // mode_t is u32 here but u16 on some systems.
        #[allow(clippy::unnecessary_cast)]
        let mode = match self.stat(&target)? {
            Some(st) if is_regular(&st) => st.st_mode as u32 & 0o777,
            _ => mode,
        };
        let (tmp, mut file) = self.create_temp(name)?;
        let mut renamed = false;
        let result = (|| {
            fchmod(&file, mode)?;
            file.write_all(bytes)?;
            if sync {
                file.sync_all()?;
            }
            drop(file);
            self.rename_c(&tmp, &target)?;
            renamed = true;
            if sync {
                self.sync()?;
            }
            Ok(())
        })();
        if result.is_err() && !renamed {
            // SAFETY: `tmp` is a valid NUL-terminated name; the fd is open.
            unsafe { libc::unlinkat(self.raw(), tmp.as_ptr(), 0) };
        }
        result
    }

    /// Creates `name` (`O_CREAT|O_EXCL|O_NOFOLLOW`) with exactly `mode`, for
    /// writing. Fails if anything at all is already there.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let c = name_cstring(name)?;
        let file = self.openat(
            &c,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )?;
        fchmod(&file, mode)?;
        Ok(file)
    }

    /// Opens `name` for appending (and reading, so a log can find its
    /// tail), creating it with `mode` if missing. A symlink or anything
    /// but a regular file at `name` is refused.
    pub fn open_append(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let c = name_cstring(name)?;
        let file = self.openat(
            &c,
            libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            mode,
        )?;
        regular_and_blocking(file, name)
    }

    /// Opens `name` for reading. A symlink or anything but a regular file
    /// at `name` is refused.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let c = name_cstring(name)?;
        let file = self.openat(&c, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)?;
        regular_and_blocking(file, name)
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        self.rename_c(&name_cstring(from)?, &name_cstring(to)?)
    }

    /// Removes the file (or symlink) `name`; never what a link points at.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let c = name_cstring(name)?;
        // SAFETY: `c` is a valid NUL-terminated name; the fd is open.
        if unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Fsyncs the directory, so renames and creates in it are durable.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: the fd is open for as long as `self` lives.
        if unsafe { libc::fsync(self.raw()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether `name` is a symlink (not following it). A missing name is
    /// not a symlink.
    pub fn is_symlink(&self, name: &OsStr) -> io::Result<bool> {
        let c = name_cstring(name)?;
        Ok(self
            .stat(&c)?
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK))
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `fstatat(AT_SYMLINK_NOFOLLOW)`; `None` when nothing is there.
    fn stat(&self, name: &CString) -> io::Result<Option<libc::stat>> {
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `name` is NUL-terminated, `st` is writable, the fd is open.
        let rc = unsafe {
            libc::fstatat(
                self.raw(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(st))
    }

    fn openat(&self, name: &CString, flags: libc::c_int, mode: u32) -> io::Result<File> {
        // SAFETY: `name` is NUL-terminated; the fd is open; the mode is
        // passed as the variadic `mode_t` argument `openat` expects.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if flags & libc::O_EXCL == 0 && is_symlink_error(&e) {
                return Err(symlink_refused(OsStr::from_bytes(name.as_bytes())));
            }
            return Err(e);
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn rename_c(&self, from: &CString, to: &CString) -> io::Result<()> {
        // SAFETY: both names are NUL-terminated; the fd is open.
        let rc = unsafe { libc::renameat(self.raw(), from.as_ptr(), self.raw(), to.as_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A new temp file for `name`, created exclusively (0600 until the
    /// caller sets the final mode) under a name nobody can predict.
    fn create_temp(&self, name: &OsStr) -> io::Result<(CString, File)> {
        // Keep the temp name within NAME_MAX however long `name` is.
        let stem = &name.as_bytes()[..name.len().min(200)];
        let mut last = None;
        for _ in 0..TEMP_ATTEMPTS {
            let mut tmp = Vec::with_capacity(stem.len() + 22);
            tmp.push(b'.');
            tmp.extend_from_slice(stem);
            tmp.push(b'.');
            tmp.extend_from_slice(random_hex()?.as_bytes());
            tmp.extend_from_slice(b".tmp");
            let c = name_cstring(OsStr::from_bytes(&tmp))?;
            match self.openat(
                &c,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            ) {
                Ok(f) => return Ok((c, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temp name")))
    }
}

/// The open directory, for `fstat`/`fchmod`/`flock` on the directory
/// itself (the state dir checks its owner and mode this way).
impl AsFd for SafeDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A file a resource writes, checked once at start and split into the
/// directory it lives in and its name there.
#[derive(Debug, Clone)]
pub struct ManagedFile {
    dir: PathBuf,
    name: OsString,
    path: PathBuf,
}

/// Why a resource's file is refused at start.
#[derive(Debug, thiserror::Error)]
pub enum ManagedFileError {
    #[error("{} names no file", .0.display())]
    NoFileName(PathBuf),
    #[error("{} is a symlink; Tourniquet refuses to write through it (set follow_symlinks = true to allow)", .0.display())]
    Symlink(PathBuf),
    #[error("{}: cannot resolve the symlink: {source}", path.display())]
    Resolve { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
}

impl ManagedFile {
    /// Checks `path`. A symlink at its last component is refused, unless
    /// `follow_symlinks`: then it is resolved now, once, and the agent
    /// writes the file the link points at (by rename in that file's
    /// directory) until it restarts. A missing file is fine here; the
    /// provider says whether it must exist.
    pub fn resolve(path: &Path, follow_symlinks: bool) -> Result<ManagedFile, ManagedFileError> {
        let is_link = match std::fs::symlink_metadata(path) {
            Ok(m) => m.file_type().is_symlink(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(ManagedFileError::Inspect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let real = match (is_link, follow_symlinks) {
            (false, _) => path.to_path_buf(),
            (true, false) => return Err(ManagedFileError::Symlink(path.to_path_buf())),
            (true, true) => {
                std::fs::canonicalize(path).map_err(|source| ManagedFileError::Resolve {
                    path: path.to_path_buf(),
                    source,
                })?
            }
        };
        let name = real
            .file_name()
            .ok_or_else(|| ManagedFileError::NoFileName(path.to_path_buf()))?
            .to_os_string();
        let dir = match real.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(ManagedFile {
            dir,
            name,
            path: real,
        })
    }

    /// The path written: the configured one, or the link's target.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes; a symlink put there since start is refused.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.dir()?.open_read(&self.name)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// [`SafeDir::replace`] on the file.
    pub fn replace(&self, bytes: &[u8], mode: u32, sync: bool) -> io::Result<()> {
        self.dir()?.replace(&self.name, bytes, mode, sync)
    }

    /// Removes the file; a missing one is not an error.
    pub fn remove(&self) -> io::Result<()> {
        let dir = self.dir()?;
        match dir.remove(&self.name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => {
                dir.sync()?;
                Ok(())
            }
        }
    }

    fn dir(&self) -> io::Result<SafeDir> {
        SafeDir::open_following(&self.dir)
    }
}

/// Writes `bytes` to `path` durably and atomically: [`replace_file`] with
/// `sync`. `mode` sets the permissions of a new file (an existing regular
/// file keeps its permission bits).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace_file(path, bytes, mode, true)
}

/// [`SafeDir::replace`] on `path`'s file name in `path`'s directory. The
/// directory is opened following links (it is the caller's choice); the
/// file itself is never followed: a symlink there is replaced. With `sync`
/// false both fsyncs are skipped, for copies whose loss in a power cut
/// costs nothing (readers still never see a torn file).
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    let (dir, name) = split(path)?;
    SafeDir::open_following(dir)?.replace(name, bytes, mode, sync)
}

/// `path` → (its directory, its file name).
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    Ok((dir, name))
}

/// A name inside a directory: one component, never `.` or `..`.
fn name_cstring(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    path_cstring(name)
}

fn path_cstring(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

/// `O_NOFOLLOW` on a symlink fails with ELOOP (with `O_DIRECTORY`, Linux
/// says ENOTDIR instead, so directories check with lstat).
fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

fn symlink_refused(name: &OsStr) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is a symlink; refusing to follow it",
            name.to_string_lossy()
        ),
    )
}

fn is_regular(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

fn fchmod(file: &File, mode: u32) -> io::Result<()> {
    // SAFETY: the fd is open for the call.
    if unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Refuses anything but a regular file, then clears the `O_NONBLOCK` that
/// kept a FIFO from blocking the open.
fn regular_and_blocking(file: File, name: &OsStr) -> io::Result<File> {
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", name.to_string_lossy()),
        ));
    }
    let fd = file.as_raw_fd();
    // SAFETY: the fd is open; F_GETFL/F_SETFL take and return plain ints.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// 64 bits from the OS's random source, as 16 hex digits.
pub(crate) fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 8];
    fill_random(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is writable for `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn victim(dir: &Path) -> PathBuf {
        let v = dir.join("victim");
        fs::write(&v, b"precious\n").unwrap();
        v
    }

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_symlink_at_the_old_predictable_temp_name_is_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = victim(t.path());
        let target = t.path().join("flags.json");
        fs::write(&target, b"old").unwrap();
        for pid in [std::process::id(), 1, 2] {
            symlink(&victim, t.path().join(format!(".flags.json.tmp.{pid}"))).unwrap();
        }
        write_atomically(&target, b"new", 0o644).unwrap();
        replace_file(&target, b"newer", 0o644, false).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"newer");
        assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
        // The planted links are still links, and nothing else is left.
        let mut names: Vec<String> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_written_through() {
        let t = tempfile::tempdir().unwrap();
        let victim = victim(t.path());
        let target = t.path().join("include.conf");
        symlink(&victim, &target).unwrap();
        let dir = SafeDir::open(t.path()).unwrap();
        assert!(dir.is_symlink(os("include.conf")).unwrap());
        dir.replace(os("include.conf"), b"deny all;\n", 0o644, true)
            .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
        assert!(!dir.is_symlink(os("include.conf")).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"deny all;\n");
        // A link's own mode (0777) is never taken for the file's.
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn symlinks_at_any_name_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = victim(t.path());
        let dir = SafeDir::open(t.path()).unwrap();
        symlink(&victim, t.path().join("log")).unwrap();
        let err = dir.open_append(os("log"), 0o600).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let err = dir.open_read(os("log")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        let err = dir.create_new(os("log"), 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        // A dangling link at a name create_new would make is not followed
        // into creating its target either.
        let ghost = t.path().join("ghost");
        symlink(&ghost, t.path().join("key")).unwrap();
        assert!(dir.create_new(os("key"), 0o600).is_err());
        assert!(!ghost.exists());
        // remove takes the link away, not what it points at.
        dir.remove(os("log")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
        assert!(!dir.is_symlink(os("log")).unwrap());
    }

    #[test]
    fn open_append_refuses_a_fifo_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let fifo = path_cstring(t.path().join("audit.jsonl").as_os_str()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let dir = SafeDir::open(t.path()).unwrap();
        let err = dir.open_read(os("audit.jsonl")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = dir.open_append(os("audit.jsonl"), 0o600).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn append_read_create_rename_remove_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let dir = SafeDir::open(t.path()).unwrap();
        let mut f = dir.open_append(os("log"), 0o600).unwrap();
        f.write_all(b"one\n").unwrap();
        let mut f = dir.open_append(os("log"), 0o600).unwrap();
        f.write_all(b"two\n").unwrap();
        let mut text = String::new();
        dir.open_read(os("log"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "one\ntwo\n");
        let mode = fs::metadata(t.path().join("log")).unwrap().permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        dir.create_new(os("key"), 0o600)
            .unwrap()
            .write_all(b"k")
            .unwrap();
        dir.rename(os("key"), os("key2")).unwrap();
        dir.sync().unwrap();
        assert_eq!(fs::read(t.path().join("key2")).unwrap(), b"k");
        dir.remove(os("key2")).unwrap();
        assert!(!t.path().join("key2").exists());
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = SafeDir::open(t.path()).unwrap();
        for bad in ["", ".", "..", "a/b", "../victim", "/etc/passwd"] {
            let err = dir.replace(os(bad), b"x", 0o600, false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {err}");
            assert!(dir.open_append(os(bad), 0o600).is_err(), "{bad:?}");
            assert!(dir.create_new(os(bad), 0o600).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_existing_file_keeps_its_permission_bits_but_never_set_id_bits() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("flags.json");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o4664)).unwrap();
        write_atomically(&target, b"new", 0o600).unwrap();
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o664);
        let fresh = t.path().join("fresh.json");
        write_atomically(&fresh, b"new", 0o640).unwrap();
        let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn a_symlinked_directory_opens_only_when_following_is_asked_for() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        symlink(&real, &link).unwrap();
        let err = SafeDir::open(&link).unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
        SafeDir::open_following(&link)
            .unwrap()
            .replace(os("f"), b"x", 0o600, true)
            .unwrap();
        assert_eq!(fs::read(real.join("f")).unwrap(), b"x");
    }

    #[test]
    fn a_failed_replace_leaves_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        // A directory at the target: the rename fails.
        fs::create_dir(t.path().join("busy")).unwrap();
        fs::write(t.path().join("busy").join("inside"), b"x").unwrap();
        let dir = SafeDir::open(t.path()).unwrap();
        assert!(dir.replace(os("busy"), b"x", 0o600, true).is_err());
        let names: Vec<_> = fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn managed_files_refuse_a_symlink_unless_following_is_configured() {
        let t = tempfile::tempdir().unwrap();
        let real_dir = t.path().join("releases");
        fs::create_dir(&real_dir).unwrap();
        let real = real_dir.join("flags.json");
        fs::write(&real, b"{}").unwrap();
        let link = t.path().join("flags.json");
        symlink(&real, &link).unwrap();
        let err = ManagedFile::resolve(&link, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a symlink; Tourniquet refuses to write through it (set follow_symlinks = true to allow)",
                link.display()
            )
        );
        let m = ManagedFile::resolve(&link, true).unwrap();
        assert_eq!(m.path(), fs::canonicalize(&real).unwrap());
        m.replace(b"{\"flags\":{}}", 0o644, true).unwrap();
        assert_eq!(fs::read(&real).unwrap(), b"{\"flags\":{}}");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        // A plain file, or a missing one, is taken as it is.
        let plain = ManagedFile::resolve(&real, false).unwrap();
        assert_eq!(plain.read().unwrap(), b"{\"flags\":{}}");
        let missing = ManagedFile::resolve(&t.path().join("nope.conf"), false).unwrap();
        missing.remove().unwrap();
        // A link planted after start is refused on read, replaced on write.
        let victim = victim(t.path());
        fs::remove_file(&real).unwrap();
        symlink(&victim, &real).unwrap();
        let err = plain.read().unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        plain.replace(b"{}", 0o644, false).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    }

    #[test]
    fn temp_names_are_unpredictable() {
        let a = random_hex().unwrap();
        let b = random_hex().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
