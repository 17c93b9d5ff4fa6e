//! The op registry: every resource kind and every op, declared once beside
//! its provider.
//!
//! People meet an op in four places: the CLI verb that composes it, the
//! typed `new OP --param k=v`, `tourniquet ops`, and the readable line in
//! `status`, receipts and audit exports. All four are generated from one
//! [`OpDecl`], so a new provider (its folder plus one line in `lib.rs`)
//! shows up everywhere without another edit, and the CLI can never accept
//! a value in a shape the provider refuses ("invalid type: string,
//! expected a sequence").
//!
//! Everything here is pure: parsing and checking params touches nothing,
//! so the agent may call it as well as the CLI. The providers keep their
//! own strict parsing; the declarations describe it for people.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{ConfigError, Provider, ProviderError};

/// The type of one param: how a CLI word becomes the JSON the provider
/// expects, and what a wrong word is told.
#[derive(Debug, Clone, Copy)]
pub enum ParamKind {
    /// One line of text, 1 to 256 characters, no control characters.
    String,
    /// A whole number within bounds (inclusive). JSON: a number.
    Integer { min: i64, max: i64 },
    /// A humantime duration (`120s`, `2m`) or bare seconds, within bounds,
    /// in whole seconds. JSON: the number of seconds.
    Duration { min_secs: u64, max_secs: u64 },
    /// A percentage from 0 to 100, with or without `%`. JSON: a number.
    Percent,
    /// An IPv4 or IPv6 network or address. JSON: the text as given.
    Cidr,
    /// A URL path starting with `/`. JSON: the text as given.
    UrlPath,
    /// A DNS hostname.
    Host,
    /// One of a few words; each word maps to the JSON string the provider
    /// takes (`on` → `ENABLED`).
    Enum(&'static [(&'static str, &'static str)]),
    /// `VERSION=PCT`, a share of traffic for one version. JSON: an object
    /// `{VERSION: "PCT%"}`, every given pair in one object.
    Weight,
    /// `true` or `false`. As a CLI flag: present or absent.
    Bool,
}

/// Where a param sits on its CLI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A positional argument after the resource, in declaration order.
    Positional,
    /// A `--flag` with this long name.
    Flag(&'static str),
    /// Accepted in JSON and by `new --param` only (an older spelling).
    JsonOnly,
}

/// One param of an op.
#[derive(Debug, Clone, Copy)]
pub struct ParamDecl {
    /// The JSON name the provider reads, e.g. `cidrs`.
    pub name: &'static str,
    pub kind: ParamKind,
    /// One line for `--help` and `tourniquet ops`.
    pub doc: &'static str,
    /// One valid CLI word, e.g. `203.0.113.7/32`.
    pub example: &'static str,
    pub required: bool,
    pub placement: Placement,
    /// Given more than once it makes a list (a JSON array, or one object
    /// for [`ParamKind::Weight`]); in JSON it is always a list.
    pub repeatable: bool,
}

/// What a change looks like, for its readable line.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub params: &'a Map<String, Value>,
    /// The state before the action, if recorded.
    pub before: Option<&'a Value>,
    /// The state after it (or the planned one), if known.
    pub after: Option<&'a Value>,
}

/// A change in words: `live` + `version 2 → 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// What inside the resource changed (an alias, a flag), if the op
    /// touches one named part of it.
    pub subject: Option<String>,
    /// Before → after, e.g. `+203.0.113.7/32 (3 → 4 addresses)`.
    pub text: String,
}

impl Rendered {
    pub fn text(text: impl Into<String>) -> Rendered {
        Rendered {
            subject: None,
            text: text.into(),
        }
    }

    pub fn of(subject: impl Into<String>, text: impl Into<String>) -> Rendered {
        Rendered {
            subject: Some(subject.into()),
            text: text.into(),
        }
    }
}

