//! The resources Tourniquet can change.
//!
//! A provider is the only code that touches the outside world. It is kept
//! ignorant of envelopes, signatures and policy on purpose: by the time the
//! lifecycle calls a provider, the command has been verified and permitted,
//! and the provider's single job is to change one declared resource and be
//! able to put it back. That split keeps every provider small enough to audit.
//!
//! Each provider kind lives in its own folder with its `config.rs` (the
//! operator-facing, documented schema) beside its runtime.

mod cdn;
pub mod cloudflare;
mod duration;
pub mod fastly;
pub mod flags_file;
mod fsutil;
pub mod nginx;
pub mod purge;
pub mod varnish;

use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use fsutil::{replace_file, write_atomically};

/// One action of a command, as a provider sees it: an op and its parameters.
/// The resource name has already been resolved to this provider instance.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpec {
    /// The operation, e.g. `flag.set`.
    pub op: String,
    /// Every field of the action except `resource` and `op`.
    pub params: Map<String, Value>,
}

impl ActionSpec {
    /// Parses the params into an op's strict parameter struct. Unknown or
    /// missing fields are `Invalid` errors that name the op.
    pub fn parse_params<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProviderError> {
        serde_json::from_value(Value::Object(self.params.clone()))
            .map_err(|e| ProviderError::Invalid(format!("{}: {e}", self.op)))
    }
}

/// A provider-defined, JSON-serialisable picture of the part of a resource an
/// action touches. It must never contain a secret value: it ends up in
/// journals, receipts and audit entries.
pub type State = Value;

/// Why a provider refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The action cannot work on this resource (unknown op, bad params, a
    /// flag the file does not have). Nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// The resource could not be read or changed.
    #[error("{0}")]
    Failed(String),
}

/// The contract every provider kind implements.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The kind name used in agent configs, e.g. `flags-file`.
    fn kind(&self) -> &'static str;

    /// Pure validation of an action against this resource's kind: op and
    /// parameter shape. Does no I/O.
    fn validate(&self, action: &ActionSpec) -> Result<(), ProviderError>;

    /// Identifies the part of the resource an action touches, e.g.
    /// `flag:new_checkout`. Two hotfixes with the same key on the same
    /// resource overlap: the newer one supersedes the older.
    fn state_key(&self, action: &ActionSpec) -> String;

    /// Reads the current state of what `action` would touch. Fails with
    /// `Invalid` when the action names something the resource does not have.
    async fn snapshot(&self, action: &ActionSpec) -> Result<State, ProviderError>;

    /// The state `action` would produce from `before`, without changing
    /// anything. Used for dry runs and plans.
    fn plan(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError>;

    /// Applies the action and returns the state after it.
    async fn apply(&self, action: &ActionSpec) -> Result<State, ProviderError>;

    /// Puts back the state captured by `snapshot` before the action was
    /// applied. Must be idempotent: recovery may call it for an action that
    /// was never applied.
    async fn revert(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError>;

    /// Whether `revert` can undo this op. A cache purge cannot, and the
    /// lifecycle then never promises a revert for it.
    fn reversible(&self, op: &str) -> bool;

    /// A file the agent should watch for drift, if the resource is local.
    fn watched_path(&self) -> Option<&Path> {
        None
    }
}

/// The `kind`-tagged resource declaration from the agent config.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind")]
pub enum ResourceConfig {
    /// A flagd / OpenFeature flag-definition file.
    #[serde(rename = "flags-file")]
    FlagsFile(flags_file::FlagsFileConfig),
    /// An nginx server's managed include file: deny lists and brownouts.
    #[serde(rename = "nginx")]
    Nginx(Box<nginx::NginxConfig>),
    /// A Varnish cache: `cdn.purge` through its admin port or HTTP.
    #[serde(rename = "varnish")]
    Varnish(Box<varnish::VarnishConfig>),
    /// A Fastly service: `cdn.purge` through Fastly's API.
    #[serde(rename = "fastly")]
    Fastly(Box<fastly::FastlyConfig>),
    /// A Cloudflare zone: `cdn.purge` through Cloudflare's API.
    #[serde(rename = "cloudflare")]
    Cloudflare(Box<cloudflare::CloudflareConfig>),
}

impl ResourceConfig {
    /// The kind name, as written in configs.
    pub fn kind(&self) -> &'static str {
        match self {
            ResourceConfig::FlagsFile(_) => "flags-file",
            ResourceConfig::Nginx(_) => "nginx",
            ResourceConfig::Varnish(_) => "varnish",
            ResourceConfig::Fastly(_) => "fastly",
            ResourceConfig::Cloudflare(_) => "cloudflare",
        }
    }

    /// Checks the declaration without building anything, so a broken config
    /// is refused before the agent starts.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ResourceConfig::FlagsFile(c) => c.validate(),
            ResourceConfig::Nginx(c) => c.validate(),
            ResourceConfig::Varnish(c) => c.validate(),
            ResourceConfig::Fastly(c) => c.validate(),
            ResourceConfig::Cloudflare(c) => c.validate(),
        }
    }

    /// Builds the runtime provider for this declaration.
    pub fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        match self {
            ResourceConfig::FlagsFile(c) => Ok(Box::new(flags_file::FlagsFile::new(c.clone()))),
            ResourceConfig::Nginx(c) => Ok(Box::new(nginx::Nginx::new((**c).clone())?)),
            ResourceConfig::Varnish(c) => Ok(Box::new(varnish::Varnish::new((**c).clone())?)),
            ResourceConfig::Fastly(c) => Ok(Box::new(fastly::Fastly::new((**c).clone()))),
            ResourceConfig::Cloudflare(c) => {
                Ok(Box::new(cloudflare::Cloudflare::new((**c).clone())))
            }
        }
    }
}
