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
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `rendered` is `FILE:LINE:COL: message (in `line`)`, from
    /// [`toml_error`]; `source` is the parser's own error.
    #[error("{rendered}")]
    Parse {
        rendered: String,
        #[source]
        source: toml::de::Error,
    },
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Anchored on an absolute directory even for `--config agent.toml`:
        // a relative path handed to another program (nginx's `-c`, `-p`)
        // would be read against that program's own directory, not ours.
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        AgentConfig::from_toml(&text, &path.display().to_string(), &base)
    }

    /// Parses config text; `origin` names it in errors, `base` anchors
    /// relative paths.
    pub fn from_toml(text: &str, origin: &str, base: &Path) -> Result<AgentConfig, ConfigError> {
        let mut cfg: AgentConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            rendered: toml_error(origin, text, &source),
            source,
        })?;
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
                .map_err(|why| invalid(format!("resources.{name}"), why.to_string()))?;
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

/// How bad a lint is: an error means the agent would not work as
/// configured (`agent --check` exits 1); a warning may be intended, for
/// example a policy shared by agents that declare different resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// The stable name of each lint, as `--check --json` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LintCode {
    /// A rule names a role that no key in the policy holds.
    RoleWithoutKey,
    /// Fewer keys hold a rule's roles than its threshold asks for.
    QuorumUnreachable,
    /// The policy's `expires` has passed: every command is refused.
    PolicyExpired,
    /// A key's `valid_before` has passed: its signatures are refused.
    KeyExpired,
    /// A rule's resource glob matches no resource this agent declares.
    RuleMatchesNoResource,
    /// A rule's op glob matches no op a declared resource supports.
    OpUnsupported,
    /// A flags-file resource's file does not exist.
    FlagsFileMissing,
    /// A flags-file resource's file is not flagd JSON.
    FlagsFileInvalid,
}

impl LintCode {
    pub fn as_str(self) -> &'static str {
        match self {
            LintCode::RoleWithoutKey => "role_without_key",
            LintCode::QuorumUnreachable => "quorum_unreachable",
            LintCode::PolicyExpired => "policy_expired",
            LintCode::KeyExpired => "key_expired",
            LintCode::RuleMatchesNoResource => "rule_matches_no_resource",
            LintCode::OpUnsupported => "op_unsupported",
            LintCode::FlagsFileMissing => "flags_file_missing",
            LintCode::FlagsFileInvalid => "flags_file_invalid",
        }
    }

    /// Errors are what can never work on this agent; warnings are what may
    /// be meant for other agents sharing the policy, or may be a typo.
    pub fn severity(self) -> Severity {
        match self {
            LintCode::RoleWithoutKey
            | LintCode::QuorumUnreachable
            | LintCode::PolicyExpired
            | LintCode::FlagsFileMissing
            | LintCode::FlagsFileInvalid => Severity::Error,
            LintCode::KeyExpired | LintCode::RuleMatchesNoResource | LintCode::OpUnsupported => {
                Severity::Warning
            }
        }
    }
}

/// Something that parses but cannot work, found by `agent --check`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lint {
    pub code: LintCode,
    pub severity: Severity,
    /// The file and key it is about, e.g. `policy.toml: rules[1].roles`.
    pub at: String,
    /// One sentence: what is wrong, then what to do.
    pub message: String,
}

impl std::fmt::Display for Lint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{level}[{}] {}: {}",
            self.code.as_str(),
            self.at,
            self.message
        )
    }
}

/// Ops the agent itself handles, whatever resources it declares.
const AGENT_OPS: &[&str] = &[
    crate::command::payload::REVERT_OP,
    crate::command::payload::HALT_OP,
    "hold.extend",
    "hold.end",
];

