use std::time::Duration;

use serde::Deserialize;

use crate::aws_common::{self, ClientSettings};

/// An EC2 Auto Scaling group whose size the agent can cap.
///
/// ```toml
/// [resources.web-asg]
/// kind = "aws-autoscaling"
/// group = "web-prod"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoScalingConfig {
    /// The Auto Scaling group's name.
    pub group: String,
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

impl AutoScalingConfig {
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
        crate::aws_lambda::check_name("group", &self.group, 255)?;
        self.client_settings().validate()
    }
}
