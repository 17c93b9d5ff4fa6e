//! `cdn.purge`, shared by the cache providers (varnish, fastly,
//! cloudflare, aws-cloudfront): one op declaration, strict parsing of what
//! to purge, and one provider skeleton ([`Purger`]) around each cache's
//! calls. Each provider accepts the subset of targets it can honour;
//! nothing else from a command reaches a ban, an API body or a URL.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::registry::{
    list_text, param_strings, Change, OpDecl, ParamDecl, ParamKind, Placement, Rendered,
};
use crate::{ActionSpec, OpParams, Provider, ProviderError, State};

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
    surrogate_keys: Option<Vec<String>>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    /// The older name of `surrogate_keys` and `tags`.
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    soft: Option<bool>,
}

impl OpParams for PurgeParams {
    const FIELDS: &'static [&'static str] = &[
        "paths",
        "prefixes",
        "surrogate_keys",
        "tags",
        "keys",
        "hosts",
        "soft",
    ];
}

/// What purges one cache can honour.
#[derive(Debug, Clone, Copy)]
pub struct Accepts {
    /// The lists it purges by, by param name: `paths`, `prefixes`,
    /// `surrogate_keys`, `tags`, `hosts`. Taking either key list also
    /// takes the older `keys`.
    pub by: &'static [&'static str],
    /// Mark stale instead of evicting.
    pub soft: bool,
    /// Paths may end in one `*` (CloudFront's wildcard).
    pub wildcard: bool,
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

/// Parses `cdn.purge` for a `provider` resource that honours `accepts`.
/// A list it cannot purge by is refused by name, with what it takes.
pub fn parse(
    action: &ActionSpec,
    provider: &str,
    accepts: Accepts,
) -> Result<Purge, ProviderError> {
    if action.op != PURGE_OP {
        return Err(ProviderError::Invalid(format!(
            "a {provider} resource does not support op {:?} (it supports {PURGE_OP})",
            action.op
        )));
    }
    let p: PurgeParams = action.parse_params()?;
    let invalid = |m: String| ProviderError::Invalid(format!("{PURGE_OP}: {m}"));
    let takes = |name: &str| {
        accepts.by.contains(&name)
            || (name == "keys"
                && (accepts.by.contains(&"surrogate_keys") || accepts.by.contains(&"tags")))
    };
    let mut given = Vec::new();
    for (name, list) in [
        ("paths", p.paths),
        ("prefixes", p.prefixes),
        ("surrogate_keys", p.surrogate_keys),
        ("tags", p.tags),
        ("keys", p.keys),
        ("hosts", p.hosts),
    ] {
        if let Some(v) = list {
            given.push((name, v));
        }
    }
    let all = accepts.by.join(", ");
    if given.len() != 1 {
        return Err(invalid(format!("give exactly one of {all}")));
    }
    let (name, mut items) = given.remove(0);
    if !takes(name) {
        return Err(invalid(format!(
            "a {provider} resource cannot purge by {name} (it takes {all})"
        )));
    }
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(invalid(format!(
            "{name}: give between 1 and {MAX_ITEMS} items"
        )));
    }
    for item in &items {
        let checked = match name {
            "paths" if accepts.wildcard => {
                // One trailing `*` is the wildcard; the rest is a path.
                let plain = item.strip_suffix('*').unwrap_or(item);
                check_path(if plain.is_empty() { "/" } else { plain }, true)
            }
            "paths" => check_path(item, true),
            "prefixes" => check_path(item, false),
            "hosts" => check_host(item),
            _ => check_key(item),
        };
        checked.map_err(|e| invalid(format!("{name}: {e}")))?;
    }
    items.sort();
    items.dedup();
    let soft = p.soft.unwrap_or(false);
    if soft && !accepts.soft {
        return Err(invalid(format!("a {provider} resource cannot soft-purge")));
    }
    let target = match name {
        "paths" => Target::Paths(items),
        "prefixes" => Target::Prefixes(items),
        "hosts" => Target::Hosts(items),
        _ => Target::Keys(items),
    };
    Ok(Purge { target, soft })
}

