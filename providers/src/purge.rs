//! `cdn.purge`, shared by the cache providers (varnish, fastly,
//! cloudflare): strict parsing of what to purge. Each provider accepts the
//! subset of targets it can honour; nothing else from a command reaches a
//! ban, an API body or a URL.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ActionSpec, OpParams, ProviderError};

/// The op every cache provider implements.
pub const PURGE_OP: &str = "cdn.purge";
/// The most items one purge may name.
pub const MAX_ITEMS: usize = 256;
/// The longest path or prefix accepted.
pub const MAX_PATH_LEN: usize = 1024;
/// The longest surrogate key or tag accepted.
pub const MAX_KEY_LEN: usize = 256;

/// Params of `cdn.purge`: exactly one of the lists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeParams {
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    prefixes: Option<Vec<String>>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    soft: Option<bool>,
}

impl OpParams for PurgeParams {
    const FIELDS: &'static [&'static str] = &["paths", "prefixes", "keys", "hosts", "soft"];
}

/// What a purge names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Exact URL paths, optionally with a query string.
    Paths(Vec<String>),
    /// URL path prefixes.
    Prefixes(Vec<String>),
    /// Surrogate keys (Fastly, xkey) or cache tags (Cloudflare).
    Keys(Vec<String>),
    /// Whole hostnames.
    Hosts(Vec<String>),
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Paths(_) => "paths",
            Target::Prefixes(_) => "prefixes",
            Target::Keys(_) => "keys",
            Target::Hosts(_) => "hosts",
        }
    }

    pub fn items(&self) -> &[String] {
        match self {
            Target::Paths(v) | Target::Prefixes(v) | Target::Keys(v) | Target::Hosts(v) => v,
        }
    }
}

/// A validated purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Purge {
    pub target: Target,
    /// Mark stale instead of evicting, where the CDN can (Fastly).
    pub soft: bool,
}

impl Purge {
    /// Identifies equal purges, for `state_key`.
    pub fn key(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let d = Sha256::digest(&canonical);
        let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("purge:{}:{hex}", self.target.kind())
    }
}

/// Parses `cdn.purge` for a provider that supports the targets named in
/// `supported` (and soft purges if `soft_ok`).
pub fn parse(
    action: &ActionSpec,
    provider: &str,
    supported: &[&str],
    soft_ok: bool,
) -> Result<Purge, ProviderError> {
    if action.op != PURGE_OP {
        return Err(ProviderError::Invalid(format!(
            "a {provider} resource does not support op {:?} (it supports {PURGE_OP})",
            action.op
        )));
    }
    let p: PurgeParams = action.parse_params()?;
    let invalid = |m: String| ProviderError::Invalid(format!("{PURGE_OP}: {m}"));
    let mut given = Vec::new();
    if let Some(v) = p.paths {
        given.push(("paths", v));
    }
    if let Some(v) = p.prefixes {
        given.push(("prefixes", v));
    }
    if let Some(v) = p.keys {
        given.push(("keys", v));
    }
    if let Some(v) = p.hosts {
        given.push(("hosts", v));
    }
    let all = supported.join(", ");
    if given.len() != 1 {
        return Err(invalid(format!("give exactly one of {all}")));
    }
    let (kind, mut items) = given.remove(0);
    if !supported.contains(&kind) {
        return Err(invalid(format!(
            "a {provider} resource cannot purge by {kind} (it takes {all})"
        )));
    }
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(invalid(format!(
            "{kind}: give between 1 and {MAX_ITEMS} items"
        )));
    }
    for item in &items {
        let checked = match kind {
            "paths" => check_path(item, true),
            "prefixes" => check_path(item, false),
            "keys" => check_key(item),
            _ => check_host(item),
        };
        checked.map_err(|e| invalid(format!("{kind}: {e}")))?;
    }
    items.sort();
    items.dedup();
    let soft = p.soft.unwrap_or(false);
    if soft && !soft_ok {
        return Err(invalid(format!("a {provider} resource cannot soft-purge")));
    }
    let target = match kind {
        "paths" => Target::Paths(items),
        "prefixes" => Target::Prefixes(items),
        "keys" => Target::Keys(items),
        _ => Target::Hosts(items),
    };
    Ok(Purge { target, soft })
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A URL path: starts with `/`, then only unreserved characters, `/`, and
/// (with `query`) one `?` and `= & + , : @ %XX`. No quote, backslash,
/// space, `$`, `{`, `;` or control character can pass.
pub fn check_path(p: &str, query: bool) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{:?} must start with \"/\"", shown(p)));
    }
    if p.len() > MAX_PATH_LEN {
        return Err(format!("{:?}…: longer than {MAX_PATH_LEN} bytes", shown(p)));
    }
    let bytes = p.as_bytes();
    let mut seen_query = false;
    for (i, &b) in bytes.iter().enumerate() {
        let ok = match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'_' | b'.' | b'~' | b'-' => true,
            b'%' => bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
            b'?' if query && !seen_query => {
                seen_query = true;
                true
            }
            b'=' | b'&' | b'+' | b',' | b':' | b'@' => query,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "{:?}: character {:?} is not allowed here",
                shown(p),
                char::from(b)
            ));
        }
    }
    Ok(())
}