impl AgentConfig {
    /// What in this config and its policy parses but cannot work: roles no
    /// key holds, rules that name nothing here, flags files that are not
    /// there. `config_origin` and `policy_origin` name the files in each
    /// lint. Reads the flags files; builds and changes nothing.
    pub fn lint(
        &self,
        policy: &crate::trust::policy::Policy,
        config_origin: &str,
        policy_origin: &str,
        now: crate::command::payload::Timestamp,
    ) -> Vec<Lint> {
        let mut lints = Vec::new();
        let mut push = |code: LintCode, at: String, message: String| {
            lints.push(Lint {
                code,
                severity: code.severity(),
                at,
                message,
            })
        };
        let file = &policy.file;

        if let Some(expires) = file.expires.filter(|e| now > *e) {
            push(
                LintCode::PolicyExpired,
                format!("{policy_origin}: expires"),
                format!("the policy expired at {expires}, so the agent refuses every command; install a current policy with a later `expires`"),
            );
        }
        for (name, key) in &file.keys {
            if let Some(before) = key.valid_before.filter(|b| now >= *b) {
                push(
                    LintCode::KeyExpired,
                    format!("{policy_origin}: keys.{name}.valid_before"),
                    format!("key {name:?} stopped being valid at {before}, so its signatures are refused; rotate it or remove it from the policy"),
                );
            }
        }

        let declared: Vec<&str> = self.resources.keys().map(String::as_str).collect();
        let supported: BTreeMap<&str, Vec<&str>> = self
            .resources
            .iter()
            .flat_map(|(name, r)| {
                r.provider
                    .supported_ops()
                    .iter()
                    .map(move |op| (*op, name.as_str()))
            })
            .fold(BTreeMap::new(), |mut m, (op, name)| {
                m.entry(op).or_insert_with(Vec::new).push(name);
                m
            });
        let glob_match = crate::trust::glob::glob_match;
        for (i, rule) in file.rules.iter().enumerate() {
            let at = |field: &str| format!("{policy_origin}: rules[{i}].{field}");
            for role in &rule.roles {
                if !file.keys.values().any(|k| k.roles.contains(role)) {
                    push(
                        LintCode::RoleWithoutKey,
                        at("roles"),
                        format!("no key holds role {role:?}, so it never counts towards this rule; add it to a key's `roles` under [keys.NAME], or fix the name"),
                    );
                }
            }
            let holders = file
                .keys
                .values()
                .filter(|k| k.roles.iter().any(|r| rule.roles.contains(r)))
                .count();
            if holders > 0 && (holders as u64) < u64::from(rule.threshold) {
                push(
                    LintCode::QuorumUnreachable,
                    at("threshold"),
                    format!(
                        "threshold = {} but only {holders} key(s) hold role {}, so this rule can never be met; add keys with that role or lower the threshold",
                        rule.threshold,
                        rule.roles.join(" or ")
                    ),
                );
            }
            for g in &rule.resources {
                // `*` also covers `halt`, which names no resource.
                if glob_match(g, "*") || declared.iter().any(|r| glob_match(g, r)) {
                    continue;
                }
                push(
                    LintCode::RuleMatchesNoResource,
                    at("resources"),
                    format!(
                        "{g:?} matches no resource in {config_origin} (it declares {}); fix the glob, or ignore this if the policy is shared with agents that declare such a resource",
                        names_or_none(&declared)
                    ),
                );
            }
            for g in &rule.ops {
                if AGENT_OPS.iter().any(|op| glob_match(g, op))
                    || supported.keys().any(|op| glob_match(g, op))
                {
                    continue;
                }
                let ops: Vec<&str> = AGENT_OPS
                    .iter()
                    .copied()
                    .chain(supported.keys().copied())
                    .collect();
                push(
                    LintCode::OpUnsupported,
                    at("ops"),
                    format!(
                        "{g:?} matches no op that a resource in {config_origin} supports (ops here: {}); fix the op, or ignore this if the policy is shared with agents that have such a resource",
                        ops.join(", ")
                    ),
                );
            }
        }

        for (name, r) in &self.resources {
            let Some(flags) = r
                .provider
                .get::<tourniquet_providers::flags_file::FlagsFileConfig>()
            else {
                continue;
            };
            let at = format!("{config_origin}: resources.{name}.path");
            let path = flags.path.display();
            match std::fs::read(&flags.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => push(
                    LintCode::FlagsFileMissing,
                    at,
                    format!("{path} does not exist, so the agent cannot read or change its flags; create it (a flagd file, `{{\"flags\": {{}}}}` at least) or fix the path"),
                ),
                Err(e) => push(
                    LintCode::FlagsFileMissing,
                    at,
                    format!("{path} cannot be read ({e}); give the agent's user read and write access to it"),
                ),
                Ok(bytes) => {
                    let why = serde_json::from_slice::<serde_json::Value>(&bytes)
                        .map_err(|e| format!("it is not JSON: {e}"))
                        .and_then(|doc| {
                            tourniquet_providers::flags_file::validate_document(&doc)
                                .map_err(|e| format!("it is not a flagd flags file: {e}"))
                        });
                    if let Err(why) = why {
                        push(
                            LintCode::FlagsFileInvalid,
                            at,
                            format!("{path}: {why}; fix the file (see flagd's flag definition format) before the agent starts"),
                        );
                    }
                }
            }
        }
        lints
    }
}

