//! What the HTTP-API cache providers (fastly, cloudflare) share: the API
//! token, read from a file or an environment variable named in the config
//! (never from a command, never into a state), an HTTPS client that trusts
//! a configured CA bundle, and rate limits honoured.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::{ConfigError, ProviderError};

/// The CA bundle Debian's ca-certificates installs.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Reads the API token. Exactly one source must be configured.
pub fn read_token(file: Option<&Path>, env: Option<&str>) -> Result<String, ProviderError> {
    let token = match (file, env) {
        (Some(f), None) => std::fs::read_to_string(f)
            .map_err(|e| ProviderError::io(format!("reading the token file {}", f.display()), e))?,
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| ProviderError::Failed(format!("the token variable {var} is not set")))?,
        _ => {
            return Err(ProviderError::Failed(
                "give exactly one of token_file and token_env".into(),
            ))
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() || token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ProviderError::Failed(
            "the API token is empty or malformed".into(),
        ));
    }
    Ok(token)
}

/// Config-time check of the token source.
pub fn check_token_source(file: Option<&Path>, env: Option<&str>) -> Result<(), ConfigError> {
    match (file, env) {
        (Some(f), None) if !f.as_os_str().is_empty() => Ok(()),
        (None, Some(v))
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Ok(())
        }
        (Some(_), Some(_)) => Err(ConfigError::fields(
            "give only one of token_file and token_env",
        )),
        _ => Err(ConfigError::fields(
            "give token_file (a file holding the API token) or token_env (the variable holding it)",
        )),
    }
}

/// A client for one vendor API.
pub struct ApiClient {
    ca_file: PathBuf,
    timeout: Duration,
    max_retries: u32,
    max_retry_wait: Duration,
    client: OnceLock<reqwest::Client>,
}

/// What one call saw: the final status and JSON body, and each rate-limit
/// wait honoured on the way (seconds, from Retry-After).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub waited: Vec<u64>,
}

impl ApiClient {
    pub fn new(
        ca_file: PathBuf,
        timeout: Duration,
        max_retries: u32,
        max_retry_wait: Duration,
    ) -> Self {
        ApiClient {
            ca_file,
            timeout,
            max_retries,
            max_retry_wait,
            client: OnceLock::new(),
        }
    }

    /// Built on first use, so `--check` reads no CA file.
    fn client(&self) -> Result<&reqwest::Client, ProviderError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let pem = std::fs::read(&self.ca_file).map_err(|e| {
            ProviderError::io(
                format!("reading the CA bundle {}", self.ca_file.display()),
                e,
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ProviderError::http(format!("{} is not a PEM bundle", self.ca_file.display()), e)
        })?;
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout);
        for c in certs {
            b = b.add_root_certificate(c);
        }
        let client = b
            .build()
            .map_err(|e| ProviderError::http("building the HTTPS client", e))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Sends the request `build` makes, again after each 429 for as long as
    /// Retry-After says (up to `max_retries` times; a wait longer than
    /// `max_retry_wait` fails at once instead). `what` names the call in
    /// errors; the token never appears in them.
    pub async fn send(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Answer, ProviderError> {
        let client = self.client()?;
        let mut waited = Vec::new();
        loop {
            let resp = build(client)
                .send()
                .await
                .map_err(|e| ProviderError::http(what, e))?;
            let status = resp.status().as_u16();
            if status == 429 {
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                if waited.len() as u32 >= self.max_retries {
                    return Err(ProviderError::Failed(format!(
                        "{what}: still rate limited (429) after {} retries",
                        waited.len()
                    )));
                }
                if Duration::from_secs(wait) > self.max_retry_wait {
                    return Err(ProviderError::Failed(format!(
                        "{what}: rate limited (429), Retry-After {wait}s is longer than max_retry_wait"
                    )));
                }
                waited.push(wait);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            let text = resp.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Ok(Answer {
                status,
                body,
                waited,
            });
        }
    }
}

/// Short, single-line excerpt of an API answer, for errors.
pub fn excerpt(body: &Value) -> String {
    let s = body.to_string();
    let s: String = s.chars().filter(|c| !c.is_control()).take(300).collect();
    s
}