/// A surrogate key or tag: `A-Z a-z 0-9 _ . : / -`.
pub fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > MAX_KEY_LEN {
        return Err(format!("{:?}: must be 1 to {MAX_KEY_LEN} bytes", shown(k)));
    }
    if let Some(c) = k
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')))
    {
        return Err(format!(
            "{:?}: character {c:?} is not allowed in a key (only A-Z a-z 0-9 _ . : / -)",
            shown(k)
        ));
    }
    Ok(())
}

/// A DNS hostname: dot-separated labels of `A-Z a-z 0-9 -`.
pub fn check_host(h: &str) -> Result<(), String> {
    let bad = || format!("{:?} is not a hostname", shown(h));
    if h.is_empty() || h.len() > 253 {
        return Err(bad());
    }
    for label in h.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad());
        }
    }
    Ok(())
}

/// A PCRE pattern matching `s` literally, for the characters the checks
/// above allow (no backslashes: each metacharacter goes in a class).
pub fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '.' | '?' | '+' | '*' | '$' | '^' | '(' | ')' | '|' | '{' | '}' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn spec(params: Value) -> ActionSpec {
        ActionSpec {
            op: PURGE_OP.into(),
            params: params.as_object().cloned().unwrap_or_default(),
        }
    }

    const ALL: &[&str] = &["paths", "prefixes", "keys", "hosts"];

    #[test]
    fn one_list_of_clean_items() {
        let p = parse(
            &spec(json!({"paths": ["/b?x=1&y=%2F", "/a", "/a"]})),
            "t",
            ALL,
            false,
        )
        .unwrap();
        assert_eq!(
            p.target,
            Target::Paths(vec!["/a".into(), "/b?x=1&y=%2F".into()])
        );
        for bad in [
            json!({}),
            json!({"paths": ["/a"], "keys": ["k"]}),
            json!({"paths": []}),
            json!({"paths": "/a"}),
            json!({"paths": ["/a"], "vcl": "ban req.url ~ ."}),
            json!({"paths": ["/a\" || req.url ~ \".\""]}),
            json!({"paths": ["/a\nban.list"]}),
            json!({"paths": ["/a b"]}),
            json!({"paths": ["/a;"]}),
            json!({"paths": ["/a$"]}),
            json!({"paths": ["/a{"]}),
            json!({"paths": ["/%zz"]}),
            json!({"paths": ["/a?b?c"]}),
            json!({"paths": ["a"]}),
            json!({"prefixes": ["/a?x"]}),
            json!({"keys": ["a b"]}),
            json!({"keys": ["k\""]}),
            json!({"keys": [""]}),
            json!({"hosts": ["-a.example"]}),
            json!({"hosts": ["a..example"]}),
            json!({"hosts": ["a.example/"]}),
            json!({"paths": ["/a"], "soft": true}),
        ] {
            assert!(
                matches!(
                    parse(&spec(bad.clone()), "t", ALL, false),
                    Err(ProviderError::Invalid(_))
                ),
                "{bad} was accepted"
            );
        }
        assert!(parse(
            &spec(json!({"hosts": ["a.example"]})),
            "t",
            &["paths"],
            false
        )
        .is_err());
        assert!(
            parse(&spec(json!({"keys": ["k"], "soft": true})), "t", ALL, true)
                .unwrap()
                .soft
        );
    }

    #[test]
    fn equal_purges_share_a_key() {
        let a = parse(&spec(json!({"keys": ["b", "a"]})), "t", ALL, false).unwrap();
        let b = parse(&spec(json!({"keys": ["a", "b", "a"]})), "t", ALL, false).unwrap();
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn regex_literals_have_no_backslash() {
        assert_eq!(regex_literal("/a.b?c+d"), "/a[.]b[?]c[+]d");
    }
}
