use std::time::Duration;

use serde::Deserialize;

use crate::aws_common::{self, ClientSettings};

/// A secret in AWS Secrets Manager whose AWSCURRENT stage the agent can
/// move back to an earlier version.
///
/// ```toml
/// [resources.payments-api-key]
/// kind = "aws-secretsmanager"
/// secret_id = "prod/payments/api-key"
/// region = "eu-central-1"
/// ```
///
/// The agent moves staging labels only. It never reads a secret value, so
/// it needs no `secretsmanager:GetSecretValue` permission.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsManagerConfig {
    /// The secret's name or ARN.
    pub secret_id: String,
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

impl SecretsManagerConfig {
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
        let id = &self.secret_id;
        if id.is_empty()
            || id.len() > 2048
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-:".contains(&b))
        {
            return Err("secret_id: must be a secret name or ARN".into());
        }
        self.client_settings().validate()
    }
}