fn names_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "no resources".into()
    } else {
        names.join(", ")
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

    /// A config in a temp dir with its policy beside it; `policy_tail` is
    /// appended to a policy with one key `alice` holding role `sre`.
    fn linted(resources: &str, policy_tail: &str) -> Vec<Lint> {
        let dir = tempfile::tempdir().unwrap();
        let key = TEST_KEY;
        let policy_text = format!(
            "version = 1\nmax_ttl = \"30m\"\n[keys.alice]\npublic_key = \"{key}\"\nroles = [\"sre\"]\n{policy_tail}"
        );
        std::fs::write(dir.path().join("policy.toml"), &policy_text).unwrap();
        let text = format!("[agent]\nstate_dir = \"s\"\npolicy = \"policy.toml\"\n{resources}");
        let cfg = AgentConfig::from_toml(&text, "agent.toml", dir.path()).unwrap();
        let policy = crate::trust::policy::Policy::from_toml(&policy_text, "policy.toml").unwrap();
        std::fs::write(dir.path().join("good.json"), "{\"flags\": {}}").unwrap();
        std::fs::write(dir.path().join("bad.json"), "{\"flags\": 3}").unwrap();
        cfg.lint(
            &policy,
            "agent.toml",
            "policy.toml",
            crate::command::payload::Timestamp::now(),
        )
    }

    fn codes(lints: &[Lint]) -> Vec<&'static str> {
        lints.iter().map(|l| l.code.as_str()).collect()
    }

    /// Any ed25519 public key: lints never verify a signature.
    const TEST_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIArlQfMnm7DSzNG+yPLawrJ0A8KE+zunUOZ+AJDshEuj t";

    const FLAGS: &str = "[resources.checkout-flags]\nkind = \"flags-file\"\npath = \"good.json\"\n";

    #[test]
    fn a_clean_config_has_no_lints() {
        let rules = "[[rules]]\nops = [\"flag.*\", \"revert\"]\nresources = [\"checkout-*\"]\nroles = [\"sre\"]\n";
        assert_eq!(codes(&linted(FLAGS, rules)), Vec::<&str>::new());
    }

    #[test]
    fn a_role_no_key_holds_is_an_error() {
        let rules = "[[rules]]\nops = [\"flag.set\"]\nroles = [\"sre\", \"oncall\"]\n";
        let lints = linted(FLAGS, rules);
        assert_eq!(codes(&lints), ["role_without_key"]);
        assert_eq!(lints[0].severity, Severity::Error);
        assert_eq!(lints[0].at, "policy.toml: rules[0].roles");
        assert!(lints[0].message.contains("\"oncall\""), "{}", lints[0]);
    }

    #[test]
    fn a_threshold_above_the_keys_holding_the_role_is_an_error() {
        let rules = "[[rules]]\nops = [\"flag.set\"]\nroles = [\"sre\"]\nthreshold = 2\n";
        let lints = linted(FLAGS, rules);
        assert_eq!(codes(&lints), ["quorum_unreachable"]);
        assert_eq!(lints[0].severity, Severity::Error);
    }

    #[test]
    fn a_resource_glob_matching_nothing_is_a_warning() {
        let rules = "[[rules]]\nops = [\"flag.set\"]\nresources = [\"edge-*\", \"checkout-flags\"]\nroles = [\"sre\"]\n";
        let lints = linted(FLAGS, rules);
        assert_eq!(codes(&lints), ["rule_matches_no_resource"]);
        assert_eq!(lints[0].severity, Severity::Warning);
        assert!(lints[0].message.contains("\"edge-*\""), "{}", lints[0]);
        assert!(lints[0].message.contains("checkout-flags"), "{}", lints[0]);
    }

    #[test]
    fn an_op_no_declared_resource_supports_is_a_warning() {
        let rules = "[[rules]]\nops = [\"nginx.deny\", \"flag.set\", \"halt\", \"revert\"]\nroles = [\"sre\"]\n";
        let lints = linted(FLAGS, rules);
        assert_eq!(codes(&lints), ["op_unsupported"]);
        assert_eq!(lints[0].severity, Severity::Warning);
        assert!(lints[0].message.contains("\"nginx.deny\""), "{}", lints[0]);
        // Supported through another kind of resource, it is fine.
        let nginx = "[resources.edge]\nkind = \"nginx\"\ninclude = \"hotfixes.conf\"\n";
        assert_eq!(
            codes(&linted(&format!("{FLAGS}{nginx}"), rules)),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_missing_or_broken_flags_file_is_an_error() {
        let missing = FLAGS.replace("good.json", "nowhere.json");
        let lints = linted(&missing, "");
        assert_eq!(codes(&lints), ["flags_file_missing"]);
        assert_eq!(lints[0].severity, Severity::Error);
        assert_eq!(lints[0].at, "agent.toml: resources.checkout-flags.path");
        let broken = FLAGS.replace("good.json", "bad.json");
        assert_eq!(codes(&linted(&broken, "")), ["flags_file_invalid"]);
        let not_json = FLAGS.replace("good.json", "policy.toml");
        let lints = linted(&not_json, "");
        assert_eq!(codes(&lints), ["flags_file_invalid"]);
        assert!(lints[0].message.contains("not JSON"), "{}", lints[0]);
    }

    #[test]
    fn an_expired_policy_is_an_error_and_an_expired_key_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let key = TEST_KEY;
        let policy_text = format!(
            "version = 1\nmax_ttl = \"30m\"\nexpires = \"2026-01-01T00:00:00Z\"\n[keys.alice]\npublic_key = \"{key}\"\nroles = [\"sre\"]\nvalid_before = \"2025-06-01T00:00:00Z\"\n"
        );
        let policy = crate::trust::policy::Policy::from_toml(&policy_text, "policy.toml").unwrap();
        let cfg = AgentConfig::from_toml(
            "[agent]\nstate_dir = \"s\"\npolicy = \"p\"\n",
            "agent.toml",
            dir.path(),
        )
        .unwrap();
        let now = crate::command::payload::Timestamp::parse("2026-06-01T00:00:00Z").unwrap();
        let lints = cfg.lint(&policy, "agent.toml", "policy.toml", now);
        assert_eq!(codes(&lints), ["policy_expired", "key_expired"]);
        let before = crate::command::payload::Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
        assert!(cfg
            .lint(&policy, "agent.toml", "policy.toml", before)
            .is_empty());
    }

    #[test]
    fn relative_nginx_paths_reach_nginx_resolved_against_the_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[agent]\nstate_dir = \"s\"\npolicy = \"p\"\n[resources.edge]\nkind = \"nginx\"\ninclude = \"hotfixes.conf\"\nconf = \"conf/nginx.conf\"\nprefix = \"run\"\nerror_log = \"logs/error.log\"\nbinary = \"sbin/nginx\"\n";
        let cfg = AgentConfig::from_toml(text, "agent.toml", dir.path()).unwrap();
        let Some(nginx) = cfg.resources["edge"]
            .provider
            .get::<tourniquet_providers::nginx::NginxConfig>()
        else {
            panic!("not nginx");
        };
        assert_eq!(nginx.include, dir.path().join("hotfixes.conf"));
        assert_eq!(nginx.conf, Some(dir.path().join("conf/nginx.conf")));
        assert_eq!(nginx.prefix, Some(dir.path().join("run")));
        assert_eq!(nginx.error_log, Some(dir.path().join("logs/error.log")));
        assert_eq!(nginx.binary, dir.path().join("sbin/nginx"));
        // A bare binary name is looked up on PATH, so it stays as it is.
        let cfg = AgentConfig::from_toml(
            &text.replace("sbin/nginx", "nginx"),
            "agent.toml",
            dir.path(),
        )
        .unwrap();
        let Some(nginx) = cfg.resources["edge"]
            .provider
            .get::<tourniquet_providers::nginx::NginxConfig>()
        else {
            panic!("not nginx");
        };
        assert_eq!(nginx.binary, Path::new("nginx"));
    }

    #[test]
    fn a_config_named_by_a_relative_path_resolves_against_an_absolute_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "[agent]\nstate_dir = \"s\"\npolicy = \"p\"\n[resources.edge]\nkind = \"nginx\"\ninclude = \"hotfixes.conf\"\nconf = \"nginx.conf\"\n",
        )
        .unwrap();
        // The same file, named relative to the test's working directory.
        let cwd = std::env::current_dir().unwrap();
        let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        let relative = up.join(file.strip_prefix("/").unwrap());
        assert!(relative.is_relative());
        let cfg = AgentConfig::load(&relative).unwrap();
        let Some(nginx) = cfg.resources["edge"]
            .provider
            .get::<tourniquet_providers::nginx::NginxConfig>()
        else {
            panic!("not nginx");
        };
        let conf = nginx.conf.clone().unwrap();
        assert!(conf.is_absolute(), "{}", conf.display());
        assert!(conf.ends_with("nginx.conf"));
        assert_eq!(
            cfg.agent
                .state_dir
                .parent()
                .unwrap()
                .canonicalize()
                .unwrap(),
            dir.path().canonicalize().unwrap()
        );
    }

    #[test]
    fn load_errors_keep_their_cause() {
        use std::error::Error;
        let dir = tempfile::tempdir().unwrap();
        let err = AgentConfig::load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        let cause = err
            .source()
            .and_then(|c| c.downcast_ref::<std::io::Error>());
        assert_eq!(
            cause.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        let err = AgentConfig::from_toml("[agent]\nstate_dir = 3\n", "a.toml", Path::new(""))
            .unwrap_err();
        assert!(err.to_string().starts_with("a.toml:2:"), "{err}");
        assert!(
            err.source()
                .is_some_and(|c| c.downcast_ref::<toml::de::Error>().is_some()),
            "{err:?}"
        );
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
