//! The `varnish` kind: `cdn.purge`, declared once in [`crate::purge`].

use std::path::PathBuf;

use crate::purge::{Purger, PURGE};
use crate::registry::{declaration, Declaration, KindDecl};
use crate::{ConfigError, Provider, ProviderError};

use super::{Varnish, VarnishConfig};

pub static KIND: KindDecl = KindDecl {
    kind: "varnish",
    about: "A Varnish cache: cdn.purge through its admin port or HTTP",
    ops: &[&PURGE],
    config: declaration::<VarnishConfig>,
};

impl Declaration for VarnishConfig {
    fn detail(&self) -> String {
        match (&self.admin, &self.http) {
            (Some(a), _) => format!("admin {}", a.address),
            (_, Some(h)) => h.url.clone(),
            _ => String::new(),
        }
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        VarnishConfig::paths_mut(self)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        VarnishConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(Purger(Varnish::new(self.clone())?)))
    }
}