/// What a cache provider adds to the shared purge skeleton: what it can
/// purge by, and the calls. Parsing, state keys, snapshots, the refusal to
/// revert and the readable change are the same for every cache.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The kind name, e.g. `fastly`.
    fn kind(&self) -> &'static str;
    fn accepts(&self) -> Accepts;
    /// The state before a purge: nothing purged yet.
    fn idle(&self, p: &Purge) -> State {
        json!({"purge": p.target, "purged": false})
    }
    /// The state a purge would leave, with the calls it would make.
    fn planned(&self, p: &Purge) -> State;
    /// Purges, and returns the state after it.
    async fn purge(&self, p: &Purge) -> Result<State, ProviderError>;
}

/// The provider of any [`Cache`].
pub struct Purger<C>(pub C);

impl<C: Cache> Purger<C> {
    pub fn parse(&self, action: &ActionSpec) -> Result<Purge, ProviderError> {
        parse(action, self.0.kind(), self.0.accepts())
    }
}

#[async_trait]
impl<C: Cache> Provider for Purger<C> {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    fn validate(&self, action: &ActionSpec) -> Result<(), ProviderError> {
        self.parse(action).map(|_| ())
    }

    fn state_key(&self, action: &ActionSpec) -> String {
        match self.parse(action) {
            Ok(p) => p.key(),
            Err(_) => format!("op:{}", action.op),
        }
    }

    async fn snapshot(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        Ok(self.0.idle(&self.parse(action)?))
    }

    fn plan(&self, action: &ActionSpec, _before: &State) -> Result<State, ProviderError> {
        Ok(self.0.planned(&self.parse(action)?))
    }

    async fn apply(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let p = self.parse(action)?;
        self.0.purge(&p).await
    }

    async fn revert(&self, _action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        // Nothing to put back: a purged object is fetched again on demand.
        Ok(before.clone())
    }

    fn reversible(&self, _op: &str) -> bool {
        PURGE.reversible
    }
}

/// `cdn.purge`, one declaration for every cache kind: the union of what
/// they purge by. Each kind refuses, by name, the params it cannot honour.
pub static PURGE: OpDecl = OpDecl {
    name: PURGE_OP,
    about: "Purge cached objects by path, prefix, surrogate key, tag or host",
    example: "tourniquet cdn purge shop-cdn /index.html /static/app.css --reason \"INC-9: stale prices\" --to http://127.0.0.1:7370",
    params: &[
        ParamDecl {
            name: "paths",
            kind: ParamKind::UrlPath,
            doc: "URL paths, with query if any (varnish, fastly, cloudflare; aws-cloudfront allows a trailing *)",
            example: "/index.html",
            required: false,
            placement: Placement::Positional,
            repeatable: true,
        },
        ParamDecl {
            name: "prefixes",
            kind: ParamKind::UrlPath,
            doc: "URL path prefixes (varnish, cloudflare)",
            example: "/static/",
            required: false,
            placement: Placement::Flag("prefix"),
            repeatable: true,
        },
        ParamDecl {
            name: "surrogate_keys",
            kind: ParamKind::String,
            doc: "Surrogate keys (varnish xkey, fastly)",
            example: "product-42",
            required: false,
            placement: Placement::Flag("surrogate-key"),
            repeatable: true,
        },
        ParamDecl {
            name: "tags",
            kind: ParamKind::String,
            doc: "Cache tags (cloudflare)",
            example: "product-42",
            required: false,
            placement: Placement::Flag("tag"),
            repeatable: true,
        },
        ParamDecl {
            name: "hosts",
            kind: ParamKind::Host,
            doc: "Whole hostnames (cloudflare)",
            example: "img.example.com",
            required: false,
            placement: Placement::Flag("host"),
            repeatable: true,
        },
        ParamDecl {
            name: "soft",
            kind: ParamKind::Bool,
            doc: "Mark stale instead of evicting (fastly)",
            example: "true",
            required: false,
            placement: Placement::Flag("soft"),
            repeatable: false,
        },
        ParamDecl {
            name: "keys",
            kind: ParamKind::String,
            doc: "The older name of surrogate_keys and tags",
            example: "product-42",
            required: false,
            placement: Placement::JsonOnly,
            repeatable: true,
        },
    ],
    reversible: false,
    render: render_purge,
};

