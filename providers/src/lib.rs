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

#[cfg(feature = "aws")]
pub mod aws_autoscaling;
#[cfg(feature = "aws")]
pub mod aws_cloudfront;
#[cfg(feature = "aws")]
pub mod aws_common;
#[cfg(feature = "aws")]
pub mod aws_lambda;
#[cfg(feature = "aws")]
pub mod aws_secretsmanager;
#[cfg(feature = "aws")]
pub mod aws_wafv2;
mod cdn;
pub mod cidr;
pub mod cloudflare;
mod duration;
pub mod fastly;
pub mod flags_file;
mod fsutil;
pub mod nginx;
pub mod purge;
pub mod registry;
pub mod varnish;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use fsutil::{replace_file, write_atomically, ManagedFile, ManagedFileError, SafeDir};
pub use registry::{Declaration, KindDecl, OpDecl, ParamDecl, ParamError, ParamKind};

/// One action of a command, as a provider sees it: an op and its parameters.
/// The resource name has already been resolved to this provider instance.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpec {
    /// The operation, e.g. `flag.set`.
    pub op: String,
    /// Every field of the action except `resource` and `op`.
    pub params: Map<String, Value>,
}

/// An op's parameter struct, with the names of the params it takes written
/// once beside it. Every provider parses params through
/// [`ActionSpec::parse_params`], so an unknown param is refused the same
/// way, by name, whichever provider owns the op: a field a provider would
/// silently ignore is room for a signed command to mean more than its
/// signers read.
pub trait OpParams: for<'de> Deserialize<'de> {
    /// Every param the op takes (the struct's fields, as spelled in JSON).
    const FIELDS: &'static [&'static str];
}

impl ActionSpec {
    /// Refuses any param not in `known`, naming it and what is expected:
    /// `flag.set: unknown param "colour"; expected flag, variant`.
    pub fn expect_only(&self, known: &[&str]) -> Result<(), ProviderError> {
        match self.params.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(ProviderError::Invalid(format!(
                "{}: unknown param {k:?}; expected {}",
                self.op,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }

    /// Parses the params into an op's strict parameter struct. Unknown
    /// params (see [`ActionSpec::expect_only`]), missing or mistyped ones
    /// are `Invalid` errors that name the op.
    pub fn parse_params<T: OpParams>(&self) -> Result<T, ProviderError> {
        self.expect_only(T::FIELDS)?;
        serde_json::from_value(Value::Object(self.params.clone()))
            .map_err(|e| ProviderError::Invalid(format!("{}: {e}", self.op)))
    }
}

/// A provider-defined, JSON-serialisable picture of the part of a resource an
/// action touches. It must never contain a secret value: it ends up in
/// journals, receipts and audit entries.
pub type State = Value;

/// Why a provider refused or failed. Failures keep their cause where
/// there is one (a file, a connection, an AWS call), for logs and
/// `source()` chains; the text stays one readable line.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The action cannot work on this resource (unknown op, bad params, a
    /// flag the file does not have). Nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// The resource could not be read or changed.
    #[error("{0}")]
    Failed(String),
    /// A local file or program could not be used.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// An HTTP endpoint could not be reached or answered nonsense.
    #[error("{context}: {source}")]
    Http {
        context: String,
        #[source]
        source: reqwest::Error,
    },
    /// An AWS call failed after its retries.
    #[cfg(feature = "aws")]
    #[error(transparent)]
    Aws(#[from] aws_common::AwsError),
}

impl ProviderError {
    /// The action itself is at fault (not the resource or the network):
    /// the lifecycle rejects it instead of failing.
    pub fn is_invalid(&self) -> bool {
        matches!(self, ProviderError::Invalid(_))
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> ProviderError {
        ProviderError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn http(context: impl Into<String>, source: reqwest::Error) -> ProviderError {
        ProviderError::Http {
            context: context.into(),
            source: source.without_url(),
        }
    }
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

/// Why a resource declaration was refused, before anything was built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One field holds a value that cannot work.
    #[error("{field}: {why}")]
    Field { field: String, why: String },
    /// Fields that must come together (or apart) do not.
    #[error("{0}")]
    Fields(String),
}

impl ConfigError {
    pub fn field(field: impl Into<String>, why: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            field: field.into(),
            why: why.into(),
        }
    }

    pub fn fields(why: impl Into<String>) -> ConfigError {
        ConfigError::Fields(why.into())
    }
}

/// Every resource kind of this build: one line per provider. A provider
/// is its folder (config, runtime, and a `KIND` declaring its ops) plus its
/// line here; the CLI verbs, `tourniquet ops`, typed `new --param` and the
/// readable change lines all come from the declarations.
#[cfg_attr(not(feature = "aws"), allow(unused_mut))]
fn registered_kinds() -> Vec<&'static KindDecl> {
    let mut kinds: Vec<&'static KindDecl> = vec![
        &flags_file::KIND,
        &nginx::KIND,
        &varnish::KIND,
        &fastly::KIND,
        &cloudflare::KIND,
    ];
    #[cfg(feature = "aws")]
    kinds.push(&aws_secretsmanager::KIND);
    #[cfg(feature = "aws")]
    kinds.push(&aws_lambda::KIND);
    #[cfg(feature = "aws")]
    kinds.push(&aws_wafv2::KIND);
    #[cfg(feature = "aws")]
    kinds.push(&aws_cloudfront::KIND);
    #[cfg(feature = "aws")]
    kinds.push(&aws_autoscaling::KIND);
    kinds
}

/// The `kind`-tagged resource declaration from the agent config, read
/// through the registry: `kind` picks the [`KindDecl`], which reads the
/// rest of the table.
#[derive(Debug, Clone)]
pub struct ResourceConfig {
    kind: &'static KindDecl,
    declaration: Box<dyn Declaration>,
}

impl<'de> Deserialize<'de> for ResourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = Map::<String, Value>::deserialize(d)?;
        let name = match fields.remove("kind") {
            Some(Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "kind: {other} is not a resource kind name"
                )))
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        let Some(kind) = registry::kind(&name) else {
            return Err(D::Error::custom(unknown_kind(&name)));
        };
        let declaration = (kind.config)(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(ResourceConfig { kind, declaration })
    }
}

