use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// A Fastly service the agent can purge through Fastly's API, by URL or by
/// surrogate key, hard or soft.
///
/// ```toml
/// [resources.fastly-shop]
/// kind = "fastly"
/// service_id = "SU1Z0isxPaozGVKXdv0eY"
/// host = "www.example.com"
/// token_file = "/etc/tourniquet/fastly-token"   # or token_env = "FASTLY_API_TOKEN"
/// ```
///
/// The token needs the `purge_select` scope. It is read at each purge, so
/// rotating the file needs no restart, and it never enters a state,
/// receipt or log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastlyConfig {
    /// The service whose cache is purged by surrogate key.
    pub service_id: String,
    /// The host of the cached URLs that `paths` purges.
    pub host: String,
    /// A file holding the API token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the API token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The API. Default: `https://api.fastly.com`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The CA bundle that verifies the API. Default: the system bundle.
    #[serde(default = "default_ca_file")]
    pub ca_file: PathBuf,
    /// How long one API call may take. Default: 10s.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
    /// How many times a rate-limited (429) call is retried. Default: 3.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The longest Retry-After honoured; a longer one fails the purge at
    /// once. Default: 60s.
    #[serde(default = "default_max_retry_wait", with = "crate::duration")]
    pub max_retry_wait: Duration,
}

fn default_api_url() -> String {
    "https://api.fastly.com".into()
}

/// Defaults and checks the cloudflare config shares.
pub(crate) mod shared {
    pub(crate) use super::{
        check_api_url, default_ca_file, default_max_retries, default_max_retry_wait,
        default_timeout,
    };
}
pub(crate) fn default_ca_file() -> PathBuf {
    PathBuf::from(crate::cdn::DEFAULT_CA_FILE)
}
pub(crate) fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn default_max_retries() -> u32 {
    3
}
pub(crate) fn default_max_retry_wait() -> Duration {
    Duration::from_secs(60)
}

/// An `https://` base URL with no query.
pub(crate) fn check_api_url(url: &str) -> Result<(), ConfigError> {
    let u = reqwest::Url::parse(url).map_err(|e| ConfigError::field("api_url", e.to_string()))?;
    if u.scheme() != "https" || u.query().is_some() || u.host_str().is_none() {
        return Err(ConfigError::field(
            "api_url",
            "must be an https:// URL without a query",
        ));
    }
    Ok(())
}

impl FastlyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.service_id.is_empty() || !self.service_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ConfigError::field(
                "service_id",
                "must be Fastly's alphanumeric service id",
            ));
        }
        crate::purge::check_host(&self.host)
            .map_err(|e| ConfigError::field("host", e.to_string()))?;
        crate::cdn::check_token_source(self.token_file.as_deref(), self.token_env.as_deref())?;
        check_api_url(&self.api_url)?;
        if self.timeout.is_zero() {
            return Err(ConfigError::field("timeout", "must be more than zero"));
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
