//! The `aws-lambda` kind and its ops, as people meet them: CLI verbs,
//! `tourniquet ops`, typed params and readable changes.

use std::path::PathBuf;

use serde_json::Value;

use crate::registry::{
    declaration, str_at, word, Change, Declaration, KindDecl, OpDecl, ParamDecl, ParamKind,
    Placement, Rendered,
};
use crate::{ConfigError, Provider, ProviderError};

use super::{Lambda, LambdaConfig, ALIAS_OP, CONCURRENCY_OP};

pub static KIND: KindDecl = KindDecl {
    kind: "aws-lambda",
    about: "A Lambda function and one alias: repoint the alias, cap concurrency",
    ops: &[&ALIAS, &CONCURRENCY],
    config: declaration::<LambdaConfig>,
};

pub static ALIAS: OpDecl = OpDecl {
    name: ALIAS_OP,
    about: "Point the alias at another published version (a rollback), optionally weighted",
    example: "tourniquet lambda alias checkout-fn 1 --reason \"INC-4: version 2 fails payments\" --hold 1h --to http://127.0.0.1:7370",
    params: &[
        ParamDecl {
            name: "version",
            kind: ParamKind::String,
            doc: "The published version number (or $LATEST) the alias serves",
            example: "1",
            required: true,
            placement: Placement::Positional,
            repeatable: false,
        },
        ParamDecl {
            name: "weights",
            kind: ParamKind::Weight,
            doc: "Send a share of traffic to one other version (at most one)",
            example: "2=10%",
            required: false,
            placement: Placement::Flag("weight"),
            repeatable: true,
        },
    ],
    reversible: true,
    render: render_alias,
};

pub static CONCURRENCY: OpDecl = OpDecl {
    name: CONCURRENCY_OP,
    about: "Set the function's reserved concurrency (0 stops every invocation)",
    example: "tourniquet lambda concurrency checkout-fn 4 --reason \"INC-5: runaway retries\" --hold 30m --to http://127.0.0.1:7370",
    params: &[ParamDecl {
        name: "reserved",
        kind: ParamKind::Integer {
            min: 0,
            max: i32::MAX as i64,
        },
        doc: "Reserved concurrent executions",
        example: "4",
        required: true,
        placement: Placement::Positional,
        repeatable: false,
    }],
    reversible: true,
    render: render_concurrency,
};

/// ` (+ version 3 at 10%)`: the weighted extra version of an alias state.
fn weights_text(state: Option<&Value>) -> String {
    let Some(w) = state
        .and_then(|s| s.get("weights"))
        .and_then(Value::as_object)
    else {
        return String::new();
    };
    w.iter()
        .map(|(v, r)| {
            // A ratio as a percentage, to two decimals: 0.07 is 7%, not
            // 7.000000000000001%.
            let pct = r.as_f64().map_or_else(
                || word(Some(r)),
                |r| format!("{}%", (r * 10_000.0).round() / 100.0),
            );
            format!(" (+ version {v} at {pct})")
        })
        .collect()
}

/// `live: version 2 → 1`.
fn render_alias(c: &Change) -> Rendered {
    let alias = str_at(c.before, "alias")
        .or(str_at(c.after, "alias"))
        .unwrap_or("alias");
    let to = str_at(c.after, "version")
        .or(c.params.get("version").and_then(Value::as_str))
        .unwrap_or("?");
    let text = match str_at(c.before, "version") {
        Some(from) => format!(
            "version {from}{} → {to}{}",
            weights_text(c.before),
            weights_text(c.after)
        ),
        None => format!("version → {to}{}", weights_text(c.after)),
    };
    Rendered::of(alias, text)
}

/// `reserved concurrency 100 → 4`; no reservation reads `unreserved`.
fn render_concurrency(c: &Change) -> Rendered {
    let shown = |s: Option<&Value>| match s.and_then(|s| s.get("reserved")) {
        None => None,
        Some(Value::Null) => Some("unreserved".to_string()),
        Some(v) => Some(word(Some(v))),
    };
    let to = shown(c.after).unwrap_or_else(|| word(c.params.get("reserved")));
    Rendered::text(match shown(c.before) {
        Some(from) => format!("reserved concurrency {from} → {to}"),
        None => format!("reserved concurrency → {to}"),
    })
}

impl Declaration for LambdaConfig {
    fn detail(&self) -> String {
        format!(
            "function {} alias {}, {}",
            self.function,
            self.alias,
            self.client_settings().describe()
        )
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        Vec::new()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        LambdaConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(Lambda::new(self.clone())))
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::{change_line, find_op};
    use serde_json::json;

    #[test]
    fn an_alias_change_names_the_alias_and_both_versions() {
        let params = json!({"version": "1"});
        let p = params.as_object().unwrap();
        let before = json!({"alias": "live", "version": "2", "weights": {}});
        let after = json!({"alias": "live", "version": "1", "weights": {}});
        assert_eq!(
            change_line(
                "checkout-fn",
                "lambda.alias",
                p,
                Some(&before),
                Some(&after)
            ),
            "checkout-fn lambda.alias live: version 2 → 1"
        );
        let after = json!({"alias": "live", "version": "3", "weights": {"2": 0.07}});
        assert_eq!(
            change_line(
                "checkout-fn",
                "lambda.alias",
                p,
                Some(&before),
                Some(&after)
            ),
            "checkout-fn lambda.alias live: version 2 → 3 (+ version 2 at 7%)"
        );
        let before = json!({"function": "f", "reserved": null});
        let after = json!({"function": "f", "reserved": 4});
        assert_eq!(
            change_line(
                "checkout-fn",
                "lambda.concurrency",
                p,
                Some(&before),
                Some(&after)
            ),
            "checkout-fn lambda.concurrency: reserved concurrency unreserved → 4"
        );
    }

    #[test]
    fn weights_parse_into_the_object_the_provider_takes() {
        let alias = find_op("lambda.alias").unwrap();
        let p = alias
            .parse_kv(&["version=3".into(), "weights=2=10%".into()])
            .unwrap();
        assert_eq!(
            serde_json::Value::Object(p),
            json!({"version": "3", "weights": {"2": "10%"}})
        );
        let err = alias
            .parse_kv(&["version=3".into(), "weights=2".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a version weight"), "{err}");
    }
}
