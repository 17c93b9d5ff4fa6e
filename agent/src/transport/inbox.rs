//! The inbox: a directory where envelopes are dropped as `*.json` files, for
//! hosts where nothing may listen on a port. Write elsewhere and rename in;
//! a file written in place is picked up when it is closed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::lifecycle::{Lifecycle, Submission};
use crate::trust::policy::MAX_ENVELOPE_BYTES;

/// Watches `dir`, processing what is there now and whatever arrives.
pub async fn run(lc: Arc<Lifecycle>, dir: PathBuf) -> Result<(), String> {
    for sub in ["done", "rejected"] {
        crate::state::create_private_dir(&dir.join(sub))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // Events carry absolute paths; compare against the absolute directory.
    let dir = fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (_watcher, mut events) =
        super::watch::watch_dir(&dir).map_err(|e| format!("watching {}: {e}", dir.display()))?;
    for existing in list_envelopes(&dir) {
        handle(&lc, &dir, &existing).await;
    }
    while let Some(path) = events.recv().await {
        tracing::debug!(path = %path.display(), "inbox event");
        if is_envelope(&path) && path.parent() == Some(dir.as_path()) && path.exists() {
            handle(&lc, &dir, &path).await;
        }
    }
    Ok(())
}

fn is_envelope(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "json")
        && p.file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
}

fn list_envelopes(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_envelope(p))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn handle(lc: &Arc<Lifecycle>, dir: &Path, path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_owned()) else {
        return;
    };
    // Claim the file first so a second event for it finds nothing.
    let claimed = dir.join(format!(".{}.processing", name.to_string_lossy()));
    if fs::rename(path, &claimed).is_err() {
        return;
    }
    let bytes = match fs::metadata(&claimed) {
        Ok(m) if m.len() as usize > MAX_ENVELOPE_BYTES => {
            let mut buf = vec![0u8; MAX_ENVELOPE_BYTES + 1];
            use std::io::Read;
            let n = fs::File::open(&claimed)
                .and_then(|mut f| f.read(&mut buf))
                .unwrap_or(0);
            buf.truncate(n.max(MAX_ENVELOPE_BYTES + 1));
            buf
        }
        _ => fs::read(&claimed).unwrap_or_default(),
    };
    let sub = match lc.submit(&bytes, "inbox").await {
        Submission::Accepted { id, .. } => {
            tracing::info!(file = %name.to_string_lossy(), command = %id, "inbox: accepted");
            "done"
        }
        Submission::Rejected { rejection, .. } => {
            tracing::warn!(file = %name.to_string_lossy(), reason = rejection.reason.code(), "inbox: rejected");
            "rejected"
        }
    };
    let _ = fs::rename(&claimed, dir.join(sub).join(&name));
}
