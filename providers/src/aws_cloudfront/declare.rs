//! The `aws-cloudfront` kind: `cdn.purge`, declared once in
//! [`crate::purge`].

use std::path::PathBuf;

use crate::purge::{Purger, PURGE};
use crate::registry::{declaration, Declaration, KindDecl};
use crate::{ConfigError, Provider, ProviderError};

use super::{CloudFront, CloudFrontConfig};

pub static KIND: KindDecl = KindDecl {
    kind: "aws-cloudfront",
    about: "A CloudFront distribution: cdn.purge by invalidation",
    ops: &[&PURGE],
    config: declaration::<CloudFrontConfig>,
};

impl Declaration for CloudFrontConfig {
    fn detail(&self) -> String {
        format!(
            "distribution {}, {}",
            self.distribution_id,
            self.client_settings().describe()
        )
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        Vec::new()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        CloudFrontConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(Purger(CloudFront::new(self.clone()))))
    }
}
