//! The agent config (`agent.toml`).
//!
//! Everything a command may touch is declared here by name; commands carry
//! names, never paths or URLs. The whole config is parsed and validated
//! before anything is built, and an error names the file, line and key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tourniquet_providers::ResourceConfig;

use crate::command::payload::Guard;

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {why}")]
    Read { path: String, why: String },
    /// Already formatted as `FILE:LINE:COL: message`.
    #[error("{0}")]
    Parse(String),
    #[error("{path}: {field}: {why}")]
    Invalid {
        path: String,
        field: String,
        why: String,
    },
}

/// `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    #[serde(default)]
    pub api: ApiSection,
    /// A directory watched for dropped envelopes.
    #[serde(default)]
    pub inbox: Option<InboxSection>,
    /// Resources commands may change, by name.
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceEntry>,
    /// Probes guards may name.
    #[serde(default)]
    pub probes: BTreeMap<String, ProbeConfig>,
    /// Join a fleet over NATS JetStream.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// How much history the state dir keeps.
    #[serde(default)]
    pub retention: RetentionSection,
}

/// `[retention]`: bounds on what the state dir keeps. The journal is
/// compacted on its own; these bound the audit log and the receipts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// Sealed audit segments older than this are deleted (default 90d).
    #[serde(default = "default_audit_age")]
    pub audit: crate::command::payload::HumanDuration,
    /// Most sealed audit segments kept (default 16).
    #[serde(default = "default_audit_segments")]
    pub audit_segments: usize,
    /// The active audit log is sealed into a segment past this many bytes
    /// (default 64 MiB).
    #[serde(default = "default_audit_segment_bytes")]
    pub audit_segment_bytes: u64,
    /// Receipts older than this are deleted, a segment at a time (default 30d).
    #[serde(default = "default_receipts_age")]
    pub receipts: crate::command::payload::HumanDuration,
    /// Most receipts kept, a segment at a time (default 100000).
    #[serde(default = "default_receipts_count")]
    pub receipts_count: u64,
}

fn default_audit_age() -> crate::command::payload::HumanDuration {
    crate::command::payload::HumanDuration(std::time::Duration::from_secs(90 * 24 * 3600))
}
fn default_audit_segments() -> usize {
    16
}
fn default_audit_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_receipts_age() -> crate::command::payload::HumanDuration {
    crate::command::payload::HumanDuration(std::time::Duration::from_secs(30 * 24 * 3600))
}
fn default_receipts_count() -> u64 {
    100_000
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            audit: default_audit_age(),
            audit_segments: default_audit_segments(),
            audit_segment_bytes: default_audit_segment_bytes(),
            receipts: default_receipts_age(),
            receipts_count: default_receipts_count(),
        }
    }
}

impl RetentionSection {
    /// The store's limits from these settings.
    pub fn limits(&self) -> crate::lifecycle::store::StoreLimits {
        crate::lifecycle::store::StoreLimits {
            audit: crate::audit::AuditLimits {
                segment_bytes: self.audit_segment_bytes,
                max_segments: self.audit_segments,
                max_age: self.audit.0,
            },
            receipts: crate::lifecycle::store::receipts::ReceiptLimits {
                segment_bytes: (self.audit_segment_bytes / 8).clamp(64 * 1024, 8 * 1024 * 1024),
                max_count: self.receipts_count,
                max_age: self.receipts.0,
            },
        }
    }

