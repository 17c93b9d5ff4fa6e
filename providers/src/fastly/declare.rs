//! The `fastly` kind: `cdn.purge`, declared once in [`crate::purge`].

use std::path::PathBuf;

use crate::purge::{Purger, PURGE};
use crate::registry::{declaration, Declaration, KindDecl};
use crate::{ConfigError, Provider, ProviderError};

use super::{Fastly, FastlyConfig};

pub static KIND: KindDecl = KindDecl {
    kind: "fastly",
    about: "A Fastly service: cdn.purge through Fastly's API",
    ops: &[&PURGE],
    config: declaration::<FastlyConfig>,
};

impl Declaration for FastlyConfig {
    fn detail(&self) -> String {
        format!("service {} ({})", self.service_id, self.host)
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        FastlyConfig::paths_mut(self)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        FastlyConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(Purger(Fastly::new(self.clone()))))
    }
}
