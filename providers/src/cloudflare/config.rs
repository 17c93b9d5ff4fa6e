use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

use crate::fastly::config_defaults as d;

/// A Cloudflare zone the agent can purge through Cloudflare's API, by URL,
/// prefix, cache tag or hostname.
///
/// ```toml
/// [resources.cloudflare-shop]
/// kind = "cloudflare"
/// zone_id = "023e105f4ecef8ad9ca31a8372d0c353"
/// host = "www.example.com"
/// token_env = "CLOUDFLARE_API_TOKEN"     # or token_file = "…"
/// ```
///
/// The token needs the zone's "Cache Purge" permission. It is read at each
/// purge and never enters a state, receipt or log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudflareConfig {
    /// The zone whose cache is purged (32 hex digits).
    pub zone_id: String,
    /// The host that `paths` and `prefixes` belong to.
    pub host: String,
    /// The scheme of the cached URLs that `paths` purges. Default: `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// A file holding the API token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the API token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The API. Default: `https://api.cloudflare.com/client/v4`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The CA bundle that verifies the API. Default: the system bundle.
    #[serde(default = "d::default_ca_file")]
    pub ca_file: PathBuf,
    /// How long one API call may take. Default: 10s.
    #[serde(default = "d::default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// How many times a rate-limited (429) call is retried. Default: 3.
    #[serde(default = "d::default_max_retries")]
    pub max_retries: u32,
    /// The longest Retry-After honoured. Default: 60s.
    #[serde(default = "d::default_max_retry_wait", with = "crate::duration")]
    pub max_retry_wait: Duration,
    /// Items per API call; Cloudflare's limit depends on the plan. Default: 30.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_scheme() -> String {
    "https".into()
}
fn default_api_url() -> String {
    "https://api.cloudflare.com/client/v4".into()
}
fn default_batch() -> usize {
    30
}

impl CloudflareConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.zone_id.len() != 32 || !self.zone_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::field(
                "zone_id",
                "must be the zone's 32-hex-digit id",
            ));
        }
        crate::purge::check_host(&self.host)
            .map_err(|e| ConfigError::field("host", e.to_string()))?;
        if !matches!(self.scheme.as_str(), "http" | "https") {
            return Err(ConfigError::field("scheme", "must be http or https"));
        }
        crate::cdn::check_token_source(self.token_file.as_deref(), self.token_env.as_deref())?;
        d::check_api_url(&self.api_url)?;
        if self.timeout.is_zero() {
            return Err(ConfigError::field("timeout", "must be more than zero"));
        }
        if !(1..=500).contains(&self.batch) {
            return Err(ConfigError::field("batch", "must be between 1 and 500"));
        }
        Ok(())
    }

    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut out = vec![&mut self.ca_file];
        out.extend(self.token_file.as_mut());
        out
    }

    pub(crate) fn token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }
}