fn unknown_kind(name: &str) -> String {
    if cfg!(not(feature = "aws")) && name.starts_with("aws-") {
        return "aws-* resource kinds are not in this binary: it was built without the `aws` feature (build with default features to manage AWS resources)".into();
    }
    let known: Vec<&str> = registry::kinds().iter().map(|k| k.kind).collect();
    format!(
        "unknown resource kind {:?}; this build knows {}",
        name.chars().take(64).collect::<String>(),
        known.join(", ")
    )
}

impl ResourceConfig {
    /// The kind name, as written in configs.
    pub fn kind(&self) -> &'static str {
        self.kind.kind
    }

    /// The kind's declaration: its ops, their params and renderings.
    pub fn kind_decl(&self) -> &'static KindDecl {
        self.kind
    }

    /// The ops this kind of resource supports, so `agent --check` can say
    /// when a policy permits an op that no declared resource has.
    pub fn supported_ops(&self) -> &'static [&'static str] {
        registry::op_names(self.kind.kind)
    }

    /// The kind's own config struct, e.g. `get::<NginxConfig>()`.
    pub fn get<C: 'static>(&self) -> Option<&C> {
        self.declaration.as_any().downcast_ref::<C>()
    }

    /// What the agent's banner says about the resource.
    pub fn detail(&self) -> String {
        self.declaration.detail()
    }

    /// Every file path in the declaration, so the agent can resolve
    /// relative ones against the config file's directory.
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        self.declaration.paths_mut()
    }

    /// Checks the declaration without building anything, so a broken config
    /// is refused before the agent starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.declaration.validate()
    }

    /// Builds the runtime provider for this declaration.
    pub fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        self.declaration.build()
    }
}

#[cfg(test)]
mod tests {
    use super::{ActionSpec, OpParams};
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        #[allow(dead_code)]
        flag: String,
        #[serde(default)]
        #[allow(dead_code)]
        variant: Option<String>,
    }

    impl OpParams for Params {
        const FIELDS: &'static [&'static str] = &["flag", "variant"];
    }

    fn spec(params: serde_json::Value) -> ActionSpec {
        ActionSpec {
            op: "flag.set".into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn an_unknown_param_is_refused_by_name() {
        let err = spec(serde_json::json!({"flag": "f", "variant": "v", "colour": "red"}))
            .parse_params::<Params>()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "flag.set: unknown param \"colour\"; expected flag, variant"
        );
        assert!(spec(serde_json::json!({"flag": "f"}))
            .parse_params::<Params>()
            .is_ok());
        let err = spec(serde_json::json!({"x": 1}))
            .expect_only(&[])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "flag.set: unknown param \"x\"; expected none");
    }
}

#[cfg(test)]
mod dispatch {
    use super::ResourceConfig;
    use serde_json::json;

    #[test]
    fn the_kind_tag_picks_the_declaration_and_an_unknown_kind_names_the_known_ones() {
        let r: ResourceConfig =
            serde_json::from_value(json!({"kind": "nginx", "include": "hotfixes.conf"})).unwrap();
        assert_eq!(r.kind(), "nginx");
        assert_eq!(r.supported_ops(), ["nginx.deny", "nginx.brownout"]);
        assert!(r.get::<crate::nginx::NginxConfig>().is_some());
        assert!(r.get::<crate::flags_file::FlagsFileConfig>().is_none());
        let err = serde_json::from_value::<ResourceConfig>(json!({"kind": "haproxy"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "unknown resource kind \"haproxy\"; this build knows flags-file, nginx"
            ),
            "{err}"
        );
        let err = serde_json::from_value::<ResourceConfig>(json!({"include": "x"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `kind`"), "{err}");
        let err = serde_json::from_value::<ResourceConfig>(
            json!({"kind": "nginx", "include": "x", "inclde": "y"}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `inclde`"), "{err}");
    }
}

#[cfg(test)]
mod causes {
    use std::error::Error;

    #[test]
    fn a_failure_keeps_its_cause_and_reads_as_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("token");
        let err = crate::cdn::read_token(Some(&missing), None).unwrap_err();
        let io = err
            .source()
            .and_then(|c| c.downcast_ref::<std::io::Error>())
            .expect("an io::Error cause");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        let text = err.to_string();
        assert!(text.starts_with("reading the token file "), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(!err.is_invalid());
    }
}

#[cfg(all(test, not(feature = "aws")))]
mod without_aws {
    use super::ResourceConfig;

    #[test]
    fn an_aws_kind_says_the_binary_was_built_without_the_aws_feature() {
        for kind in [
            "aws-secretsmanager",
            "aws-lambda",
            "aws-wafv2",
            "aws-cloudfront",
            "aws-autoscaling",
        ] {
            let err = serde_json::from_value::<ResourceConfig>(
                serde_json::json!({"kind": kind, "function": "f"}),
            )
            .expect_err(kind)
            .to_string();
            assert!(
                err.contains("built without the `aws` feature"),
                "{kind}: {err}"
            );
        }
    }
}