    /// Bounds that keep the store usable.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.audit_segment_bytes < 64 * 1024 {
            return Err((
                "retention.audit_segment_bytes".into(),
                "must be at least 65536".into(),
            ));
        }
        if self.audit_segments == 0 {
            return Err((
                "retention.audit_segments".into(),
                "must be at least 1".into(),
            ));
        }
        if self.receipts_count == 0 {
            return Err((
                "retention.receipts_count".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// `[nats]`: fleet commands over NATS JetStream (see `crate::transport::nats::fleet`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// Server URLs, comma-separated, e.g. `nats://10.0.0.5:4222,nats://10.0.0.6:4222`.
    pub url: String,
    /// The fleet this agent belongs to: commands arrive on `tourniquet.cmd.<fleet>`.
    pub fleet: String,
    /// A NATS credentials file (JWT + nkey seed) for a least-privilege user
    /// (see infra/nats/). Must not be readable by group or others.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Create the two streams when missing. Off by default: creating streams
    /// is an operator action (`tourniquet fleet init`), and a least-privilege
    /// agent may not.
    #[serde(default)]
    pub create_streams: bool,
    /// Upper bound of the jittered reconnect backoff. Default 30s.
    #[serde(default = "default_max_reconnect")]
    pub max_reconnect_delay: crate::command::payload::HumanDuration,
    /// How often the agent announces itself on `tourniquet.hb.<agent-id>`. Default 30s.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: crate::command::payload::HumanDuration,
    /// Receipts kept on disk while NATS is unreachable; beyond it the oldest
    /// are dropped (they stay in the receipts dir). Default 10000.
    #[serde(default = "default_spool_limit")]
    pub spool_limit: usize,
    /// Timeout of each JetStream request (ack, direct get). Default 5s.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: crate::command::payload::HumanDuration,
}

fn default_max_reconnect() -> crate::command::payload::HumanDuration {
    crate::command::payload::HumanDuration(std::time::Duration::from_secs(30))
}
fn default_heartbeat() -> crate::command::payload::HumanDuration {
    crate::command::payload::HumanDuration(std::time::Duration::from_secs(30))
}
fn default_spool_limit() -> usize {
    10_000
}
fn default_request_timeout() -> crate::command::payload::HumanDuration {
    crate::command::payload::HumanDuration(std::time::Duration::from_secs(5))
}

/// `[agent]`: identity and where state lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Agent id, used in receipts and targeting. Default: the hostname.
    #[serde(default)]
    pub id: Option<String>,
    /// Labels that commands target with globs.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Journal, audit log, receipts and the agent key (created 0700).
    pub state_dir: PathBuf,
    /// The trust policy. Required: without it nothing is trusted.
    pub policy: PathBuf,
}

/// `[api]`: the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address to listen on. Loopback by default.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; enables TLS together with `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Allows a non-loopback listener without TLS. The agent warns at start.
    #[serde(default)]
    pub insecure: bool,
    /// Set false to run with the inbox only.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whole-request read deadline: a request's head and body (and, with
    /// TLS, the handshake before the first request) must all arrive within
    /// it, counted from the request's first byte (from the accept for a new
    /// connection). Past it the agent answers 408 `request_timeout` if it
    /// can, and closes the connection. 1s to 1h; default 10s.
    #[serde(default = "default_read_timeout", deserialize_with = "api_timeout")]
    pub read_timeout: crate::command::payload::HumanDuration,
    /// How long a keep-alive connection may wait for its next request, and
    /// how long writing an answer may stall on a client that does not read.
    /// 1s to 1h; default 30s.
    #[serde(default = "default_idle_timeout", deserialize_with = "api_timeout")]
    pub idle_timeout: crate::command::payload::HumanDuration,
    /// Connections served at once (1 to 65536; default 256). At the cap a
    /// new connection closes the one that has waited longest on its client
    /// (see `transport::http`), so `/healthz` and a signed command still get
    /// through a flood of slow clients. Keep the open file limit above this
    /// plus about 64.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "max_connections"
    )]
    pub max_connections: usize,
}

/// Bounds of `api.max_connections`.
pub const API_MAX_CONNECTIONS: std::ops::RangeInclusive<usize> = 1..=65536;
/// Bounds of `api.read_timeout` and `api.idle_timeout`.
const API_TIMEOUT_MIN: std::time::Duration = std::time::Duration::from_secs(1);
const API_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7370))
}
fn default_read_timeout() -> crate::command::payload::HumanDuration {
    crate::command::payload::HumanDuration(std::time::Duration::from_secs(10))
}
fn default_idle_timeout() -> crate::command::payload::HumanDuration {
    crate::command::payload::HumanDuration(std::time::Duration::from_secs(30))
}
fn default_max_connections() -> usize {
    256
}

/// A duration of the `[api]` section, bounded so that a typo cannot turn a
/// deadline off (`0s`) or make it useless (`300years`).
fn api_timeout<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<crate::command::payload::HumanDuration, D::Error> {
    let v = crate::command::payload::HumanDuration::deserialize(d)?;
    if !(API_TIMEOUT_MIN..=API_TIMEOUT_MAX).contains(&v.0) {
        return Err(serde::de::Error::custom(format!(
            "{v} is out of bounds: use 1s to 1h"
        )));
    }
    Ok(v)
}

