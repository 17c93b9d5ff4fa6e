use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// A Varnish cache the agent can purge, through its admin port
/// (`varnishadm -T ADDRESS -S SECRET ban …`) or through an HTTP PURGE/BAN
/// endpoint that the operator's VCL gates with an ACL. Exactly one of
/// `admin` and `http` must be set.
///
/// The agent builds every ban itself from validated input. Bans test
/// `obj.*` headers, which the background ban lurker can evaluate, so the
/// VCL must copy the URL and host onto each object:
///
/// ```vcl
/// sub vcl_backend_response {
///     set beresp.http.x-url = bereq.url;
///     set beresp.http.x-host = bereq.http.host;
/// }
/// sub vcl_deliver {
///     unset resp.http.x-url;
///     unset resp.http.x-host;
/// }
/// ```
///
/// Key purges test `obj.http.<key_header>` (default `xkey`): a
/// space-separated list of surrogate keys the backend sends.
///
/// For the HTTP endpoint, the VCL handles PURGE (paths) and BAN (prefixes
/// in `x-ban-url`, keys in `x-ban-key`, both regexes the agent built) from
/// its ACL only:
///
/// ```vcl
/// import std;
/// acl purgers { "127.0.0.1"; }
/// sub vcl_recv {
///     if (req.method == "PURGE" || req.method == "BAN") {
///         if (client.ip !~ purgers) { return (synth(405)); }
///     }
///     if (req.method == "PURGE") { return (purge); }
///     if (req.method == "BAN" && req.http.x-ban-url) {
///         if (std.ban("obj.http.x-host == " + req.http.host + " && obj.http.x-url ~ " + req.http.x-ban-url)) {
///             return (synth(200, "Banned"));
///         }
///         return (synth(400, std.ban_error()));
///     }
///     if (req.method == "BAN" && req.http.x-ban-key) {
///         if (std.ban("obj.http.x-host == " + req.http.host + " && obj.http.xkey ~ " + req.http.x-ban-key)) {
///             return (synth(200, "Banned"));
///         }
///         return (synth(400, std.ban_error()));
///     }
/// }
/// ```
///
/// ```toml
/// [resources.edge-cache]
/// kind = "varnish"
/// host = "shop.example.com"
/// admin = { address = "127.0.0.1:6082", secret_file = "/etc/varnish/secret" }
/// verify = { url = "http://127.0.0.1:6081" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarnishConfig {
    /// Purge through the admin port.
    #[serde(default)]
    pub admin: Option<VarnishAdmin>,
    /// Purge through an HTTP PURGE/BAN endpoint.
    #[serde(default)]
    pub http: Option<VarnishHttp>,
    /// Only objects of this Host are purged (bans add
    /// `obj.http.x-host == HOST`; HTTP requests send it as Host). Without
    /// it, admin bans match every host.
    #[serde(default)]
    pub host: Option<String>,
    /// The object header holding the URL. Default: `x-url`.
    #[serde(default = "default_url_header")]
    pub url_header: String,
    /// The object header holding the host. Default: `x-host`.
    #[serde(default = "default_host_header")]
    pub host_header: String,
    /// The object header holding surrogate keys. Default: `xkey`.
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// How the agent checks, after purging paths, that each one is served
    /// from the backend again. Without it, the purge's own answer counts.
    #[serde(default)]
    pub verify: Option<VarnishVerify>,
}

/// `admin`: the varnishd management port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarnishAdmin {
    /// `-T` of varnishd, e.g. `127.0.0.1:6082`.
    pub address: String,
    /// `-S` of varnishd: the shared secret file. Read by varnishadm only;
    /// its content never enters the agent's state.
    pub secret_file: PathBuf,
    /// The varnishadm binary. Default: `varnishadm` on PATH.
    #[serde(default = "default_varnishadm")]
    pub varnishadm: PathBuf,
    /// How long one varnishadm call may take. Default: 10s.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
}

/// `http`: a PURGE/BAN endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarnishHttp {
    /// The Varnish listener the VCL accepts PURGE and BAN on, e.g.
    /// `http://127.0.0.1:6081`.
    pub url: String,
    /// How long one request may take. Default: 10s.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
}

/// `verify`: where purged paths are fetched again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VarnishVerify {
    /// The Varnish listener, e.g. `http://127.0.0.1:6081`.
    pub url: String,
    /// How long the check may take. Default: 10s.
    #[serde(default = "default_timeout", with = "crate::duration")]
    pub timeout: Duration,
}

fn default_url_header() -> String {
    "x-url".into()
}
fn default_host_header() -> String {
    "x-host".into()
}
fn default_key_header() -> String {
    "xkey".into()
}
fn default_varnishadm() -> PathBuf {
    PathBuf::from("varnishadm")
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let u = reqwest::Url::parse(url).map_err(|e| ConfigError::field(field, e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ConfigError::field(field, "must be http or https"));
    }
    Ok(())
}

impl VarnishConfig {
    /// Checks what can be checked without touching anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.admin, &self.http) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ConfigError::fields("give exactly one of admin and http"))
            }
            (Some(a), None) => {
                if a.address.parse::<std::net::SocketAddr>().is_err()
                    && !a.address.rsplit_once(':').is_some_and(|(h, p)| {
                        crate::purge::check_host(h).is_ok() && p.parse::<u16>().is_ok()
                    })
                {
                    return Err(ConfigError::field(
                        "admin.address",
                        format!("{:?} is not HOST:PORT", a.address),
                    ));
                }
                if a.timeout.is_zero() {
                    return Err(ConfigError::field(
                        "admin.timeout",
                        "must be more than zero",
                    ));
                }
            }
            (None, Some(h)) => {
                check_url("http.url", &h.url)?;
                if h.timeout.is_zero() {
                    return Err(ConfigError::field("http.timeout", "must be more than zero"));
                }
            }
        }
        if let Some(h) = &self.host {
            crate::purge::check_host(h).map_err(|e| ConfigError::field("host", e.to_string()))?;
        }
        for (field, name) in [
            ("url_header", &self.url_header),
            ("host_header", &self.host_header),
            ("key_header", &self.key_header),
        ] {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(ConfigError::field(
                    field,
                    format!("{name:?} is not a header name"),
                ));
            }
        }
        if let Some(v) = &self.verify {
            check_url("verify.url", &v.url)?;
        }
        Ok(())
    }

    /// The path fields, for resolving relative paths against the config.
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        match &mut self.admin {
            Some(a) => {
                let mut out = vec![&mut a.secret_file];
                if a.varnishadm.components().count() > 1 {
                    out.push(&mut a.varnishadm);
                }
                out
            }
            None => Vec::new(),
        }
    }
}