/// One op, as people see it.
#[derive(Debug)]
pub struct OpDecl {
    /// `group.verb`, e.g. `waf.block`: the CLI verb is `waf block`.
    pub name: &'static str,
    /// One line: what the op does.
    pub about: &'static str,
    /// One real command line using the op's verb.
    pub example: &'static str,
    pub params: &'static [ParamDecl],
    /// Whether the agent can put the resource back (a purge cannot).
    pub reversible: bool,
    /// The before → after words. Must not panic on any state: states come
    /// from journals written by older agents too.
    pub render: fn(&Change) -> Rendered,
}

/// A resource kind's declaration as the config gives it, type-erased so
/// one registry holds every kind.
pub trait Declaration: DeclarationClone + fmt::Debug + Send + Sync {
    /// What the agent's banner says about the resource.
    fn detail(&self) -> String;
    /// Every file path in the declaration, so relative ones are resolved
    /// against the config file's directory.
    fn paths_mut(&mut self) -> Vec<&mut PathBuf>;
    /// Checks the declaration without touching anything.
    fn validate(&self) -> Result<(), ConfigError>;
    /// The runtime provider.
    fn build(&self) -> Result<Box<dyn Provider>, ProviderError>;
}

/// Cloning and downcasting for boxed declarations (the agent config is
/// `Clone`, and `agent --check` reads some kinds' fields).
pub trait DeclarationClone {
    fn clone_box(&self) -> Box<dyn Declaration>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Declaration + Clone + 'static> DeclarationClone for T {
    fn clone_box(&self) -> Box<dyn Declaration> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Clone for Box<dyn Declaration> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// One resource kind: its config name, its ops and how its declaration is
/// read.
pub struct KindDecl {
    /// The `kind` of a `[resources.NAME]` table, e.g. `aws-wafv2`.
    pub kind: &'static str,
    /// One line: what such a resource is.
    pub about: &'static str,
    pub ops: &'static [&'static OpDecl],
    /// Reads the declaration's fields (everything but `kind`).
    pub config: fn(Value) -> Result<Box<dyn Declaration>, serde_json::Error>,
}

impl fmt::Debug for KindDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindDecl")
            .field("kind", &self.kind)
            .field("ops", &self.ops.iter().map(|o| o.name).collect::<Vec<_>>())
            .finish()
    }
}

impl KindDecl {
    /// Whether this kind's `op` can be reverted; false for ops it lacks.
    pub fn reversible(&self, op: &str) -> bool {
        self.ops.iter().any(|o| o.name == op && o.reversible)
    }

    /// The op names, for "it supports …" messages.
    pub fn op_names(&self) -> Vec<&'static str> {
        self.ops.iter().map(|o| o.name).collect()
    }
}

/// Reads a config struct `C` as a kind's declaration: the `config` of a
/// [`KindDecl`] is `declaration::<C>`.
pub fn declaration<C>(fields: Value) -> Result<Box<dyn Declaration>, serde_json::Error>
where
    C: Declaration + DeserializeOwned + Clone + 'static,
{
    Ok(Box::new(serde_json::from_value::<C>(fields)?))
}

/// Every kind this build knows, in the order `lib.rs` lists them.
pub fn kinds() -> &'static [&'static KindDecl] {
    static KINDS: OnceLock<Vec<&'static KindDecl>> = OnceLock::new();
    KINDS.get_or_init(crate::registered_kinds)
}

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static KindDecl> {
    kinds().iter().copied().find(|k| k.kind == name)
}

/// The op names of the kind named `kind` (none for an unknown kind).
pub fn op_names(kind: &str) -> &'static [&'static str] {
    static NAMES: OnceLock<BTreeMap<&'static str, Vec<&'static str>>> = OnceLock::new();
    NAMES
        .get_or_init(|| kinds().iter().map(|k| (k.kind, k.op_names())).collect())
        .get(kind)
        .map_or(&[], Vec::as_slice)
}

/// An op and the kinds that support it.
#[derive(Debug, Clone)]
pub struct OpEntry {
    pub op: &'static OpDecl,
    pub kinds: Vec<&'static str>,
}

/// Every op, each once, with the kinds that support it, sorted by name.
pub fn ops() -> Vec<OpEntry> {
    let mut out: Vec<OpEntry> = Vec::new();
    for k in kinds() {
        for op in k.ops {
            match out.iter_mut().find(|e| e.op.name == op.name) {
                Some(e) => e.kinds.push(k.kind),
                None => out.push(OpEntry {
                    op,
                    kinds: vec![k.kind],
                }),
            }
        }
    }
    out.sort_by_key(|e| e.op.name);
    out
}

