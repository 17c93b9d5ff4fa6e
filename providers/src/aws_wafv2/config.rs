use crate::aws_common::aws_resource_config;
use crate::ConfigError;
use serde::Deserialize;

aws_resource_config! {
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
    pub struct WafConfig {
        /// `REGIONAL` (ALB, API Gateway, …) or `CLOUDFRONT`.
        pub scope: WafScope,
        /// The IP set's name.
        pub ip_set_name: String,
        /// The IP set's id.
        pub ip_set_id: String,
    }
}

impl WafConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
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