/// `purged paths /index.html, /static/app.css`.
fn render_purge(c: &Change) -> Rendered {
    let (by, items) = [
        "paths",
        "prefixes",
        "surrogate_keys",
        "tags",
        "keys",
        "hosts",
    ]
    .into_iter()
    .map(|k| (k, param_strings(c.params, k)))
    .find(|(_, v)| !v.is_empty())
    .unwrap_or(("paths", Vec::new()));
    let by = by.replace('_', " ");
    let soft = if c.params.get("soft").and_then(Value::as_bool) == Some(true) {
        " (soft)"
    } else {
        ""
    };
    let done = c
        .after
        .and_then(|a| a.get("purged").or(a.get("invalidated")))
        .and_then(Value::as_bool);
    let verb = match done {
        Some(true) => "purged",
        Some(false) => "not purged",
        None => "purge",
    };
    Rendered::text(format!("{verb} {by} {}{soft}", list_text("", &items)))
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

    const ALL: Accepts = Accepts {
        by: &["paths", "prefixes", "surrogate_keys", "tags", "hosts"],
        soft: false,
        wildcard: false,
    };
    const SOFT: Accepts = Accepts { soft: true, ..ALL };

    #[test]
    fn one_list_of_clean_items() {
        let p = parse(
            &spec(json!({"paths": ["/b?x=1&y=%2F", "/a", "/a"]})),
            "t",
            ALL,
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
                    parse(&spec(bad.clone()), "t", ALL),
                    Err(ProviderError::Invalid(_))
                ),
                "{bad} was accepted"
            );
        }
        assert!(parse(
            &spec(json!({"hosts": ["a.example"]})),
            "t",
            Accepts {
                by: &["paths"],
                ..ALL
            }
        )
        .is_err());
        assert!(
            parse(&spec(json!({"keys": ["k"], "soft": true})), "t", SOFT)
                .unwrap()
                .soft
        );
    }

    #[test]
    fn each_cache_refuses_the_lists_it_cannot_purge_by_by_name() {
        let fastly = Accepts {
            by: &["paths", "surrogate_keys"],
            soft: true,
            wildcard: false,
        };
        let err = parse(&spec(json!({"tags": ["t"]})), "fastly", fastly)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cdn.purge: a fastly resource cannot purge by tags (it takes paths, surrogate_keys)"
        );
        // `keys`, the older name, still reaches a cache that takes keys.
        let a = parse(&spec(json!({"keys": ["k"]})), "fastly", fastly).unwrap();
        let b = parse(&spec(json!({"surrogate_keys": ["k"]})), "fastly", fastly).unwrap();
        assert_eq!(a, b);
        let cf = Accepts {
            by: &["paths"],
            soft: false,
            wildcard: true,
        };
        assert!(parse(
            &spec(json!({"paths": ["/static/*", "/*"]})),
            "aws-cloudfront",
            cf
        )
        .is_ok());
        assert!(parse(&spec(json!({"paths": ["/a*b"]})), "aws-cloudfront", cf).is_err());
        assert!(parse(&spec(json!({"paths": ["/a*"]})), "varnish", ALL).is_err());
    }

    #[test]
    fn equal_purges_share_a_key() {
        let a = parse(&spec(json!({"keys": ["b", "a"]})), "t", ALL).unwrap();
        let b = parse(&spec(json!({"keys": ["a", "b", "a"]})), "t", ALL).unwrap();
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn regex_literals_have_no_backslash() {
        assert_eq!(regex_literal("/a.b?c+d"), "/a[.]b[?]c[+]d");
    }
}