fn max_connections<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = u64::deserialize(d)?;
    match usize::try_from(n) {
        Ok(n) if API_MAX_CONNECTIONS.contains(&n) => Ok(n),
        _ => Err(serde::de::Error::custom(format!(
            "max_connections = {n} is out of bounds: use {} to {}",
            API_MAX_CONNECTIONS.start(),
            API_MAX_CONNECTIONS.end()
        ))),
    }
}
fn yes() -> bool {
    true
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            insecure: false,
            enabled: true,
            read_timeout: default_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

/// `[inbox]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxSection {
    /// Drop `*.json` envelopes here (write elsewhere, then rename in).
    /// Processed files move to `done/` or `rejected/` below it.
    pub dir: PathBuf,
}

/// `[resources.NAME]`: a provider declaration plus agent-side defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceEntry {
    /// The guard applied to commands on this resource that carry none, so
    /// a one-line `flag set` is still guarded.
    #[serde(default)]
    pub guard: Option<Guard>,
    /// What to do when a hotfix in force is changed back behind the agent's
    /// back (a deploy, a hand edit): `reassert` it (default) or only `report`.
    #[serde(default)]
    pub on_drift: OnDrift,
    /// The provider kind (`kind = "flags-file"`) and its own fields.
    #[serde(flatten)]
    pub provider: ResourceConfig,
}

/// Drift policy of a resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    #[default]
    Reassert,
    Report,
}

pub use crate::telemetry::{HttpProbeConfig, ProbeConfig};

/// Formats a TOML error as `FILE:LINE:COL: message`.
pub fn toml_error(origin: &str, text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().to_string();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before
                .rsplit('\n')
                .next()
                .map(|l| l.chars().count())
                .unwrap_or(0)
                + 1;
            let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("{origin}:{line}:{col}: {message} (in `{source_line}`)")
        }
        None => format!("{origin}: {message}"),
    }
}

