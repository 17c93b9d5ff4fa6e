//! The `aws-secretsmanager` kind and `secret.rollback`, as people meet
//! them: CLI verb, `tourniquet ops`, typed params and readable changes.

use std::path::PathBuf;

use serde_json::Value;

use crate::registry::{
    declaration, str_at, Change, Declaration, KindDecl, OpDecl, ParamDecl, ParamKind, Placement,
    Rendered,
};
use crate::{ConfigError, Provider, ProviderError};

use super::{SecretsManager, SecretsManagerConfig, OP};

pub static KIND: KindDecl = KindDecl {
    kind: "aws-secretsmanager",
    about: "A secret in AWS Secrets Manager whose AWSCURRENT stage can move back",
    ops: &[&ROLLBACK],
    config: declaration::<SecretsManagerConfig>,
};

pub static ROLLBACK: OpDecl = OpDecl {
    name: OP,
    about: "Move AWSCURRENT back to an earlier version (default: AWSPREVIOUS); never reads a value",
    example: "tourniquet secret rollback payments-api-key --reason \"INC-3: rotated key rejected\" --hold 1h --to http://127.0.0.1:7370",
    params: &[ParamDecl {
        name: "to_version",
        kind: ParamKind::String,
        doc: "The version id to make current (default: the one labelled AWSPREVIOUS)",
        example: "a1b2c3d4-5678-90ab-cdef-EXAMPLE22222",
        required: false,
        placement: Placement::Flag("to-version"),
        repeatable: false,
    }],
    reversible: true,
    render: render_rollback,
};

/// `AWSCURRENT a1b2… → c3d4…`.
fn render_rollback(c: &Change) -> Rendered {
    let to = str_at(c.after, "current")
        .or(c.params.get("to_version").and_then(Value::as_str))
        .unwrap_or("AWSPREVIOUS");
    Rendered::text(match str_at(c.before, "current") {
        Some(from) => format!("AWSCURRENT {from} → {to}"),
        None => format!("AWSCURRENT → {to}"),
    })
}

impl Declaration for SecretsManagerConfig {
    fn detail(&self) -> String {
        format!(
            "secret {}, {}",
            self.secret_id,
            self.client_settings().describe()
        )
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        Vec::new()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        SecretsManagerConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(SecretsManager::new(self.clone())))
    }
}
