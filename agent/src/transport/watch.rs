//! Watching a file that config managers and editors replace by atomic rename.
//!
//! Watching the file itself goes blind after the first rename (the watch
//! follows the old inode, which is gone). Watching its directory and
//! filtering by name keeps working across any number of renames.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Starts watching `dir`; every event that touches a path in it is sent as
/// that path. Keep the returned watcher alive for as long as events matter.
pub fn watch_dir(
    dir: &Path,
) -> notify::Result<(RecommendedWatcher, mpsc::UnboundedReceiver<PathBuf>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if matches!(
                event.kind,
                EventKind::Access(notify::event::AccessKind::Open(_))
            ) {
                return;
            }
            for p in event.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// The directory to watch for `file`.
pub fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
