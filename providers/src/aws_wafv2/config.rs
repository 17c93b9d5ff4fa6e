use std::time::Duration;

use serde::Deserialize;

use crate::aws_common::{self, ClientSettings};

/// A WAFv2 IP set that the agent can add blocked CIDRs to. A web ACL rule
/// that blocks the set's addresses is assumed to exist already.
///
/// ```toml
/// [resources.blocklist]
/// kind = "aws-wafv2"
/// scope = "REGIONAL"              # or CLOUDFRONT (then region us-east-1)
/// ip_set_name = "tourniquet-blocklist"
/// ip_set_id = "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafConfig {
    /// `REGIONAL` (ALB, API Gateway, …) or `CLOUDFRONT`.
    pub scope: WafScope,
    /// The IP set's name.
    pub ip_set_name: String,
    /// The IP set's id.
    pub ip_set_id: String,
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

impl WafConfig {
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
        crate::aws_lambda::check_name("ip_set_name", &self.ip_set_name, 128)?;
        crate::aws_lambda::check_name("ip_set_id", &self.ip_set_id, 36)?;
        self.client_settings().validate()
    }
}

/// Where a WAF resource lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WafScope {
    #[serde(rename = "REGIONAL")]
    Regional,
    #[serde(rename = "CLOUDFRONT")]
    Cloudfront,
}
