//! The `flags-file` kind and its ops, as people meet them: CLI verbs,
//! `tourniquet ops`, typed params and readable changes.

use std::path::PathBuf;

use serde_json::Value;

use crate::registry::{
    declaration, str_at, Change, Declaration, KindDecl, OpDecl, ParamDecl, ParamKind, Placement,
    Rendered,
};
use crate::{ConfigError, Provider, ProviderError};

use super::{FlagsFile, FlagsFileConfig};

pub static KIND: KindDecl = KindDecl {
    kind: "flags-file",
    about: "A flagd / OpenFeature flag-definition file",
    ops: &[&SET, &STATE],
    config: declaration::<FlagsFileConfig>,
};

const FLAG: ParamDecl = ParamDecl {
    name: "flag",
    kind: ParamKind::String,
    doc: "The flag's key in the flags file",
    example: "new_checkout",
    required: true,
    placement: Placement::Positional,
    repeatable: false,
};

pub static SET: OpDecl = OpDecl {
    name: "flag.set",
    about: "Set a flag's default variant (a kill switch: serve its \"off\" variant)",
    example: "tourniquet flag set checkout-flags new_checkout off --reason \"INC-1: checkout 500s\" --hold 30m --to http://127.0.0.1:7370",
    params: &[
        FLAG,
        ParamDecl {
            name: "variant",
            kind: ParamKind::String,
            doc: "The variant to serve by default; one the flag already has",
            example: "off",
            required: true,
            placement: Placement::Positional,
            repeatable: false,
        },
    ],
    reversible: true,
    render: render_set,
};

pub static STATE: OpDecl = OpDecl {
    name: "flag.state",
    about: "Enable or disable a flag (a disabled flag serves the code default)",
    example: "tourniquet flag state checkout-flags new_checkout off --reason \"INC-1: checkout 500s\" --to http://127.0.0.1:7370",
    params: &[
        FLAG,
        ParamDecl {
            name: "state",
            kind: ParamKind::Enum(&[
                ("on", "ENABLED"),
                ("off", "DISABLED"),
                ("ENABLED", "ENABLED"),
                ("DISABLED", "DISABLED"),
            ]),
            doc: "on (ENABLED) or off (DISABLED)",
            example: "off",
            required: true,
            placement: Placement::Positional,
            repeatable: false,
        },
    ],
    reversible: true,
    render: render_state,
};

fn flag_name(c: &Change) -> String {
    c.params
        .get("flag")
        .and_then(|v| v.as_str())
        .or(str_at(c.before, "flag"))
        .unwrap_or("?")
        .to_string()
}

/// A flag state as a word: its default variant, marked when the flag is
/// disabled (`off (DISABLED)`).
fn variant_text(state: Option<&Value>) -> Option<String> {
    let variant = str_at(state, "defaultVariant")?;
    Some(match str_at(state, "state") {
        Some("DISABLED") => format!("{variant} (DISABLED)"),
        _ => variant.to_string(),
    })
}

/// `new_checkout: on → off`.
fn render_set(c: &Change) -> Rendered {
    let to = variant_text(c.after).unwrap_or_else(|| {
        c.params
            .get("variant")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    });
    let from = variant_text(c.before).unwrap_or_else(|| "-".into());
    Rendered::of(flag_name(c), format!("{from} → {to}"))
}

/// `new_checkout: ENABLED → DISABLED`.
fn render_state(c: &Change) -> Rendered {
    let to = str_at(c.after, "state")
        .or(c.params.get("state").and_then(Value::as_str))
        .unwrap_or("?");
    let from = str_at(c.before, "state").unwrap_or("-");
    Rendered::of(flag_name(c), format!("{from} → {to}"))
}

impl Declaration for FlagsFileConfig {
    fn detail(&self) -> String {
        self.path.display().to_string()
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut out = vec![&mut self.path];
        out.extend(self.last_known_good.as_mut());
        out
    }

    fn validate(&self) -> Result<(), ConfigError> {
        FlagsFileConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(FlagsFile::new(self.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::change_line;
    use serde_json::json;

    #[test]
    fn a_flag_change_reads_as_its_variant_or_state() {
        let params = json!({"flag": "new_checkout", "variant": "off"});
        let p = params.as_object().unwrap();
        let before = json!({"flag": "new_checkout", "state": "ENABLED", "defaultVariant": "on"});
        let after = json!({"flag": "new_checkout", "state": "ENABLED", "defaultVariant": "off"});
        assert_eq!(
            change_line("demo-flags", "flag.set", p, Some(&before), Some(&after)),
            "demo-flags flag.set new_checkout: on → off"
        );
        let after = json!({"flag": "new_checkout", "state": "DISABLED", "defaultVariant": "on"});
        assert_eq!(
            change_line("demo-flags", "flag.state", p, Some(&before), Some(&after)),
            "demo-flags flag.state new_checkout: ENABLED → DISABLED"
        );
    }
}