/// Resource and probe names: what commands may say.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl AgentConfig {
    /// Reads, parses and validates a config file. Relative paths inside it
    /// are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        AgentConfig::from_toml(&text, &path.display().to_string(), &base)
    }

    /// Parses config text; `origin` names it in errors, `base` anchors
    /// relative paths.
    pub fn from_toml(text: &str, origin: &str, base: &Path) -> Result<AgentConfig, ConfigError> {
        let mut cfg: AgentConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(toml_error(origin, text, &e)))?;
        cfg.resolve_paths(base);
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.agent.state_dir);
        fix(&mut self.agent.policy);
        for p in [
            &mut self.api.tls_cert,
            &mut self.api.tls_key,
            &mut self.api.client_ca,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(i) = &mut self.inbox {
            fix(&mut i.dir);
        }
        if let Some(c) = self.nats.as_mut().and_then(|n| n.credentials.as_mut()) {
            fix(c);
        }
        for r in self.resources.values_mut() {
            r.provider.paths_mut().into_iter().for_each(fix);
        }
    }

    /// Cross-field checks serde cannot express.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: String, why: String| ConfigError::Invalid {
            path: origin.to_string(),
            field,
            why,
        };
        self.retention
            .validate()
            .map_err(|(field, why)| invalid(field, why))?;
        if let Some(id) = &self.agent.id {
            if !valid_name(id) {
                return Err(invalid(
                    "agent.id".into(),
                    format!("{id:?} must be 1-64 of [A-Za-z0-9._-]"),
                ));
            }
        }
        if let Some(n) = &self.nats {
            if !crate::transport::nats::fleet::valid_token(&n.fleet) {
                return Err(invalid(
                    "nats.fleet".into(),
                    format!(
                        "{:?} must be 1-64 of [A-Za-z0-9_-] (it is a subject token)",
                        n.fleet
                    ),
                ));
            }
            if n.url.split(',').any(|u| {
                let u = u.trim();
                !(u.starts_with("nats://") || u.starts_with("tls://"))
            }) {
                return Err(invalid(
                    "nats.url".into(),
                    format!("{:?}: each URL must start with nats:// or tls://", n.url),
                ));
            }
            if n.max_reconnect_delay.0.is_zero() || n.heartbeat.0.is_zero() {
                return Err(invalid(
                    "nats".into(),
                    "max_reconnect_delay and heartbeat must be above 0".into(),
                ));
            }
            if let Some(id) = &self.agent.id {
                if !crate::transport::nats::fleet::valid_token(id) {
                    return Err(invalid(
                        "agent.id".into(),
                        format!("{id:?}: a fleet agent's id is a subject token, so no dots"),
                    ));
                }
            }
        }
        let api = &self.api;
        if api.tls_cert.is_some() != api.tls_key.is_some() {
            return Err(invalid(
                "api.tls_cert".into(),
                "tls_cert and tls_key go together".into(),
            ));
        }
        if api.client_ca.is_some() && api.tls_cert.is_none() {
            return Err(invalid(
                "api.client_ca".into(),
                "mTLS needs tls_cert and tls_key too".into(),
            ));
        }
        if api.enabled && !api.listen.ip().is_loopback() && api.tls_cert.is_none() && !api.insecure
        {
            return Err(invalid(
                "api.listen".into(),
                format!(
                    "{} is not loopback; set tls_cert and tls_key, or insecure = true to accept plain HTTP",
                    api.listen
                ),
            ));
        }
        for (name, r) in &self.resources {
            if !valid_name(name) {
                return Err(invalid(
                    format!("resources.{name}"),
                    "names must be 1-64 of [A-Za-z0-9._-]".into(),
                ));
            }
            r.provider
                .validate()
                .map_err(|why| invalid(format!("resources.{name}"), why))?;
            if let Some(g) = &r.guard {
                for p in &g.probes {
                    if !self.probes.contains_key(p) {
                        return Err(invalid(
                            format!("resources.{name}.guard.probes"),
                            format!("no probe named {p:?}"),
                        ));
                    }
                }
            }
        }
        for (name, p) in &self.probes {
            if !valid_name(name) {
                return Err(invalid(
                    format!("probes.{name}"),
                    "names must be 1-64 of [A-Za-z0-9._-]".into(),
                ));
            }
            p.validate()
                .map_err(|(field, why)| invalid(format!("probes.{name}.{field}"), why))?;
        }
        Ok(())
    }

    /// The agent id: configured, or the hostname.
    pub fn agent_id(&self) -> String {
        self.agent.id.clone().unwrap_or_else(|| {
            hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| valid_name(h))
                .unwrap_or_else(|| "tourniquet".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[agent]\nstate_dir = \"s\"\npolicy = \"p\"\ncolour = \"red\"\n";
        let err = AgentConfig::from_toml(text, "agent.toml", Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("agent.toml:4:"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn non_loopback_needs_tls_or_insecure() {
        let text = "[agent]\nstate_dir = \"s\"\npolicy = \"p\"\n[api]\nlisten = \"0.0.0.0:7370\"\n";
        let err = AgentConfig::from_toml(text, "a.toml", Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.listen"), "{err}");
        let ok = format!("{text}insecure = true\n");
        assert!(AgentConfig::from_toml(&ok, "a.toml", Path::new("")).is_ok());
    }

    #[test]
    fn api_limits_have_defaults_and_bounds() {
        let base = "[agent]\nstate_dir = \"s\"\npolicy = \"p\"\n[api]\n";
        let cfg = AgentConfig::from_toml(base, "a.toml", Path::new("")).unwrap();
        assert_eq!(cfg.api.max_connections, 256);
        assert_eq!(cfg.api.read_timeout.0, std::time::Duration::from_secs(10));
        assert_eq!(cfg.api.idle_timeout.0, std::time::Duration::from_secs(30));
        let ok = format!("{base}max_connections = 65536\nread_timeout = \"2s\"\n");
        let cfg = AgentConfig::from_toml(&ok, "a.toml", Path::new("")).unwrap();
        assert_eq!(cfg.api.max_connections, 65536);
        assert_eq!(cfg.api.read_timeout.0, std::time::Duration::from_secs(2));
        for (line, key) in [
            ("max_connections = 0", "max_connections"),
            ("max_connections = 65537", "max_connections"),
            ("max_connections = -1", "max_connections"),
            ("read_timeout = \"0s\"", "read_timeout"),
            ("read_timeout = \"2h\"", "read_timeout"),
            ("idle_timeout = \"10ms\"", "idle_timeout"),
        ] {
            let err = AgentConfig::from_toml(&format!("{base}{line}\n"), "a.toml", Path::new(""))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("a.toml:5:"), "{line}: {err}");
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn unknown_provider_field_is_an_error() {
        let text = "[agent]\nstate_dir = \"s\"\npolicy = \"p\"\n[resources.f]\nkind = \"flags-file\"\npath = \"x.json\"\npaht = \"y\"\n";
        let err = AgentConfig::from_toml(text, "a.toml", Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("paht"), "{err}");
    }
}
