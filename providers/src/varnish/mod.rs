//! `varnish`: `cdn.purge {paths | prefixes | surrogate_keys}` on a Varnish cache.
//!
//! The agent builds each ban from validated input; no VCL and no ban
//! expression ever comes from a command. Bans test `obj.http.*` headers
//! (see [`VarnishConfig`]), so the ban lurker can retire them in the
//! background instead of every lookup testing a growing list of `req.*`
//! bans. After purging paths, the agent fetches each one and checks that it
//! came from the backend again: a single transaction id in `X-Varnish`, or
//! an `Age` no older than the purge.
//!
//! A purge cannot be undone, so it is not reversible.

mod config;
mod declare;

use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

pub use config::{VarnishAdmin, VarnishConfig, VarnishHttp, VarnishVerify};
pub use declare::KIND;

use crate::purge::{regex_literal, Accepts, Cache, Purge, Target};
use crate::{ProviderError, State};

/// Purged paths checked after a purge, at most.
const MAX_VERIFIED: usize = 16;

/// Matches any of `alternatives` as a whole key in a key list, whatever
/// separates the keys: a boundary is any character a key cannot hold. No
/// spaces, so it survives unquoted in a VCL `ban()` string too.
fn key_pattern(alternatives: &str) -> String {
    format!("(^|[^A-Za-z0-9_.:/-])({alternatives})([^A-Za-z0-9_.:/-]|$)")
}

/// The runtime of one `varnish` resource.
pub struct Varnish {
    config: VarnishConfig,
    client: reqwest::Client,
}

