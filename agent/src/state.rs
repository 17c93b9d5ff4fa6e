//! The agent's state directory: private by construction (0700 directory,
//! 0600 files), because it holds the agent's signing key and the journal.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::keys::{self, Signer};

/// Creates `dir` (and parents) as 0700; tightens an existing one.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut perm = fs::metadata(dir)?.permissions();
    if perm.mode() & 0o077 != 0 {
        perm.set_mode(0o700);
        fs::set_permissions(dir, perm)?;
    }
    Ok(())
}

/// The agent's receipt-signing key, generated at first start.
pub fn load_or_create_agent_key(
    state_dir: &Path,
    agent_id: &str,
) -> Result<(Signer, bool), String> {
    let path = state_dir.join("agent_ed25519");
    let created = if path.exists() {
        let mode = fs::metadata(&path)
            .map_err(|e| e.to_string())?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{}: the agent key is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
        false
    } else {
        keys::generate_keypair(&path, &format!("tourniquet-agent@{agent_id}"))
            .map_err(|e| e.to_string())?;
        true
    };
    let signer = Signer::load(&path).map_err(|e| e.to_string())?;
    Ok((signer, created))
}
