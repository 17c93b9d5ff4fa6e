use std::time::Duration;

use serde::Deserialize;

use crate::aws_common::{self, ClientSettings};

/// A CloudFront distribution whose cache the agent can invalidate.
///
/// ```toml
/// [resources.shop-cdn]
/// kind = "aws-cloudfront"
/// distribution_id = "E2QWRUHAPOMQZL"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudFrontConfig {
    /// The distribution's id.
    pub distribution_id: String,
    /// How long `cdn.purge` waits for the invalidation to complete before
    /// it fails. Default: 15m.
    #[serde(default = "default_wait_timeout", with = "crate::duration")]
    pub wait_timeout: Duration,
    /// How often the invalidation's status is read while waiting. Default: 10s.
    #[serde(default = "default_poll_interval", with = "crate::duration")]
    pub poll_interval: Duration,
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

impl CloudFrontConfig {
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
        if self.distribution_id.is_empty()
            || self.distribution_id.len() > 32
            || !self
                .distribution_id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err("distribution_id: must be a CloudFront distribution id".into());
        }
        if self.wait_timeout.is_zero() || self.poll_interval.is_zero() {
            return Err("wait_timeout and poll_interval must be more than zero".into());
        }
        self.client_settings().validate()
    }
}

fn default_wait_timeout() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}
