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
pub mod cloudflare;
mod duration;
pub mod fastly;
pub mod flags_file;
mod fsutil;
pub mod nginx;
pub mod purge;
pub mod varnish;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use fsutil::{replace_file, write_atomically, ManagedFile, ManagedFileError, SafeDir};

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
    /// A secret in AWS Secrets Manager: `secret.rollback`.
    #[cfg(feature = "aws")]
    #[serde(rename = "aws-secretsmanager")]
    AwsSecretsManager(Box<aws_secretsmanager::SecretsManagerConfig>),
    /// A Lambda function and alias: `lambda.alias`, `lambda.concurrency`.
    #[cfg(feature = "aws")]
    #[serde(rename = "aws-lambda")]
    AwsLambda(Box<aws_lambda::LambdaConfig>),
    /// A WAFv2 IP set: `waf.block`.
    #[cfg(feature = "aws")]
    #[serde(rename = "aws-wafv2")]
    AwsWafv2(Box<aws_wafv2::WafConfig>),
    /// A CloudFront distribution: `cdn.purge`.
    #[cfg(feature = "aws")]
    #[serde(rename = "aws-cloudfront")]
    AwsCloudFront(Box<aws_cloudfront::CloudFrontConfig>),
    /// An EC2 Auto Scaling group: `asg.cap`.
    #[cfg(feature = "aws")]
    #[serde(rename = "aws-autoscaling")]
    AwsAutoScaling(Box<aws_autoscaling::AutoScalingConfig>),
    /// Any `aws-*` kind in a binary built without the `aws` feature: it
    /// never parses, so the config error says why.
    #[cfg(not(feature = "aws"))]
    #[serde(
        rename = "aws-secretsmanager",
        alias = "aws-lambda",
        alias = "aws-wafv2",
        alias = "aws-cloudfront",
        alias = "aws-autoscaling"
    )]
    AwsNotBuilt(AwsNotBuilt),
}

/// Stands for an AWS resource kind in a binary without the `aws` feature.
/// It has no values: deserialising one always fails with the reason.
#[cfg(not(feature = "aws"))]
#[derive(Debug, Clone)]
pub enum AwsNotBuilt {}

