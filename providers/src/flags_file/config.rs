use std::path::PathBuf;

use serde::Deserialize;

use crate::ConfigError;

/// A flags file in the flagd / OpenFeature flag-definition format.
///
/// ```toml
/// [resources.checkout-flags]
/// kind = "flags-file"
/// path = "/etc/checkout/flags.json"
/// # follow_symlinks = false   # a symlink at `path` is refused
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsFileConfig {
    /// The flag-definition file the service's flagd provider reads. It must
    /// exist and be valid when the agent starts.
    pub path: PathBuf,
    /// Where the last copy that passed validation is kept, so an operator
    /// can restore it by hand. Default: `.<file name>.last-good` beside it.
    #[serde(default)]
    pub last_known_good: Option<PathBuf>,
    /// Whether `path` may be a symlink. Default false: a symlink there is
    /// refused at `--check` and at start, because anyone who can write its
    /// directory could point it at any file the agent (root) would then
    /// overwrite. With true, the link is resolved once, at start, and the
    /// agent writes the file it points at (by atomic rename in that file's
    /// directory); re-pointing the link takes a restart. The
    /// last-known-good copy is never written through a link.
    #[serde(default)]
    pub follow_symlinks: bool,
}

impl FlagsFileConfig {
    /// Checks what can be checked without touching the file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::field("path", "must not be empty"));
        }
        if self.path.file_name().is_none() {
            return Err(ConfigError::field(
                "path",
                format!("{} names no file", self.path.display()),
            ));
        }
        Ok(())
    }

    /// The resolved last-known-good path.
    pub fn last_known_good_path(&self) -> PathBuf {
        match &self.last_known_good {
            Some(p) => p.clone(),
            None => {
                let name = self
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.path.with_file_name(format!(".{name}.last-good"))
            }
        }
    }
}