/// The op named `name`.
pub fn op(name: &str) -> Option<&'static OpDecl> {
    kinds()
        .iter()
        .flat_map(|k| k.ops.iter().copied())
        .find(|o| o.name == name)
}

/// The readable line of one action:
/// `edge-waf waf.block: +203.0.113.7/32 (3 → 4 addresses)`,
/// `checkout-fn lambda.alias live: version 2 → 1`. An op this build does
/// not know is shown with its states as JSON.
pub fn change_line(
    resource: &str,
    op_name: &str,
    params: &Map<String, Value>,
    before: Option<&Value>,
    after: Option<&Value>,
) -> String {
    let change = Change {
        params,
        before,
        after,
    };
    let r = match op(op_name) {
        Some(o) => (o.render)(&change),
        None => Rendered::text(format!(
            "{} → {}",
            compact(before.unwrap_or(&Value::Null)),
            compact(after.unwrap_or(&Value::Null))
        )),
    };
    match r.subject {
        Some(s) => format!("{resource} {op_name} {s}: {}", r.text),
        None => format!("{resource} {op_name}: {}", r.text),
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// Why params do not fit their op. One line each, naming the param, the
/// expected type and an example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown op {op:?}; `tourniquet ops` lists them: {known}")]
    UnknownOp { op: String, known: String },
    #[error("{op}: unknown param {param:?}; expected {expected}")]
    UnknownParam {
        op: String,
        param: String,
        expected: String,
    },
    #[error("{text:?} is not K=V; e.g. --param {example}")]
    NotKeyValue { text: String, example: String },
    #[error("{param}: {value:?} is not {noun}; expected {expected} such as {example}")]
    BadValue {
        param: String,
        value: String,
        noun: String,
        expected: String,
        example: String,
    },
    #[error("{op}: {param} is required ({doc}), e.g. {example}")]
    Missing {
        op: String,
        param: String,
        doc: String,
        example: String,
    },
    #[error("{param}: given more than once, but it takes one value")]
    Repeated { param: String },
}

impl ParamKind {
    /// The type, as `tourniquet ops` shows it.
    pub fn type_name(&self) -> String {
        match self {
            ParamKind::String => "string".into(),
            ParamKind::Integer { min, max } if *max >= i64::from(i32::MAX) => {
                format!("integer ≥ {min}")
            }
            ParamKind::Integer { min, max } => format!("integer {min}..{max}"),
            ParamKind::Duration { .. } => "duration".into(),
            ParamKind::Percent => "percent".into(),
            ParamKind::Cidr => "cidr".into(),
            ParamKind::UrlPath => "path".into(),
            ParamKind::Host => "host".into(),
            ParamKind::Enum(words) => words.iter().map(|(w, _)| *w).collect::<Vec<_>>().join("|"),
            ParamKind::Weight => "VERSION=PCT".into(),
            ParamKind::Bool => "bool".into(),
        }
    }

    /// "a CIDR": what a wrong value is not.
    fn noun(&self) -> String {
        match self {
            ParamKind::String => "a line of text".into(),
            ParamKind::Integer { min, max } => format!("a whole number from {min} to {max}"),
            ParamKind::Duration { min_secs, max_secs } => format!(
                "a duration from {} to {}",
                humantime::format_duration(Duration::from_secs(*min_secs)),
                humantime::format_duration(Duration::from_secs(*max_secs))
            ),
            ParamKind::Percent => "a percentage".into(),
            ParamKind::Cidr => "a CIDR".into(),
            ParamKind::UrlPath => "a URL path".into(),
            ParamKind::Host => "a hostname".into(),
            ParamKind::Enum(_) => format!("one of {}", self.type_name()),
            ParamKind::Weight => "a version weight".into(),
            ParamKind::Bool => "true or false".into(),
        }
    }

    /// "an IPv4 or IPv6 network": what is expected instead.
    fn expected(&self) -> &'static str {
        match self {
            ParamKind::String => "1 to 256 characters on one line",
            ParamKind::Integer { .. } => "an integer",
            ParamKind::Duration { .. } => "a duration in whole seconds",
            ParamKind::Percent => "a number from 0 to 100",
            ParamKind::Cidr => "an IPv4 or IPv6 network",
            ParamKind::UrlPath => "a path starting with /",
            ParamKind::Host => "a DNS name",
            ParamKind::Enum(_) => "one of these words",
            ParamKind::Weight => "a version and its percentage of traffic",
            ParamKind::Bool => "a yes or no",
        }
    }

    /// Parses one CLI word into the JSON of one item.
    fn parse_word(&self, text: &str) -> Result<Value, ()> {
        match self {
            ParamKind::String => {
                if text.is_empty()
                    || text.chars().count() > 256
                    || text.chars().any(char::is_control)
                {
                    return Err(());
                }
                Ok(Value::String(text.to_string()))
            }
            ParamKind::Integer { min, max } => {
                let n: i64 = text.trim().parse().map_err(|_| ())?;
                if n < *min || n > *max {
                    return Err(());
                }
                Ok(Value::from(n))
            }
            ParamKind::Duration { min_secs, max_secs } => {
                let text = text.trim();
                let d = match text.parse::<u64>() {
                    Ok(secs) => Duration::from_secs(secs),
                    Err(_) => humantime::parse_duration(text).map_err(|_| ())?,
                };
                if d.subsec_nanos() != 0 {
                    return Err(());
                }
                let secs = d.as_secs();
                if secs < *min_secs || secs > *max_secs {
                    return Err(());
                }
                Ok(Value::from(secs))
            }
            ParamKind::Percent => Ok(Value::from(parse_percent(text).ok_or(())?)),
            ParamKind::Cidr => {
                crate::cidr::canonical(text).map_err(|_| ())?;
                Ok(Value::String(text.to_string()))
            }
            ParamKind::UrlPath => {
                if !text.starts_with('/')
                    || text.len() > 1024
                    || text.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(());
                }
                Ok(Value::String(text.to_string()))
            }
            ParamKind::Host => {
                crate::purge::check_host(text).map_err(|_| ())?;
                Ok(Value::String(text.to_string()))
            }
            ParamKind::Enum(words) => words
                .iter()
                .find(|(w, _)| *w == text)
                .map(|(_, json)| Value::String((*json).to_string()))
                .ok_or(()),
            ParamKind::Weight => {
                let (version, pct) = text.split_once('=').ok_or(())?;
                let version = version.trim();
                if version.is_empty()
                    || version.len() > 10
                    || !version.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(());
                }
                let p = parse_percent(pct).ok_or(())?;
                if p <= 0.0 || p >= 100.0 {
                    return Err(());
                }
                let mut m = Map::new();
                m.insert(
                    version.to_string(),
                    Value::String(format!("{}%", pct.trim().trim_end_matches('%'))),
                );
                Ok(Value::Object(m))
            }
            ParamKind::Bool => match text {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(()),
            },
        }
    }

    /// Checks one item of JSON, as a provider would receive it.
    fn check_item(&self, v: &Value) -> bool {
        match (self, v) {
            (ParamKind::Integer { .. } | ParamKind::Duration { .. }, Value::Number(n)) => {
                self.parse_word(&n.to_string()).is_ok()
            }
            (ParamKind::Percent, Value::Number(n)) => {
                n.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p))
            }
            (ParamKind::Bool, Value::Bool(_)) => true,
            (ParamKind::Enum(words), Value::String(s)) => words.iter().any(|(_, j)| j == s),
            (ParamKind::Weight, Value::Object(m)) => m.iter().all(|(k, v)| {
                v.as_str()
                    .is_some_and(|w| w.ends_with('%') || w.parse::<f64>().is_ok())
                    && !k.is_empty()
                    && k.bytes().all(|b| b.is_ascii_digit())
            }),
            (
                ParamKind::String | ParamKind::Cidr | ParamKind::UrlPath | ParamKind::Host,
                Value::String(s),
            ) => self.parse_word(s).is_ok(),
            _ => false,
        }
    }
}

