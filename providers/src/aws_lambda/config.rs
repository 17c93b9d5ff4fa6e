use std::time::Duration;

use serde::Deserialize;

use crate::aws_common::{self, ClientSettings};

/// A Lambda function's alias, and the function's reserved concurrency, that
/// the agent can repoint and cap.
///
/// ```toml
/// [resources.checkout-live]
/// kind = "aws-lambda"
/// function = "checkout"
/// alias = "live"
/// region = "eu-central-1"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaConfig {
    /// The function's name or ARN.
    pub function: String,
    /// The alias `lambda.alias` repoints (callers invoke the alias).
    pub alias: String,
    /// The AWS region. Default: the standard chain (`AWS_REGION`, the
    /// profile, IMDS).
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint: a VPC endpoint, or an emulator in tests. Default:
    /// the service's endpoint for the region.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// How long connecting may take. Default: 3s.
    #[serde(
        default = "aws_common::default_connect_timeout",
        with = "crate::duration"
    )]
    pub connect_timeout: Duration,
    /// How long one try of a call may take. Default: 10s.
    #[serde(
        default = "aws_common::default_attempt_timeout",
        with = "crate::duration"
    )]
    pub attempt_timeout: Duration,
    /// How long one call may take, retries included. Default: 30s.
    #[serde(
        default = "aws_common::default_operation_timeout",
        with = "crate::duration"
    )]
    pub operation_timeout: Duration,
    /// Tries per call when throttled, on 5xx and on timeouts. Default: 4.
    #[serde(default = "aws_common::default_max_attempts")]
    pub max_attempts: u32,
}

impl LambdaConfig {
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            connect_timeout: self.connect_timeout,
            attempt_timeout: self.attempt_timeout,
            operation_timeout: self.operation_timeout,
            max_attempts: self.max_attempts,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        check_name("function", &self.function, 170)?;
        check_name("alias", &self.alias, 128)?;
        self.client_settings().validate()
    }
}

/// An AWS resource name: letters, digits and `-_.:/`.
pub(crate) fn check_name(field: &str, v: &str, max: usize) -> Result<(), String> {
    if v.is_empty()
        || v.len() > max
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err(format!("{field}: {v:?} is not a valid name"));
    }
    Ok(())
}
