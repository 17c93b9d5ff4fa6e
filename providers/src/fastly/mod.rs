//! `fastly`: `cdn.purge {paths | surrogate_keys, soft?}` through Fastly's purge API.
//!
//! API reference: <https://www.fastly.com/documentation/reference/api/purging/>
//! - purge a URL: `POST /purge/{cached_url}`, where the cached URL is the
//!   host and path without a scheme;
//! - purge surrogate keys: `POST /service/{service_id}/purge` with the JSON
//!   body `{"surrogate_keys": [...]}` (up to 256 keys);
//! - both authenticate with the `Fastly-Key` header, and a
//!   `Fastly-Soft-Purge: 1` header marks objects stale instead of evicting
//!   them.
//!
//! A purge cannot be undone, so it is not reversible. Rate limits (429 with
//! Retry-After) are waited out, within bounds the config sets.

mod config;
mod declare;

pub(crate) use config::shared as config_defaults;

use async_trait::async_trait;
use serde_json::{json, Value};

pub use config::FastlyConfig;
pub use declare::KIND;

use crate::cdn::{excerpt, read_token, ApiClient};
use crate::purge::{Accepts, Cache, Purge, Target};
use crate::{ProviderError, State};

/// The runtime of one `fastly` resource.
pub struct Fastly {
    config: FastlyConfig,
    api: ApiClient,
}

impl Fastly {
    pub fn new(config: FastlyConfig) -> Self {
        let api = ApiClient::new(
            config.ca_file.clone(),
            config.timeout,
            config.max_retries,
            config.max_retry_wait,
        );
        Fastly { config, api }
    }

    fn base(&self) -> &str {
        self.config.api_url.trim_end_matches('/')
    }

    /// The requests a purge makes: (method, URL path, JSON body).
    fn requests(&self, p: &Purge) -> Vec<(String, Option<Value>)> {
        match &p.target {
            Target::Paths(paths) => paths
                .iter()
                .map(|path| (format!("/purge/{}{path}", self.config.host), None))
                .collect(),
            Target::Keys(keys) => vec![(
                format!("/service/{}/purge", self.config.service_id),
                Some(json!({"surrogate_keys": keys})),
            )],
            _ => Vec::new(),
        }
    }
}

#[async_trait]
impl Cache for Fastly {
    fn kind(&self) -> &'static str {
        "fastly"
    }

    fn accepts(&self) -> Accepts {
        Accepts {
            by: &["paths", "surrogate_keys"],
            soft: true,
            wildcard: false,
        }
    }

    fn idle(&self, p: &Purge) -> State {
        json!({"purge": p.target, "soft": p.soft, "purged": false})
    }

    fn planned(&self, p: &Purge) -> State {
        let calls: Vec<String> = self
            .requests(p)
            .into_iter()
            .map(|(path, _)| format!("POST {path}"))
            .collect();
        json!({"purge": p.target, "soft": p.soft, "purged": true, "calls": calls})
    }

    async fn purge(&self, p: &Purge) -> Result<State, ProviderError> {
        let token = read_token(self.config.token_file(), self.config.token_env.as_deref())?;
        let mut ids = Vec::new();
        let mut waited = Vec::new();
        for (path, body) in self.requests(p) {
            let url = format!("{}{path}", self.base());
            let what = format!("fastly POST {path}");
            let answer = self
                .api
                .send(&what, |c| {
                    let mut r = c
                        .post(&url)
                        .header("Fastly-Key", &token)
                        .header(reqwest::header::ACCEPT, "application/json");
                    if p.soft {
                        r = r.header("Fastly-Soft-Purge", "1");
                    }
                    match &body {
                        Some(b) => r.json(b),
                        None => r,
                    }
                })
                .await?;
            waited.extend(answer.waited);
            if !(200..300).contains(&answer.status) {
                return Err(ProviderError::Failed(format!(
                    "{what} answered {}: {}",
                    answer.status,
                    excerpt(&answer.body)
                )));
            }
            // A URL purge answers {"status":"ok","id":…}; a key purge
            // answers {"key": "purge id", …}.
            match answer.body.get("id").and_then(Value::as_str) {
                Some(id) => ids.push(Value::String(id.to_string())),
                None => ids.push(answer.body.clone()),
            }
        }
        Ok(json!({
            "purge": p.target,
            "soft": p.soft,
            "purged": true,
            "purge_ids": ids,
            "rate_limit_waits_s": waited,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::purge::Purger;
    use crate::{ActionSpec, Provider};
    use std::time::Duration;

    fn provider() -> Purger<Fastly> {
        Purger(Fastly::new(FastlyConfig {
            service_id: "SU1Z0isxPaozGVKXdv0eY".into(),
            host: "www.example.com".into(),
            token_file: None,
            token_env: Some("FASTLY_API_TOKEN".into()),
            api_url: "https://api.fastly.com".into(),
            ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
            timeout: Duration::from_secs(1),
            max_retries: 3,
            max_retry_wait: Duration::from_secs(60),
        }))
    }

    fn spec(params: Value) -> ActionSpec {
        ActionSpec {
            op: "cdn.purge".into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn requests_follow_the_api() {
        let f = provider();
        let p = f
            .parse(&spec(json!({"paths": ["/a.css"], "soft": true})))
            .unwrap();
        assert_eq!(
            f.0.requests(&p),
            vec![("/purge/www.example.com/a.css".to_string(), None)]
        );
        let p = f.parse(&spec(json!({"keys": ["b", "a"]}))).unwrap();
        assert_eq!(
            f.0.requests(&p),
            vec![(
                "/service/SU1Z0isxPaozGVKXdv0eY/purge".to_string(),
                Some(json!({"surrogate_keys": ["a", "b"]}))
            )]
        );
        for bad in [json!({"prefixes": ["/a"]}), json!({"hosts": ["a.example"]})] {
            assert!(f.validate(&spec(bad)).is_err());
        }
        assert!(!f.reversible("cdn.purge"));
    }
}
