//! The agent's state directory: private by construction (0700 directory,
//! 0600 files), because it holds the agent's signing key and the journal.
//!
//! Two rules keep it the agent's alone:
//! - It is a real directory owned by the agent's user. A symlink planted at
//!   its name is never followed (it could lead the agent, as root, to keep
//!   its key and journal wherever the planter chose), and a directory
//!   someone else owns is refused, because its owner could swap files under
//!   the agent.
//! - One agent per state dir. A second agent on a live state dir would run
//!   crash recovery on the first one's journal and re-arm its holds: a hold
//!   reverted twice, and an audit chain with two writers. So the agent takes
//!   an exclusive `flock` on `state_dir/lock` before it opens anything else,
//!   and holds it until it exits (the kernel drops it even on SIGKILL).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tourniquet_providers::SafeDir;

use crate::trust::keys::{self, KeyError, Signer};

/// The lock file's name in the state dir.
pub const LOCK_FILE: &str = "lock";

/// What can go wrong with the state dir or what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "state dir {} is in use by another agent (pid {pid}); stop it first or use another state_dir",
        dir.display()
    )]
    InUse { dir: PathBuf, pid: String },
    #[error("{}: the agent key is readable by others (mode {mode:o}); chmod 600 it", path.display())]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("{}: the agent key is a symlink; it must be a regular file in the state dir", .0.display())]
    KeySymlink(PathBuf),
    #[error(transparent)]
    Key(#[from] KeyError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` as 0700 (parents too, as 0700) and tightens an existing
/// one. Refuses a symlink at `dir` itself and a directory owned by another
/// user. Errors do not repeat the path: callers name it.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    open_private_dir(dir).map(drop)
}

/// [`create_private_dir`], returning the open directory, so the files in
/// it can be written through [`SafeDir`] without following any symlink.
pub fn open_private_dir(dir: &Path) -> io::Result<SafeDir> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
    }
    // mkdir never follows a symlink at the last component (it fails with
    // EEXIST), and SafeDir::open refuses one.
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let handle = SafeDir::open(dir)?;
    // fstat and fchmod on the open directory: what is checked is what was
    // opened, whatever happens to the name meanwhile.
    let file = File::from(handle.as_fd().try_clone_to_owned()?);
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "owned by {}, not by {} that the agent runs as; chown it or choose another directory",
                user(meta.uid()),
                user(me)
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o700))?;
    }
    Ok(handle)
}

/// `uid 1000 (alice)`, or `uid 1000` when it has no name.
fn user(uid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero `passwd` is a valid value of this plain C struct.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf` outlives the
    // use of the strings getpwuid_r points into it.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pw.pw_name.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string
    // inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    format!("uid {uid} ({})", name.to_string_lossy())
}

/// The exclusive hold on a state dir: dropped, the dir is free again.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Creates `dir` privately, then takes an exclusive, non-blocking `flock`
/// on `dir/lock` (0600, never through a symlink) and writes this process's
/// pid into it. A second agent gets [`StateError::InUse`] naming the pid
/// of the one holding it. Keep the guard for the life of the process.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, StateError> {
    let handle = open_private_dir(dir).map_err(io_at(dir))?;
    let path = dir.join(LOCK_FILE);
    // The lock is held on a read-only descriptor: a running agent keeps
    // nothing in its state dir open for writing while idle, so an operator
    // can remount it read-only (and the agent then fails closed).
    drop(
        handle
            .open_append(OsStr::new(LOCK_FILE), 0o600)
            .map_err(io_at(&path))?,
    );
    let file = handle
        .open_read(OsStr::new(LOCK_FILE))
        .map_err(io_at(&path))?;
    // SAFETY: the fd is open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_at(&path)(e));
        }
        let mut text = String::new();
        let pid = match handle
            .open_read(OsStr::new(LOCK_FILE))
            .and_then(|mut f| f.read_to_string(&mut text))
        {
            Ok(_) => text
                .trim()
                .parse::<u32>()
                .map(|p| p.to_string())
                .unwrap_or_else(|_| "unknown".into()),
            Err(_) => "unknown".into(),
        };
        return Err(StateError::InUse {
            dir: dir.to_path_buf(),
            pid,
        });
    }
    let mut writer = handle
        .open_append(OsStr::new(LOCK_FILE), 0o600)
        .map_err(io_at(&path))?;
    writer
        .set_len(0)
        .and_then(|()| writeln!(writer, "{}", std::process::id()))
        .map_err(io_at(&path))?;
    drop(writer);
    Ok(StateLock { _file: file })
}

/// The agent's receipt-signing key, generated at first start.
pub fn load_or_create_agent_key(
    state_dir: &Path,
    agent_id: &str,
) -> Result<(Signer, bool), StateError> {
    let path = state_dir.join("agent_ed25519");
    let created = match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(StateError::KeySymlink(path)),
        Ok(meta) => {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(StateError::KeyExposed {
                    path,
                    mode: mode & 0o777,
                });
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            keys::generate_keypair(&path, &format!("tourniquet-agent@{agent_id}"))?;
            true
        }
        Err(e) => return Err(io_at(&path)(e)),
    };
    let signer = Signer::load(&path)?;
    Ok((signer, created))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_second_lock_on_the_same_dir_names_the_holder() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        let first = lock_state_dir(&dir).unwrap();
        let text = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        let mode = fs::metadata(dir.join(LOCK_FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        // flock conflicts between open files, even in one process.
        let err = lock_state_dir(&dir).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "state dir {} is in use by another agent (pid {}); stop it first or use another state_dir",
                dir.display(),
                std::process::id()
            )
        );
        drop(first);
        lock_state_dir(&dir).unwrap();
    }

    #[test]
    fn a_symlink_at_the_lock_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        create_private_dir(&dir).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "precious\n").unwrap();
        symlink(&victim, dir.join(LOCK_FILE)).unwrap();
        let err = lock_state_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    #[test]
    fn a_symlink_at_the_state_dir_is_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
        let state = t.path().join("state");
        symlink(&elsewhere, &state).unwrap();
        let err = create_private_dir(&state).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        let err = lock_state_dir(&state).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        // Nothing was created or tightened through the link.
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(fs::metadata(&elsewhere).unwrap().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_new_dir_is_private_and_an_open_one_is_tightened() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a").join("state");
        create_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_dir_owned_by_another_user_is_refused_naming_the_owner() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Only root can hand a directory to someone else; anyone else
            // tries root's own `/` (refused before anything is changed).
            let err = create_private_dir(Path::new("/")).unwrap_err().to_string();
            assert!(err.starts_with("owned by uid 0 (root)"), "{err}");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("state");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let err = create_private_dir(&dir).unwrap_err().to_string();
        assert!(err.starts_with("owned by uid 65534"), "{err}");
        assert!(err.contains("uid 0 (root)"), "{err}");
    }

    #[test]
    fn the_agent_key_is_created_once_and_an_exposed_one_refused() {
        let t = tempfile::tempdir().unwrap();
        let (_, created) = load_or_create_agent_key(t.path(), "a").unwrap();
        assert!(created);
        let (_, created) = load_or_create_agent_key(t.path(), "a").unwrap();
        assert!(!created);
        let key = t.path().join("agent_ed25519");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_agent_key(t.path(), "a").err().unwrap();
        assert!(
            matches!(err, StateError::KeyExposed { mode: 0o644, .. }),
            "{err}"
        );
    }
}
