//! The `nginx` kind and its ops, as people meet them: CLI verbs,
//! `tourniquet ops`, typed params and readable changes.

use std::path::PathBuf;

use serde_json::Value;

use crate::registry::{
    declaration, list_text, param_strings, strings_at, Change, Declaration, KindDecl, OpDecl,
    ParamDecl, ParamKind, Placement, Rendered,
};
use crate::{ConfigError, Provider, ProviderError};

use super::rules::{DEFAULT_RETRY_AFTER, DEFAULT_STATUS, MAX_RETRY_AFTER};
use super::{Nginx, NginxConfig};

pub static KIND: KindDecl = KindDecl {
    kind: "nginx",
    about: "An nginx server's managed include file: deny lists and brownouts",
    ops: &[&DENY, &BROWNOUT],
    config: declaration::<NginxConfig>,
};

pub static DENY: OpDecl = OpDecl {
    name: "nginx.deny",
    about: "Answer 403 to requests from these networks",
    example: "tourniquet nginx deny edge-nginx 203.0.113.7/32 198.51.100.0/24 --reason \"INC-7: credential stuffing\" --hold 2h --to http://127.0.0.1:7370",
    params: &[ParamDecl {
        name: "cidrs",
        kind: ParamKind::Cidr,
        doc: "Networks (or single addresses) to deny",
        example: "203.0.113.7/32",
        required: true,
        placement: Placement::Positional,
        repeatable: true,
    }],
    reversible: true,
    render: render_deny,
};

pub static BROWNOUT: OpDecl = OpDecl {
    name: "nginx.brownout",
    about: "Answer a status with Retry-After under these path prefixes, to shed load",
    example: "tourniquet nginx brownout edge-nginx /search /export --status 503 --retry-after 120s --reason \"INC-8: database saturated\" --hold 30m --to http://127.0.0.1:7370",
    params: &[
        ParamDecl {
            name: "paths",
            kind: ParamKind::UrlPath,
            doc: "Path prefixes to brown out",
            example: "/search",
            required: true,
            placement: Placement::Positional,
            repeatable: true,
        },
        ParamDecl {
            name: "status",
            kind: ParamKind::Integer { min: 400, max: 599 },
            doc: "The status to answer (default 503)",
            example: "503",
            required: false,
            placement: Placement::Flag("status"),
            repeatable: false,
        },
        ParamDecl {
            name: "retry_after",
            kind: ParamKind::Duration {
                min_secs: 1,
                max_secs: MAX_RETRY_AFTER as u64,
            },
            doc: "The Retry-After clients are told (default 60s)",
            example: "120s",
            required: false,
            placement: Placement::Flag("retry-after"),
            repeatable: false,
        },
    ],
    reversible: true,
    render: render_brownout,
};

fn present(v: Option<&Value>) -> Option<bool> {
    v.and_then(|v| v.get("present")).and_then(Value::as_bool)
}

/// `+` when the action put its entry in, `-` when it took it out, and
/// "no change" when it was already as asked.
fn sign(c: &Change) -> Result<&'static str, &'static str> {
    match (
        present(c.before).unwrap_or(false),
        present(c.after).unwrap_or(true),
    ) {
        (false, true) => Ok("+"),
        (true, false) => Ok("-"),
        (true, true) => Err("already in force (no change)"),
        (false, false) => Err("not in force (no change)"),
    }
}

/// The list at `key`: canonical from a state, else as the params gave it.
fn items(c: &Change, key: &str) -> Vec<String> {
    for state in [c.after, c.before] {
        let v = strings_at(state, key);
        if !v.is_empty() {
            return v;
        }
    }
    param_strings(c.params, key)
}

/// `+203.0.113.7/32 (answered 403)`.
fn render_deny(c: &Change) -> Rendered {
    let cidrs = items(c, "cidrs");
    Rendered::text(match sign(c) {
        Ok("+") => format!("{} (answered 403)", list_text("+", &cidrs)),
        Ok(s) => list_text(s, &cidrs),
        Err(note) => format!("{} {note}", list_text("", &cidrs)),
    })
}

/// `+/search → 503, Retry-After 120s`.
fn render_brownout(c: &Change) -> Rendered {
    let paths = items(c, "paths");
    let num = |key: &str, default: u64| {
        c.after
            .or(c.before)
            .and_then(|s| s.get(key))
            .or(c.params.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(default)
    };
    let status = num("status", u64::from(DEFAULT_STATUS));
    let retry = num("retry_after", u64::from(DEFAULT_RETRY_AFTER));
    Rendered::text(match sign(c) {
        Ok("+") => format!(
            "{} → {status}, Retry-After {}",
            list_text("+", &paths),
            humantime::format_duration(std::time::Duration::from_secs(retry))
        ),
        Ok(s) => format!("{} (brownout {status} ended)", list_text(s, &paths)),
        Err(note) => format!("{} {note}", list_text("", &paths)),
    })
}

impl Declaration for NginxConfig {
    fn detail(&self) -> String {
        self.include.display().to_string()
    }

    fn paths_mut(&mut self) -> Vec<&mut PathBuf> {
        NginxConfig::paths_mut(self)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        NginxConfig::validate(self)
    }

    fn build(&self) -> Result<Box<dyn Provider>, ProviderError> {
        Ok(Box::new(Nginx::new(self.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::change_line;
    use serde_json::json;

    #[test]
    fn changes_read_as_entries_in_and_out() {
        let params = json!({"cidrs": ["203.0.113.7"]});
        let p = params.as_object().unwrap();
        let before = json!({"op": "nginx.deny", "cidrs": ["203.0.113.7/32"], "present": false});
        let after = json!({"op": "nginx.deny", "cidrs": ["203.0.113.7/32"], "present": true});
        assert_eq!(
            change_line("edge", "nginx.deny", p, Some(&before), Some(&after)),
            "edge nginx.deny: +203.0.113.7/32 (answered 403)"
        );
        assert_eq!(
            change_line("edge", "nginx.deny", p, Some(&after), Some(&before)),
            "edge nginx.deny: -203.0.113.7/32"
        );
        let params = json!({"paths": ["/search"], "retry_after": 120});
        let after =
            json!({"paths": ["/search"], "status": 503, "retry_after": 120, "present": true});
        assert_eq!(
            change_line(
                "edge",
                "nginx.brownout",
                params.as_object().unwrap(),
                None,
                Some(&after)
            ),
            "edge nginx.brownout: +/search → 503, Retry-After 2m"
        );
    }
}
