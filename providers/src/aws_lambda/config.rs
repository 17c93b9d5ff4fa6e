use crate::aws_common::aws_resource_config;
use crate::ConfigError;

aws_resource_config! {
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
    pub struct LambdaConfig {
        /// The function's name or ARN.
        pub function: String,
        /// The alias `lambda.alias` repoints (callers invoke the alias).
        pub alias: String,
    }
}

impl LambdaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("function", &self.function, 170)?;
        check_name("alias", &self.alias, 128)?;
        self.client_settings().validate()
    }
}

/// An AWS resource name: letters, digits and `-_.:/`.
pub(crate) fn check_name(field: &str, v: &str, max: usize) -> Result<(), ConfigError> {
    if v.is_empty()
        || v.len() > max
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err(ConfigError::field(
            field,
            format!("{v:?} is not a valid name"),
        ));
    }
    Ok(())
}