/// `10`, `10%`, `2.5%`: a number from 0 to 100.
fn parse_percent(text: &str) -> Option<f64> {
    let t = text.trim();
    let t = t.strip_suffix('%').unwrap_or(t);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let p: f64 = t.parse().ok()?;
    (0.0..=100.0).contains(&p).then_some(p)
}

impl ParamDecl {
    /// The CLI flag, if the param is one.
    pub fn flag(&self) -> Option<&'static str> {
        match self.placement {
            Placement::Flag(f) => Some(f),
            _ => None,
        }
    }

    /// `cidr…`, `integer 0..100`: the type with its list marker.
    pub fn type_name(&self) -> String {
        let t = self.kind.type_name();
        if self.repeatable && !matches!(self.kind, ParamKind::Weight) {
            format!("{t}…")
        } else {
            t
        }
    }

    fn bad(&self, value: &str) -> ParamError {
        ParamError::BadValue {
            param: self.name.to_string(),
            value: value.chars().take(64).collect(),
            noun: self.kind.noun(),
            expected: self.kind.expected().to_string(),
            example: self.example.to_string(),
        }
    }

    /// Parses one CLI word.
    pub fn parse_word(&self, text: &str) -> Result<Value, ParamError> {
        self.kind.parse_word(text).map_err(|()| self.bad(text))
    }

    /// Parses every CLI word given for this param into its JSON value.
    pub fn parse_words(&self, words: &[String]) -> Result<Value, ParamError> {
        let items = words
            .iter()
            .map(|w| self.parse_word(w))
            .collect::<Result<Vec<_>, _>>()?;
        if matches!(self.kind, ParamKind::Weight) {
            let mut m = Map::new();
            for item in items {
                if let Value::Object(o) = item {
                    m.extend(o);
                }
            }
            return Ok(Value::Object(m));
        }
        if self.repeatable {
            return Ok(Value::Array(items));
        }
        let mut items = items.into_iter();
        match (items.next(), items.next()) {
            (Some(v), None) => Ok(v),
            (None, _) => Err(self.bad("")),
            (Some(_), Some(_)) => Err(ParamError::Repeated {
                param: self.name.to_string(),
            }),
        }
    }

    /// Checks this param's JSON value.
    pub fn check(&self, v: &Value) -> Result<(), ParamError> {
        let ok = match (self.repeatable, &self.kind, v) {
            (_, ParamKind::Weight, _) => self.kind.check_item(v),
            (true, _, Value::Array(items)) => items.iter().all(|i| self.kind.check_item(i)),
            (true, _, _) => false,
            (false, _, v) => self.kind.check_item(v),
        };
        if ok {
            Ok(())
        } else {
            let shown = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Err(self.bad(&shown))
        }
    }
}