impl Varnish {
    pub fn new(config: VarnishConfig) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProviderError::http("building the HTTP client", e))?;
        Ok(Varnish { config, client })
    }

    /// The obj.* ban expression for a purge (admin mode).
    fn ban_expression(&self, p: &Purge) -> String {
        let c = &self.config;
        let alternatives = |items: &[String]| {
            items
                .iter()
                .map(|s| regex_literal(s))
                .collect::<Vec<_>>()
                .join("|")
        };
        let test = match &p.target {
            Target::Paths(v) => format!("obj.http.{} ~ \"^({})$\"", c.url_header, alternatives(v)),
            Target::Prefixes(v) => {
                format!("obj.http.{} ~ \"^({})\"", c.url_header, alternatives(v))
            }
            Target::Keys(v) => format!(
                "obj.http.{} ~ \"{}\"",
                c.key_header,
                key_pattern(&alternatives(v))
            ),
            Target::Hosts(v) => format!("obj.http.{} ~ \"^({})$\"", c.host_header, alternatives(v)),
        };
        match &c.host {
            Some(h) => format!("obj.http.{} == \"{h}\" && {test}", c.host_header),
            None => test,
        }
    }

    async fn ban_admin(&self, a: &VarnishAdmin, expr: &str) -> Result<(), ProviderError> {
        // varnishadm joins its arguments into one CLI line; the whole
        // command goes as one argument so nothing is re-split.
        let line = format!("ban {expr}");
        let mut cmd = tokio::process::Command::new(&a.varnishadm);
        cmd.arg("-T")
            .arg(&a.address)
            .arg("-S")
            .arg(&a.secret_file)
            .arg(&line)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| ProviderError::io(format!("cannot run {}", a.varnishadm.display()), e))?;
        let out = tokio::time::timeout(a.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                ProviderError::Failed(format!(
                    "varnishadm did not answer within {}",
                    humantime::format_duration(a.timeout)
                ))
            })?
            .map_err(|e| ProviderError::io("varnishadm", e))?;
        if !out.status.success() {
            let text = format!(
                "{} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Err(ProviderError::Failed(format!(
                "varnishadm ban failed ({}): {}",
                out.status,
                text.trim()
            )));
        }
        Ok(())
    }

    async fn send(
        &self,
        h: &VarnishHttp,
        method: &str,
        path: &str,
        header: Option<(&str, String)>,
    ) -> Result<(), ProviderError> {
        let url = format!("{}{path}", h.url.trim_end_matches('/'));
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ProviderError::Failed(e.to_string()))?;
        let mut req = self.client.request(m, &url).timeout(h.timeout);
        if let Some(host) = &self.config.host {
            req = req.header(reqwest::header::HOST, host);
        }
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ProviderError::http(format!("{method} {path}"), e))?;
        if !resp.status().is_success() {
            return Err(ProviderError::Failed(format!(
                "{method} {path} answered {}",
                resp.status()
            )));
        }
        Ok(())
    }

    async fn purge_http(&self, h: &VarnishHttp, p: &Purge) -> Result<Vec<String>, ProviderError> {
        let alternatives = |items: &[String]| {
            items
                .iter()
                .map(|s| regex_literal(s))
                .collect::<Vec<_>>()
                .join("|")
        };
        match &p.target {
            Target::Paths(v) => {
                for path in v {
                    self.send(h, "PURGE", path, None).await?;
                }
                Ok(v.iter().map(|p| format!("PURGE {p}")).collect())
            }
            Target::Prefixes(v) => {
                let re = format!("^({})", alternatives(v));
                self.send(h, "BAN", "/", Some(("x-ban-url", re.clone())))
                    .await?;
                Ok(vec![format!("BAN x-ban-url: {re}")])
            }
            Target::Keys(v) => {
                let re = key_pattern(&alternatives(v));
                self.send(h, "BAN", "/", Some(("x-ban-key", re.clone())))
                    .await?;
                Ok(vec![format!("BAN x-ban-key: {re}")])
            }
            Target::Hosts(_) => Err(ProviderError::Invalid(
                "a varnish resource cannot purge by hosts".into(),
            )),
        }
    }

    /// Fetches each purged path until it is seen coming from the backend.
    async fn verify(&self, p: &Purge, since: Instant) -> Result<Vec<Value>, ProviderError> {
        let (Some(v), Target::Paths(paths)) = (&self.config.verify, &p.target) else {
            return Ok(Vec::new());
        };
        let base = v.url.trim_end_matches('/');
        let deadline = Instant::now() + v.timeout;
        let mut seen = Vec::new();
        for path in paths.iter().take(MAX_VERIFIED) {
            loop {
                let mut req = self.client.get(format!("{base}{path}"));
                if let Some(h) = &self.config.host {
                    req = req.header(reqwest::header::HOST, h);
                }
                let result = req.send().await;
                let why = match result {
                    Ok(resp) => {
                        let header = |n: &str| {
                            resp.headers()
                                .get(n)
                                .and_then(|h| h.to_str().ok())
                                .map(str::to_string)
                        };
                        let xv = header("x-varnish").unwrap_or_default();
                        let age: Option<u64> = header("age").and_then(|a| a.parse().ok());
                        let ids = xv.split_whitespace().count();
                        let max_age = since.elapsed().as_secs() + 1;
                        if ids == 1 || age.is_some_and(|a| a <= max_age) {
                            seen.push(json!({
                                "path": path,
                                "status": resp.status().as_u16(),
                                "x_varnish": xv,
                                "age": age,
                                "from_backend": ids == 1,
                            }));
                            break;
                        }
                        format!("GET {path}: still cached (X-Varnish {xv:?}, Age {age:?})")
                    }
                    Err(e) => format!("GET {path}: {e}"),
                };
                if Instant::now() >= deadline {
                    return Err(ProviderError::Failed(format!(
                        "purged, but the check failed: {why}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(seen)
    }
}

#[async_trait]
impl Cache for Varnish {
    fn kind(&self) -> &'static str {
        "varnish"
    }

    fn accepts(&self) -> Accepts {
        Accepts {
            by: &["paths", "prefixes", "surrogate_keys"],
            soft: false,
            wildcard: false,
        }
    }

    fn planned(&self, p: &Purge) -> State {
        let how = match (&self.config.admin, &self.config.http) {
            (Some(_), _) => vec![format!("ban {}", self.ban_expression(p))],
            _ => vec![format!("{} via the HTTP endpoint", p.target.kind())],
        };
        json!({"purge": p.target, "purged": true, "requests": how})
    }

    async fn purge(&self, p: &Purge) -> Result<State, ProviderError> {
        let since = Instant::now();
        let requests = match (&self.config.admin, &self.config.http) {
            (Some(a), _) => {
                let expr = self.ban_expression(p);
                self.ban_admin(a, &expr).await?;
                vec![format!("ban {expr}")]
            }
            (None, Some(h)) => self.purge_http(h, p).await?,
            (None, None) => {
                return Err(ProviderError::Failed(
                    "neither admin nor http is configured".into(),
                ))
            }
        };
        let verified = self.verify(p, since).await?;
        Ok(json!({
            "purge": p.target,
            "purged": true,
            "requests": requests,
            "verified": verified,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::purge::Purger;
    use crate::{ActionSpec, Provider};

    fn provider(host: Option<&str>) -> Purger<Varnish> {
        Purger(
            Varnish::new(VarnishConfig {
                admin: Some(VarnishAdmin {
                    address: "127.0.0.1:6082".into(),
                    secret_file: "/etc/varnish/secret".into(),
                    varnishadm: "varnishadm".into(),
                    timeout: Duration::from_secs(1),
                }),
                http: None,
                host: host.map(String::from),
                url_header: "x-url".into(),
                host_header: "x-host".into(),
                key_header: "xkey".into(),
                verify: None,
            })
            .unwrap(),
        )
    }

    fn spec(params: Value) -> ActionSpec {
        ActionSpec {
            op: "cdn.purge".into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn bans_are_obj_only_and_built_from_validated_input() {
        let v = provider(Some("shop.example.com"));
        let p = v
            .parse(&spec(json!({"paths": ["/a.css", "/b?x=1"]})))
            .unwrap();
        assert_eq!(
            v.0.ban_expression(&p),
            "obj.http.x-host == \"shop.example.com\" && obj.http.x-url ~ \"^(/a[.]css|/b[?]x=1)$\""
        );
        let p = v.parse(&spec(json!({"prefixes": ["/static/"]}))).unwrap();
        assert!(v
            .0
            .ban_expression(&p)
            .ends_with("obj.http.x-url ~ \"^(/static/)\""));
        let v = provider(None);
        let p = v
            .parse(&spec(json!({"keys": ["product-1", "all"]})))
            .unwrap();
        assert_eq!(
            v.0.ban_expression(&p),
            "obj.http.xkey ~ \"(^|[^A-Za-z0-9_.:/-])(all|product-1)([^A-Za-z0-9_.:/-]|$)\""
        );
        for p in [
            v.parse(&spec(json!({"paths": ["/a"]}))).unwrap(),
            v.parse(&spec(json!({"keys": ["k"]}))).unwrap(),
        ] {
            assert!(!v.0.ban_expression(&p).contains("req."));
        }
    }

    #[test]
    fn raw_vcl_and_unsupported_targets_are_invalid() {
        let v = provider(None);
        for bad in [
            json!({"ban": "req.url ~ ."}),
            json!({"paths": ["/a\" && obj.status != 0 && obj.http.x ~ \""]}),
            json!({"paths": ["/a\nban.discard"]}),
            json!({"hosts": ["shop.example.com"]}),
            json!({"paths": ["/a"], "soft": true}),
        ] {
            assert!(
                matches!(
                    v.validate(&spec(bad.clone())),
                    Err(ProviderError::Invalid(_))
                ),
                "{bad}"
            );
        }
        assert!(!v.reversible("cdn.purge"));
    }
}
