//! `cloudflare`: `cdn.purge {paths | prefixes | tags | hosts}` through
//! Cloudflare's purge API.
//!
//! API reference: <https://developers.cloudflare.com/api/resources/cache/methods/purge/>
//! and <https://developers.cloudflare.com/cache/how-to/purge-cache/>:
//! `POST /zones/{zone_id}/purge_cache` with `Authorization: Bearer TOKEN`
//! and one of the JSON bodies `{"files": [URL…]}`,
//! `{"prefixes": ["host/path"…]}` (no scheme), `{"tags": [...]}` or
//! `{"hosts": [...]}`. It answers `{"success": true, "result": {"id": …}}`.
//! Keys are sent as cache tags.
//!
//! A purge cannot be undone, so it is not reversible. Rate limits (429 with
//! Retry-After) are waited out, within bounds the config sets.

mod config;
mod declare;

use async_trait::async_trait;
use serde_json::{json, Value};

pub use config::CloudflareConfig;
pub use declare::KIND;

use crate::cdn::{excerpt, read_token, ApiClient};
use crate::purge::{Accepts, Cache, Purge, Target};
use crate::{ProviderError, State};

/// The runtime of one `cloudflare` resource.
pub struct Cloudflare {
    config: CloudflareConfig,
    api: ApiClient,
}

impl Cloudflare {
    pub fn new(config: CloudflareConfig) -> Self {
        let api = ApiClient::new(
            config.ca_file.clone(),
            config.timeout,
            config.max_retries,
            config.max_retry_wait,
        );
        Cloudflare { config, api }
    }

    /// The JSON bodies a purge sends, one per batch.
    fn bodies(&self, p: &Purge) -> Vec<Value> {
        let c = &self.config;
        let (field, items): (&str, Vec<String>) = match &p.target {
            Target::Paths(v) => (
                "files",
                v.iter()
                    .map(|path| format!("{}://{}{path}", c.scheme, c.host))
                    .collect(),
            ),
            Target::Prefixes(v) => (
                "prefixes",
                v.iter().map(|path| format!("{}{path}", c.host)).collect(),
            ),
            Target::Keys(v) => ("tags", v.clone()),
            Target::Hosts(v) => ("hosts", v.clone()),
        };
        items
            .chunks(c.batch.max(1))
            .map(|chunk| json!({ field: chunk }))
            .collect()
    }
}

#[async_trait]
impl Cache for Cloudflare {
    fn kind(&self) -> &'static str {
        "cloudflare"
    }

    fn accepts(&self) -> Accepts {
        Accepts {
            by: &["paths", "prefixes", "tags", "hosts"],
            soft: false,
            wildcard: false,
        }
    }

    fn planned(&self, p: &Purge) -> State {
        json!({"purge": p.target, "purged": true, "bodies": self.bodies(p)})
    }

    async fn purge(&self, p: &Purge) -> Result<State, ProviderError> {
        let token = read_token(self.config.token_file(), self.config.token_env.as_deref())?;
        let url = format!(
            "{}/zones/{}/purge_cache",
            self.config.api_url.trim_end_matches('/'),
            self.config.zone_id
        );
        let mut ids = Vec::new();
        let mut waited = Vec::new();
        for body in self.bodies(p) {
            let what = "cloudflare POST purge_cache";
            let answer = self
                .api
                .send(what, |c| c.post(&url).bearer_auth(&token).json(&body))
                .await?;
            waited.extend(answer.waited);
            let ok = answer.body.get("success").and_then(Value::as_bool) == Some(true);
            if !(200..300).contains(&answer.status) || !ok {
                return Err(ProviderError::Failed(format!(
                    "{what} answered {}: {}",
                    answer.status,
                    excerpt(&answer.body)
                )));
            }
            if let Some(id) = answer.body.pointer("/result/id").and_then(Value::as_str) {
                ids.push(id.to_string());
            }
        }
        Ok(json!({
            "purge": p.target,
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

    fn provider(batch: usize) -> Purger<Cloudflare> {
        Purger(Cloudflare::new(CloudflareConfig {
            zone_id: "023e105f4ecef8ad9ca31a8372d0c353".into(),
            host: "www.example.com".into(),
            scheme: "https".into(),
            token_file: None,
            token_env: Some("CLOUDFLARE_API_TOKEN".into()),
            api_url: "https://api.cloudflare.com/client/v4".into(),
            ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
            timeout: Duration::from_secs(1),
            max_retries: 3,
            max_retry_wait: Duration::from_secs(60),
            batch,
        }))
    }

    fn spec(params: Value) -> ActionSpec {
        ActionSpec {
            op: "cdn.purge".into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn bodies_follow_the_api_and_are_batched() {
        let c = provider(2);
        let p = c
            .parse(&spec(json!({"paths": ["/a", "/b", "/c"]})))
            .unwrap();
        assert_eq!(
            c.0.bodies(&p),
            vec![
                json!({"files": ["https://www.example.com/a", "https://www.example.com/b"]}),
                json!({"files": ["https://www.example.com/c"]}),
            ]
        );
        let p = c.parse(&spec(json!({"prefixes": ["/static/"]}))).unwrap();
        assert_eq!(
            c.0.bodies(&p),
            vec![json!({"prefixes": ["www.example.com/static/"]})]
        );
        let p = c.parse(&spec(json!({"tags": ["product"]}))).unwrap();
        assert_eq!(c.0.bodies(&p), vec![json!({"tags": ["product"]})]);
        let p = c
            .parse(&spec(json!({"hosts": ["img.example.com"]})))
            .unwrap();
        assert_eq!(c.0.bodies(&p), vec![json!({"hosts": ["img.example.com"]})]);
        assert!(c
            .validate(&spec(json!({"paths": ["/a"], "soft": true})))
            .is_err());
    }
}