impl OpDecl {
    /// `waf` of `waf.block`.
    pub fn group(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(g, _)| g)
    }

    /// `block` of `waf.block`.
    pub fn verb(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(_, v)| v)
    }

    pub fn param(&self, name: &str) -> Option<&'static ParamDecl> {
        self.params.iter().find(|p| p.name == name)
    }

    fn param_names(&self) -> String {
        if self.params.is_empty() {
            return "none".into();
        }
        self.params
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parses `new OP --param k=v` items. A repeatable param takes a
    /// repeated key or a comma-separated list; each value is parsed by its
    /// declared type.
    pub fn parse_kv(&self, items: &[String]) -> Result<Map<String, Value>, ParamError> {
        let mut words: Vec<(&'static ParamDecl, Vec<String>)> = Vec::new();
        for item in items {
            let example = self
                .params
                .first()
                .map(|p| format!("{}={}", p.name, p.example))
                .unwrap_or_else(|| "name=value".into());
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| ParamError::NotKeyValue {
                    text: item.clone(),
                    example: example.clone(),
                })?;
            let p = self.param(k).ok_or_else(|| ParamError::UnknownParam {
                op: self.name.to_string(),
                param: k.to_string(),
                expected: self.param_names(),
            })?;
            let values: Vec<String> = if p.repeatable {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            } else {
                vec![v.to_string()]
            };
            if values.is_empty() {
                return Err(p.bad(v));
            }
            match words.iter_mut().find(|(d, _)| d.name == p.name) {
                Some((_, w)) => w.extend(values),
                None => words.push((p, values)),
            }
        }
        let mut out = Map::new();
        for (p, w) in words {
            out.insert(p.name.to_string(), p.parse_words(&w)?);
        }
        self.check_required(&out)?;
        Ok(out)
    }

    fn check_required(&self, params: &Map<String, Value>) -> Result<(), ParamError> {
        match self
            .params
            .iter()
            .find(|p| p.required && !params.contains_key(p.name))
        {
            None => Ok(()),
            Some(p) => Err(ParamError::Missing {
                op: self.name.to_string(),
                param: p.name.to_string(),
                doc: p.doc.to_string(),
                example: format!("{}={}", p.name, p.example),
            }),
        }
    }

    /// Checks params as JSON (a command's action): every param known, of
    /// its declared type, and the required ones present. The provider
    /// still has the last word (cross-param rules, what it supports).
    pub fn check(&self, params: &Map<String, Value>) -> Result<(), ParamError> {
        for (k, v) in params {
            let p = self.param(k).ok_or_else(|| ParamError::UnknownParam {
                op: self.name.to_string(),
                param: k.clone(),
                expected: self.param_names(),
            })?;
            p.check(v)?;
        }
        self.check_required(params)
    }
}

