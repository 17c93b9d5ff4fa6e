use crate::aws_common::aws_resource_config;
use crate::ConfigError;

aws_resource_config! {
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
    pub struct SecretsManagerConfig {
        /// The secret's name or ARN.
        pub secret_id: String,
    }
}

impl SecretsManagerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.secret_id;
        if id.is_empty()
            || id.len() > 2048
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-:".contains(&b))
        {
            return Err(ConfigError::field(
                "secret_id",
                "must be a secret name or ARN",
            ));
        }
        self.client_settings().validate()
    }
}
