use std::time::Duration;

use crate::aws_common::aws_resource_config;
use crate::ConfigError;

aws_resource_config! {
    /// A CloudFront distribution whose cache the agent can invalidate.
    ///
    /// ```toml
    /// [resources.shop-cdn]
    /// kind = "aws-cloudfront"
    /// distribution_id = "E2QWRUHAPOMQZL"
    /// ```
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
    }
}

impl CloudFrontConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.distribution_id.is_empty()
            || self.distribution_id.len() > 32
            || !self
                .distribution_id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(ConfigError::field(
                "distribution_id",
                "must be a CloudFront distribution id",
            ));
        }
        if self.wait_timeout.is_zero() || self.poll_interval.is_zero() {
            return Err(ConfigError::fields(
                "wait_timeout and poll_interval must be more than zero",
            ));
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