#[cfg(not(feature = "aws"))]
impl<'de> Deserialize<'de> for AwsNotBuilt {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "aws-* resource kinds are not in this binary: it was built without the `aws` feature (build with default features to manage AWS resources)",
        ))
    }
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
            #[cfg(feature = "aws")]
            ResourceConfig::AwsSecretsManager(_) => "aws-secretsmanager",
            #[cfg(feature = "aws")]
            ResourceConfig::AwsLambda(_) => "aws-lambda",
            #[cfg(feature = "aws")]
            ResourceConfig::AwsWafv2(_) => "aws-wafv2",
            #[cfg(feature = "aws")]
            ResourceConfig::AwsCloudFront(_) => "aws-cloudfront",
            #[cfg(feature = "aws")]
            ResourceConfig::AwsAutoScaling(_) => "aws-autoscaling",
            #[cfg(not(feature = "aws"))]
            ResourceConfig::AwsNotBuilt(never) => match *never {},
        }
    }

    /// The ops this kind of resource supports, so `agent --check` can say
    /// when a policy permits an op that no declared resource has.
    pub fn supported_ops(&self) -> &'static [&'static str] {
        match self {
            ResourceConfig::FlagsFile(_) => &["flag.set", "flag.state"],
            ResourceConfig::Nginx(_) => &["nginx.deny", "nginx.brownout"],
            ResourceConfig::Varnish(_)
            | ResourceConfig::Fastly(_)
            | ResourceConfig::Cloudflare(_) => &["cdn.purge"],
            #[cfg(feature = "aws")]
            ResourceConfig::AwsSecretsManager(_) => &["secret.rollback"],
            #[cfg(feature = "aws")]
            ResourceConfig::AwsLambda(_) => &["lambda.alias", "lambda.concurrency"],
            #[cfg(feature = "aws")]
            ResourceConfig::AwsWafv2(_) => &["waf.block"],
            #[cfg(feature = "aws")]
            ResourceConfig::AwsCloudFront(_) => &["cdn.purge"],
            #[cfg(feature = "aws")]
            ResourceConfig::AwsAutoScaling(_) => &["asg.cap"],
            #[cfg(not(feature = "aws"))]
            ResourceConfig::AwsNotBuilt(never) => match *never {},
        }
    }

    /// What the agent's banner says about the resource.
    pub fn detail(&self) -> String {
        match self {
            ResourceConfig::FlagsFile(f) => f.path.display().to_string(),
            ResourceConfig::Nginx(n) => n.include.display().to_string(),
            ResourceConfig::Varnish(v) => match (&v.admin, &v.http) {
                (Some(a), _) => format!("admin {}", a.address),
                (_, Some(h)) => h.url.clone(),
                _ => String::new(),
            },
            ResourceConfig::Fastly(f) => format!("service {} ({})", f.service_id, f.host),
            ResourceConfig::Cloudflare(c) => format!("zone {} ({})", c.zone_id, c.host),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsSecretsManager(c) => {
                format!("secret {}, {}", c.secret_id, c.client_settings().describe())
            }
            #[cfg(feature = "aws")]
            ResourceConfig::AwsLambda(c) => format!(
                "function {} alias {}, {}",
                c.function,
                c.alias,
                c.client_settings().describe()
            ),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsWafv2(c) => format!(
                "IP set {}, {}",
                c.ip_set_name,
                c.client_settings().describe()
            ),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsCloudFront(c) => format!(
                "distribution {}, {}",
                c.distribution_id,
                c.client_settings().describe()
            ),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsAutoScaling(c) => {
                format!("group {}, {}", c.group, c.client_settings().describe())
            }
            #[cfg(not(feature = "aws"))]
            ResourceConfig::AwsNotBuilt(never) => match *never {},
        }
    }

    /// The file paths in the declaration, so the agent can resolve relative
    /// ones against the config file's directory.
    pub fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        match self {
            ResourceConfig::FlagsFile(c) => {
                let mut out = vec![&mut c.path];
                out.extend(c.last_known_good.as_mut());
                out
            }
            ResourceConfig::Nginx(c) => c.paths_mut(),
            ResourceConfig::Varnish(c) => c.paths_mut(),
            ResourceConfig::Fastly(c) => c.paths_mut(),
            ResourceConfig::Cloudflare(c) => c.paths_mut(),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsSecretsManager(_)
            | ResourceConfig::AwsLambda(_)
            | ResourceConfig::AwsWafv2(_)
            | ResourceConfig::AwsCloudFront(_)
            | ResourceConfig::AwsAutoScaling(_) => Vec::new(),
            #[cfg(not(feature = "aws"))]
            ResourceConfig::AwsNotBuilt(never) => match *never {},
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
            #[cfg(feature = "aws")]
            ResourceConfig::AwsSecretsManager(c) => c.validate(),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsLambda(c) => c.validate(),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsWafv2(c) => c.validate(),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsCloudFront(c) => c.validate(),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsAutoScaling(c) => c.validate(),
            #[cfg(not(feature = "aws"))]
            ResourceConfig::AwsNotBuilt(never) => match *never {},
        }
    }

    /// Builds the runtime provider for this declaration.
    pub fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        match self {
            ResourceConfig::FlagsFile(c) => Ok(Box::new(flags_file::FlagsFile::new(c.clone())?)),
            ResourceConfig::Nginx(c) => Ok(Box::new(nginx::Nginx::new((**c).clone())?)),
            ResourceConfig::Varnish(c) => Ok(Box::new(varnish::Varnish::new((**c).clone())?)),
            ResourceConfig::Fastly(c) => Ok(Box::new(fastly::Fastly::new((**c).clone()))),
            ResourceConfig::Cloudflare(c) => {
                Ok(Box::new(cloudflare::Cloudflare::new((**c).clone())))
            }
            #[cfg(feature = "aws")]
            ResourceConfig::AwsSecretsManager(c) => Ok(Box::new(
                aws_secretsmanager::SecretsManager::new((**c).clone()),
            )),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsLambda(c) => Ok(Box::new(aws_lambda::Lambda::new((**c).clone()))),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsWafv2(c) => Ok(Box::new(aws_wafv2::Waf::new((**c).clone()))),
            #[cfg(feature = "aws")]
            ResourceConfig::AwsCloudFront(c) => {
                Ok(Box::new(aws_cloudfront::CloudFront::new((**c).clone())))
            }
            #[cfg(feature = "aws")]
            ResourceConfig::AwsAutoScaling(c) => {
                Ok(Box::new(aws_autoscaling::AutoScaling::new((**c).clone())))
            }
            #[cfg(not(feature = "aws"))]
            ResourceConfig::AwsNotBuilt(never) => match *never {},
        }
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
