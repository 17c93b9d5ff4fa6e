//! The `cloudflare` kind: `cdn.purge`, declared once in [`crate::purge`].

use std::path::PathBuf;

use crate::purge::{Purger, PURGE};
use crate::registry::{declaration, Declaration, KindDecl};
use crate::{ConfigError, Provider, ProviderError};

use super::{Cloudflare, CloudflareConfig};

pub static KIND: KindDecl = KindDecl {
    kind: "cloudflare",
    about: "A Cloudflare zone: cdn.purge through Cloudflare's API",
    ops: &[&PURGE],
    config: declaration::<CloudflareConfig>,
};

impl Declaration for CloudflareConfig {
    fn detail(&self) -> String {
        format!("zone {} ({})", self.zone_id, self.host)
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        CloudflareConfig::paths_mut(self)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        CloudflareConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(Purger(Cloudflare::new(self.clone()))))
    }
}