/// Looks an op up, or says which ones exist.
pub fn find_op(name: &str) -> Result<&'static OpDecl, ParamError> {
    op(name).ok_or_else(|| ParamError::UnknownOp {
        op: name.chars().take(64).collect(),
        known: ops()
            .iter()
            .map(|e| e.op.name)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

// Helpers the ops' render functions share.

/// The string at `key` of a state.
pub fn str_at<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a str> {
    v.and_then(|v| v.get(key)).and_then(Value::as_str)
}

/// The strings of the list at `key`, from params or a state.
pub fn strings_at(v: Option<&Value>, key: &str) -> Vec<String> {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The strings of a param's list.
pub fn param_strings(params: &Map<String, Value>, key: &str) -> Vec<String> {
    params
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `a, b, c and 4 more`, with each item prefixed.
pub fn list_text(prefix: &str, items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out: Vec<String> = items
        .iter()
        .take(SHOWN)
        .map(|i| format!("{prefix}{i}"))
        .collect();
    if items.len() > SHOWN {
        out.push(format!("and {} more", items.len() - SHOWN));
    }
    if out.is_empty() {
        return "nothing".into();
    }
    out.join(", ")
}

/// A JSON scalar as a word: strings bare, null as `none`.
pub fn word(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "none".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_op_is_documented_and_its_examples_parse() {
        let all = ops();
        assert!(!all.is_empty());
        for entry in &all {
            let op = entry.op;
            assert!(op.name.contains('.'), "{}: name is not GROUP.VERB", op.name);
            assert!(!op.about.is_empty(), "{}: no about", op.name);
            assert!(
                op.example
                    .starts_with(&format!("tourniquet {} {} ", op.group(), op.verb())),
                "{}: the example does not use its verb: {}",
                op.name,
                op.example
            );
            let mut positional_optional = false;
            for p in op.params {
                assert!(!p.doc.is_empty(), "{}.{}: no doc", op.name, p.name);
                assert!(!p.example.is_empty(), "{}.{}: no example", op.name, p.name);
                let v = p
                    .parse_words(&[p.example.to_string()])
                    .unwrap_or_else(|e| panic!("{}.{}: example: {e}", op.name, p.name));
                p.check(&v)
                    .unwrap_or_else(|e| panic!("{}.{}: parsed example: {e}", op.name, p.name));
                if p.placement == Placement::Positional {
                    assert!(
                        !positional_optional || !p.required,
                        "{}.{}: a required positional after an optional one",
                        op.name,
                        p.name
                    );
                    assert!(
                        !positional_optional || !p.repeatable,
                        "{}.{}: a repeatable positional must be the last",
                        op.name,
                        p.name
                    );
                    positional_optional |= !p.required || p.repeatable;
                }
            }
            // The example params together make an action the op accepts.
            let kv: Vec<String> = op
                .params
                .iter()
                .filter(|p| p.required)
                .map(|p| format!("{}={}", p.name, p.example))
                .collect();
            let params = op.parse_kv(&kv).unwrap();
            op.check(&params).unwrap();
            // Rendering never panics, whatever the states hold.
            for state in [None, Some(json!(null)), Some(json!({"x": [1]}))] {
                let line = change_line("r", op.name, &params, state.as_ref(), state.as_ref());
                assert!(line.starts_with(&format!("r {}", op.name)), "{line}");
            }
        }
    }

    #[test]
    fn cdn_purge_is_one_op_shared_by_the_cache_kinds() {
        let purge = ops()
            .into_iter()
            .find(|e| e.op.name == "cdn.purge")
            .unwrap();
        for k in ["varnish", "fastly", "cloudflare"] {
            assert!(purge.kinds.contains(&k), "{:?}", purge.kinds);
        }
        #[cfg(feature = "aws")]
        assert!(purge.kinds.contains(&"aws-cloudfront"));
    }

    #[test]
    fn cli_words_become_the_json_the_provider_takes() {
        let deny = find_op("nginx.deny").unwrap();
        assert_eq!(
            Value::Object(deny.parse_kv(&["cidrs=203.0.113.7/32".into()]).unwrap()),
            json!({"cidrs": ["203.0.113.7/32"]})
        );
        assert_eq!(
            Value::Object(
                deny.parse_kv(&["cidrs=10.0.0.0/8, 192.0.2.1".into(), "cidrs=::1".into()])
                    .unwrap()
            ),
            json!({"cidrs": ["10.0.0.0/8", "192.0.2.1", "::1"]})
        );
        let err = deny
            .parse_kv(&["cidrs=abc".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cidrs: \"abc\" is not a CIDR; expected an IPv4 or IPv6 network such as 203.0.113.7/32"
        );
        let brown = find_op("nginx.brownout").unwrap();
        assert_eq!(
            Value::Object(
                brown
                    .parse_kv(&[
                        "paths=/search,/export".into(),
                        "retry_after=2m".into(),
                        "status=429".into()
                    ])
                    .unwrap()
            ),
            json!({"paths": ["/search", "/export"], "retry_after": 120, "status": 429})
        );
        let err = brown
            .parse_kv(&["paths=/a".into(), "status=abc".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("status: \"abc\" is not a whole number from"),
            "{err}"
        );
        assert!(brown
            .parse_kv(&["retry_after=1.5s".into(), "paths=/a".into()])
            .is_err());
        assert!(matches!(
            brown.parse_kv(&["status=503".into()]),
            Err(ParamError::Missing { .. })
        ));
        assert!(matches!(
            brown.parse_kv(&["paths=/a".into(), "colour=red".into()]),
            Err(ParamError::UnknownParam { .. })
        ));
        let state = find_op("flag.state").unwrap();
        assert_eq!(
            state
                .parse_kv(&["flag=f".into(), "state=off".into()])
                .unwrap()["state"],
            json!("DISABLED")
        );
    }

    #[test]
    fn json_params_are_checked_against_their_types() {
        let deny = find_op("nginx.deny").unwrap();
        let m = |v: Value| v.as_object().cloned().unwrap();
        assert!(deny.check(&m(json!({"cidrs": ["10.0.0.0/8"]}))).is_ok());
        let err = deny
            .check(&m(json!({"cidrs": "10.0.0.0/8"})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a CIDR"), "{err}");
        assert!(deny.check(&m(json!({}))).is_err());
    }

    #[test]
    fn an_unknown_op_renders_its_states() {
        let line = change_line(
            "r",
            "x.y",
            &Map::new(),
            Some(&json!({"a": 1})),
            Some(&json!({"a": 2})),
        );
        assert_eq!(line, "r x.y: {\"a\":1} → {\"a\":2}");
    }
}
