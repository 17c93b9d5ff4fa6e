use crate::aws_common::aws_resource_config;
use crate::ConfigError;

aws_resource_config! {
    /// An EC2 Auto Scaling group whose size the agent can cap.
    ///
    /// ```toml
    /// [resources.web-asg]
    /// kind = "aws-autoscaling"
    /// group = "web-prod"
    /// ```
    pub struct AutoScalingConfig {
        /// The Auto Scaling group's name.
        pub group: String,
    }
}

impl AutoScalingConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::aws_lambda::check_name("group", &self.group, 255)?;
        self.client_settings().validate()
    }
}
