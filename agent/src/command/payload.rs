//! The command payload (v1): what an operator asked for.
//!
//! Parsed only from the bytes the signatures cover, and strictly: unknown
//! fields, duplicated keys and floating-point numbers are errors, because
//! any leniency here is room for two parsers to read one signed command two
//! ways.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use tourniquet_providers::ActionSpec;

/// Most actions one command may carry.
pub const MAX_ACTIONS: usize = 16;
/// Longest duration any field accepts (100 years of 365.25 days). Nothing
/// an operator means is longer, and anything shorter than this can be
/// added to any time of this era without overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);
/// Longest guard bake: an emergency change is judged within the hour.
pub const MAX_BAKE: Duration = Duration::from_secs(3600);
/// Longest guard before-window.
pub const MAX_BEFORE: Duration = Duration::from_secs(3600);
/// Longest pause between bake rounds.
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);
/// Longest time between two rollout waves.
pub const MAX_WAVE_BAKE: Duration = Duration::from_secs(24 * 3600);

/// An RFC 3339 UTC timestamp (`2026-12-01T18:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

/// Seconds from the Unix epoch to 9999-12-31T23:59:59Z, the last instant
/// RFC 3339 can write.
const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

impl Timestamp {
    /// The last instant RFC 3339 can write, 9999-12-31T23:59:59Z: where
    /// [`Timestamp::plus`] saturates.
    pub fn max() -> Self {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(MAX_UNIX_SECONDS))
    }
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_rfc3339(text)
            .map(Timestamp)
            .map_err(|e| format!("{text:?} is not an RFC 3339 UTC time: {e}"))
    }
    /// Seconds since the Unix epoch (0 for earlier times).
    pub fn unix(self) -> u64 {
        self.0
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
    /// `self + d`, saturating at [`Timestamp::max`]: never panics, however
    /// large `d` is.
    pub fn plus(self, d: Duration) -> Self {
        self.checked_plus(d).unwrap_or_else(Timestamp::max)
    }
    /// `self + d`, or `None` past [`Timestamp::max`].
    pub fn checked_plus(self, d: Duration) -> Option<Self> {
        self.0
            .checked_add(d)
            .map(Timestamp)
            .filter(|t| *t <= Timestamp::max())
    }
    /// How long from `self` until `later`; zero if `later` is not later.
    pub fn until(self, later: Timestamp) -> Duration {
        later.0.duration_since(self.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 with milliseconds. A time outside what RFC 3339 can write
    /// (before 1970, after 9999) is shown clamped rather than panicking.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clamped = self.0.clamp(SystemTime::UNIX_EPOCH, Timestamp::max().0);
        write!(f, "{}", humantime::format_rfc3339_millis(clamped))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(de::Error::custom)
    }
}

/// A humantime duration (`"90s"`, `"10m"`, `"1h"`), kept with its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses a humantime duration, refusing any above [`MAX_DURATION`], so
    /// no later time arithmetic on it can overflow.
    pub fn parse(text: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like \"90s\" or \"10m\": {e}"))?;
        if d > MAX_DURATION {
            return Err(format!(
                "{text:?} is longer than {}, the most any duration may be",
                humantime::format_duration(MAX_DURATION)
            ));
        }
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(de::Error::custom)
    }
}

/// Payload v1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// A ULID, unique per command; the replay set keys on it.
    pub id: String,
    /// Who asked, for the audit trail (not an authority: signatures are).
    pub issuer: String,
    pub issued_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// Delivery deadline; capped by the policy's `max_ttl`.
    pub expires: Timestamp,
    /// Why: an incident and a symptom, for whoever reads the audit log.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    pub target: Target,
    pub actions: Vec<Action>,
    /// Makes the hotfix temporary: reverted when it runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// How many agents the sender expects to answer, so a fleet view can
    /// say "n of expected" and name the silent ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<u32>,
    /// Plan only: capture before-state and intended after-state, change nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Which agents a command is for. Empty means every agent that holds the
/// named resources.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Label globs; every one must match the agent's label of that name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Agent ids; if present, the agent's id must be one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
}

/// A guard: sample before, bake while sampling, act on a breach.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Probe names declared in the agent config.
    pub probes: Vec<String>,
    /// How long the change bakes, sampled round after round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<HumanDuration>,
    /// How long the before-window is, sampled before apply. Default: each
    /// probe's own window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<HumanDuration>,
    /// Pause between bake rounds. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    #[serde(default)]
    pub on_breach: OnBreach,
    /// What an inconclusive bake does. Default: keep, with a warning.
    #[serde(default)]
    pub on_inconclusive: OnInconclusive,
    /// Breaching rounds tolerated before the verdict is a breach (Argo
    /// Rollouts' failureLimit). Default 1. Two breaching rounds in a row
    /// always abort at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// Thresholds. A ratio probe with none must not rise above its before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// What to do when the guard breaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBreach {
    /// Revert the change at once.
    #[default]
    Rollback,
    /// Keep it, and say so in the receipt.
    Keep,
    /// Keep it, and mark it paused for an operator to decide; fleet waves
    /// stop here.
    Pause,
}

/// What to do when the guard could not tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInconclusive {
    #[default]
    Keep,
    Rollback,
}

/// One threshold on one probe's value. Thresholds are strings (`"0.5%"`,
/// `"400ms"`, `"12.5"`): payloads carry no floats.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub probe: String,
    /// The after value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Threshold>,
    /// The after value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Threshold>,
    /// The after value may exceed the before value by at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<Threshold>,
    /// The after value may fall below the before value by at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decrease: Option<Threshold>,
}

/// A threshold: `"0.5%"` (a ratio, 0.005), `"400ms"` (seconds, 0.4), or a
/// plain decimal `"12.5"`. Kept with its text for receipts.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub value: f64,
    pub text: String,
}

impl Threshold {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let value = if t.ends_with('%') {
            f64::from(Percent::parse(t)?.0) / 10_000.0
        } else if let Some(v) = parse_decimal(t) {
            v
        } else {
            humantime::parse_duration(t)
                .map(|d| d.as_secs_f64())
                .map_err(|_| {
                    format!("{text:?} is not a threshold like \"0.5%\", \"400ms\" or \"12.5\"")
                })?
        };
        Ok(Threshold {
            value,
            text: t.to_string(),
        })
    }
}

/// A plain non-negative decimal: digits, optionally one dot and digits.
fn parse_decimal(t: &str) -> Option<f64> {
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || (t.contains('.') && frac.is_empty()) {
        return None;
    }
    t.parse().ok()
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Threshold::parse(&s).map_err(de::Error::custom)
    }
}

/// A percentage written as `"99.5%"`, held in basis points (1/100 of a %).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u32);

impl Percent {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a percentage like \"99.5%\"");
        let num = text.strip_suffix('%').ok_or_else(bad)?;
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty()
            || frac.len() > 2
            || !whole
                .chars()
                .chain(frac.chars())
                .all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
        match whole.checked_mul(100).and_then(|w| w.checked_add(frac)) {
            Some(bp) if bp <= 10_000 => Ok(Percent(bp)),
            _ => Err(format!("{text:?} is more than 100%")),
        }
    }
    pub fn as_ratio(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}%", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Percent::parse(&s).map_err(de::Error::custom)
    }
}

/// Fleet waves, honoured by the NATS transport (`crate::transport::nats::fleet`): an agent
/// joins the first wave `w` with `hash(command, agent) mod 100 < w`, and
/// wave k starts `k × wave_bake` after `not_before`. The HTTP API and the
/// inbox talk to one agent and apply at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Cumulative percentages, ascending, ending at 100, e.g. `[1, 10, 50, 100]`.
    pub waves: Vec<u32>,
    /// Time between wave starts. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_bake: Option<HumanDuration>,
    /// Failure or rollback receipts from earlier waves at which later waves
    /// halt. 0 (the default) means the first failure halts.
    #[serde(default)]
    pub max_failures: u32,
}

/// One action: a resource, an op, and op-specific params. The params are
/// parsed strictly by the provider that owns the op.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// The resource name from the agent config. `None` only for `revert`.
    pub resource: Option<String>,
    pub op: String,
    pub params: Map<String, Value>,
}

/// The op that undoes an earlier command on this agent.
pub const REVERT_OP: &str = "revert";

/// The op that stops a fleet rollout: agents whose wave has not started
/// report `halted` instead of applying.
pub const HALT_OP: &str = "halt";

impl Action {
    pub fn spec(&self) -> ActionSpec {
        ActionSpec {
            op: self.op.clone(),
            params: self.params.clone(),
        }
    }

    /// For `revert` and `halt`, the command it names, decoded. `None` for
    /// other ops.
    pub fn command_ulid(&self) -> Option<ulid::Ulid> {
        (self.op == REVERT_OP || self.op == HALT_OP)
            .then(|| self.params.get("command").and_then(Value::as_str))
            .flatten()
            .and_then(canonical_ulid)
    }

    /// For `revert`, the command it undoes.
    pub fn revert_target(&self) -> Option<&str> {
        (self.op == REVERT_OP)
            .then(|| self.params.get("command").and_then(Value::as_str))
            .flatten()
    }

    /// The command a `halt` action stops.
    pub fn halt_target(&self) -> Option<&str> {
        (self.op == HALT_OP)
            .then(|| self.params.get("command").and_then(Value::as_str))
            .flatten()
    }

    /// A one-line human description, e.g. `flag.set new_checkout=off`.
    pub fn describe(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        format!(
            "{} {} {}",
            self.resource.as_deref().unwrap_or("-"),
            self.op,
            params.join(" ")
        )
        .trim_end()
        .to_string()
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = Map::new();
        if let Some(r) = &self.resource {
            m.insert("resource".into(), Value::String(r.clone()));
        }
        m.insert("op".into(), Value::String(self.op.clone()));
        for (k, v) in &self.params {
            m.insert(k.clone(), v.clone());
        }
        m.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut m = Map::deserialize(d)?;
        let op = match m.remove("op") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                return Err(de::Error::custom(
                    "action: \"op\" must be a non-empty string",
                ))
            }
        };
        if op == REVERT_OP || op == HALT_OP {
            // Exactly {"op", "command"}: a `resource` here once slipped
            // through and was ignored, so nothing extra is let by.
            let shape = || format!("action {op}: takes exactly {{\"command\": \"<ULID>\"}}");
            if let Some(extra) = m.keys().find(|k| k.as_str() != "command") {
                return Err(de::Error::custom(format!(
                    "{}; unknown field {extra:?}",
                    shape()
                )));
            }
            match m.get("command") {
                Some(Value::String(c)) if canonical_ulid(c).is_some() => {}
                Some(Value::String(c)) => {
                    return Err(de::Error::custom(format!(
                    "{}; {c:?} is not a canonical ULID (26 upper-case Crockford base32 characters)",
                    shape()
                )))
                }
                _ => return Err(de::Error::custom(shape())),
            }
            return Ok(Action {
                resource: None,
                op,
                params: m,
            });
        }
        let resource = match m.remove("resource") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            None => {
                return Err(de::Error::custom(format!(
                    "action {op:?}: missing \"resource\""
                )))
            }
            _ => {
                return Err(de::Error::custom(
                    "action: \"resource\" must be a non-empty string",
                ))
            }
        };
        Ok(Action {
            resource,
            op,
            params: m,
        })
    }
}

/// Walks a JSON document refusing duplicate object keys and floats, which
/// serde_json would otherwise resolve silently (last key wins, f64 rounding).
struct StrictJson;

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictJsonVisitor)
    }
}

struct StrictJsonVisitor;

impl<'de> Visitor<'de> for StrictJsonVisitor {
    type Value = StrictJson;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrictJson, E> {
        Err(E::custom(format!(
            "floating-point number {v} is not allowed; write percentages as strings like \"0.5%\""
        )))
    }
    fn visit_str<E>(self, _: &str) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_unit<E>(self) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictJson, A::Error> {
        while seq.next_element::<StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictJson, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<StrictJson>()?;
        }
        Ok(StrictJson)
    }
}

/// The canonical ULID `text` spells, if it spells one canonically: exactly
/// 26 characters of upper-case Crockford base32, and the text the decoded
/// value prints as. One command has one id, so `01ARZ…` and `01arz…` (or
/// Crockford's `O`-for-`0` aliases) are refused instead of being two ids
/// for one value.
pub fn canonical_ulid(text: &str) -> Option<ulid::Ulid> {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    if text.len() != ulid::ULID_LEN || !text.bytes().all(|b| CROCKFORD.contains(&b)) {
        return None;
    }
    ulid::Ulid::from_string(text)
        .ok()
        .filter(|u| u.to_string() == text)
}

/// What an invisible or reordering character is called, if `c` is one:
/// controls, Unicode bidi formatting, zero-width characters, line and
/// paragraph separators, and tag characters. Any of them lets a reviewer's
/// terminal show a different text than the one that was signed.
pub fn invisible_char(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{061C}' => "Arabic letter mark",
        '\u{200E}' => "left-to-right mark",
        '\u{200F}' => "right-to-left mark",
        '\u{202A}' => "left-to-right embedding",
        '\u{202B}' => "right-to-left embedding",
        '\u{202C}' => "pop directional formatting",
        '\u{202D}' => "left-to-right override",
        '\u{202E}' => "right-to-left override",
        '\u{2066}' => "left-to-right isolate",
        '\u{2067}' => "right-to-left isolate",
        '\u{2068}' => "first strong isolate",
        '\u{2069}' => "pop directional isolate",
        '\u{200B}' => "zero width space",
        '\u{200C}' => "zero width non-joiner",
        '\u{200D}' => "zero width joiner",
        '\u{2060}' => "word joiner",
        '\u{FEFF}' => "zero width no-break space",
        '\u{00AD}' => "soft hyphen",
        '\u{2028}' => "line separator",
        '\u{2029}' => "paragraph separator",
        '\u{E0000}'..='\u{E007F}' => "tag character",
        c if c.is_control() => "control character",
        _ => return None,
    })
}

/// Refuses invisible characters in a string a human will read, naming the
/// field and the code point: `reason contains U+202E (right-to-left
/// override)`.
fn check_visible(field: &str, value: &str) -> Result<(), String> {
    match value
        .chars()
        .find_map(|c| invisible_char(c).map(|n| (c, n)))
    {
        Some((c, name)) => Err(format!("{field} contains U+{:04X} ({name})", c as u32)),
        None => Ok(()),
    }
}

/// Every key and string inside an action's params, checked as visible text.
fn check_visible_value(field: &str, value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) => check_visible(field, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_visible_value(&format!("{field}[{i}]"), v)),
        Value::Object(m) => m.iter().try_for_each(|(k, v)| {
            check_visible(&format!("{field} key {k:?}"), k)?;
            check_visible_value(&format!("{field}.{k}"), v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > max {
        return Err(format!("{field} is longer than {max} bytes"));
    }
    check_visible(field, value)
}

/// Refuses a duration above `max`, with a sentence naming the field.
fn check_at_most(field: &str, d: Option<HumanDuration>, max: Duration) -> Result<(), String> {
    match d {
        Some(d) if d.0 > max => Err(format!(
            "{field} is {d}; at most {} is allowed",
            humantime::format_duration(max)
        )),
        _ => Ok(()),
    }
}

impl Payload {
    /// Parses payload bytes strictly. The error names the field and why.
    pub fn parse(bytes: &[u8]) -> Result<Payload, String> {
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(format!(
                "payload is not UTF-8: invalid byte at offset {}",
                e.valid_up_to()
            ));
        }
        serde_json::from_slice::<StrictJson>(bytes).map_err(|e| e.to_string())?;
        let p: Payload = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        p.check()?;
        Ok(p)
    }

    /// The command's id as a ULID. Every payload that passed
    /// [`Payload::check`] has one; for one that did not, the nil ULID,
    /// which no real command carries.
    pub fn ulid(&self) -> ulid::Ulid {
        canonical_ulid(&self.id).unwrap_or_default()
    }

    /// Shape rules serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        if canonical_ulid(&self.id).is_none() {
            return Err(format!(
                "id {:?} is not a canonical ULID (26 upper-case Crockford base32 characters)",
                self.id
            ));
        }
        check_text("issuer", &self.issuer, 256)?;
        check_text("reason", &self.reason, 1024)?;
        if let Some(t) = &self.ticket {
            check_text("ticket", t, 128)?;
        }
        for (k, v) in &self.target.labels {
            check_visible(&format!("target.labels key {k:?}"), k)?;
            check_visible(&format!("target.labels.{k}"), v)?;
        }
        for (i, a) in self.target.agents.iter().enumerate() {
            check_visible(&format!("target.agents[{i}]"), a)?;
        }
        for (i, a) in self.actions.iter().enumerate() {
            check_visible(&format!("actions[{i}].op"), &a.op)?;
            if let Some(r) = &a.resource {
                check_visible(&format!("actions[{i}].resource"), r)?;
            }
            for (k, v) in &a.params {
                check_visible(&format!("actions[{i}] param {k:?}"), k)?;
                check_visible_value(&format!("actions[{i}].{k}"), v)?;
            }
        }
        if self.actions.is_empty() {
            return Err("actions must not be empty".into());
        }
        if self.actions.len() > MAX_ACTIONS {
            return Err(format!("at most {MAX_ACTIONS} actions per command"));
        }
        if self.expires <= self.issued_at {
            return Err("expires must be after issued_at".into());
        }
        if let Some(g) = &self.guard {
            if g.probes.is_empty() {
                return Err("guard.probes must not be empty".into());
            }
            for (i, p) in g.probes.iter().enumerate() {
                check_visible(&format!("guard.probes[{i}]"), p)?;
            }
            for (i, c) in g.checks.iter().enumerate() {
                check_visible(&format!("guard.checks[{i}].probe"), &c.probe)?;
            }
            check_at_most("guard.bake", g.bake, MAX_BAKE)?;
            check_at_most("guard.before", g.before, MAX_BEFORE)?;
            check_at_most("guard.interval", g.interval, MAX_INTERVAL)?;
        }
        if let Some(r) = &self.rollout {
            if r.waves.is_empty() || r.waves.len() > 20 {
                return Err("rollout.waves must list 1 to 20 percentages".into());
            }
            if r.waves.windows(2).any(|w| w[0] >= w[1]) || r.waves[0] == 0 {
                return Err("rollout.waves must be strictly ascending and above 0".into());
            }
            if r.waves.last() != Some(&100) {
                return Err("rollout.waves must end at 100, so every agent is in a wave".into());
            }
            check_at_most("rollout.wave_bake", r.wave_bake, MAX_WAVE_BAKE)?;
        }
        if self.actions.iter().any(|a| a.op == HALT_OP) && self.actions.len() > 1 {
            return Err("halt must be the only action of its command".into());
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8B","issuer":"alice@example.com","issued_at":"2026-12-01T18:00:00Z","expires":"2026-12-01T18:15:00Z","reason":"INC-1","target":{},"actions":[{"resource":"checkout-flags","op":"flag.set","flag":"new_flow","variant":"off"}],"hold":"30m"}"#;

    #[test]
    fn good_payload_parses() {
        let p = Payload::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(p.actions[0].op, "flag.set");
        assert_eq!(p.actions[0].params["flag"], "new_flow");
        assert_eq!(p.hold.unwrap().0, Duration::from_secs(1800));
    }

    #[test]
    fn strictness() {
        let unknown = GOOD.replace("\"reason\"", "\"colour\":\"red\",\"reason\"");
        assert!(Payload::parse(unknown.as_bytes())
            .unwrap_err()
            .contains("colour"));
        let dup = GOOD.replace(
            "\"reason\":\"INC-1\"",
            "\"reason\":\"INC-1\",\"reason\":\"x\"",
        );
        assert!(Payload::parse(dup.as_bytes())
            .unwrap_err()
            .contains("duplicate"));
        let float = GOOD.replace("\"variant\":\"off\"", "\"variant\":0.5");
        assert!(Payload::parse(float.as_bytes())
            .unwrap_err()
            .contains("floating"));
        let no_resource = GOOD.replace("\"resource\":\"checkout-flags\",", "");
        assert!(Payload::parse(no_resource.as_bytes()).is_err());
        let bad_id = GOOD.replace("01JD3Z8K6Q0V6N9W2X4Y5Z7A8B", "42");
        assert!(Payload::parse(bad_id.as_bytes())
            .unwrap_err()
            .contains("ULID"));
    }

    const ID: &str = "01JD3Z8K6Q0V6N9W2X4Y5Z7A8B";

    fn parse_err(text: &str) -> String {
        Payload::parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn ids_must_be_canonical_ulids() {
        let u = canonical_ulid(ID).unwrap();
        assert_eq!(u.to_string(), ID);
        assert_eq!(Payload::parse(GOOD.as_bytes()).unwrap().ulid(), u);
        for bad in [
            ID.to_lowercase(),
            ID.replace('0', "O"),
            ID.replacen('1', "I", 1),
            ID.replacen('1', "L", 1),
            format!("{ID}0"),
            ID[1..].to_string(),
            format!(" {}", &ID[1..]),
            // 26 characters, but above 2^128: the first may be at most 7.
            format!("8{}", &ID[1..]),
            "0".repeat(25) + "\u{e9}",
        ] {
            assert_eq!(canonical_ulid(&bad), None, "{bad:?}");
            let err = parse_err(&GOOD.replace(ID, &bad));
            assert!(err.contains("canonical ULID"), "{bad:?}: {err}");
        }
    }

    fn revert(body: &str) -> String {
        GOOD.replace(
            r#"{"resource":"checkout-flags","op":"flag.set","flag":"new_flow","variant":"off"}"#,
            body,
        )
    }

    #[test]
    fn revert_and_halt_take_exactly_a_canonical_command() {
        let target = "01JD3Z8K6Q0V6N9W2X4Y5Z7A8C";
        for op in [REVERT_OP, HALT_OP] {
            let good = revert(&format!(r#"{{"op":"{op}","command":"{target}"}}"#));
            let p = Payload::parse(good.as_bytes()).unwrap();
            assert_eq!(p.actions[0].resource, None);
            assert_eq!(
                p.actions[0].command_ulid(),
                Some(canonical_ulid(target).unwrap())
            );
            for (body, says) in [
                (
                    format!(r#"{{"op":"{op}","command":"{target}","resource":"checkout-flags"}}"#),
                    "unknown field \"resource\"",
                ),
                (
                    format!(r#"{{"op":"{op}","command":"{target}","flag":"x"}}"#),
                    "unknown field \"flag\"",
                ),
                (
                    format!(r#"{{"op":"{op}","command":"{}"}}"#, target.to_lowercase()),
                    "not a canonical ULID",
                ),
                (format!(r#"{{"op":"{op}"}}"#), "takes exactly"),
                (format!(r#"{{"op":"{op}","command":7}}"#), "takes exactly"),
            ] {
                let err = parse_err(&revert(&body));
                assert!(err.contains(says), "{body}: {err}");
            }
        }
    }

    #[test]
    fn invisible_characters_are_refused_by_field_and_code_point() {
        let cases = [
            (
                GOOD.replace("INC-1", "INC-1 \u{202E}gnp.exe"),
                "reason contains U+202E (right-to-left override)",
            ),
            (
                GOOD.replace("INC-1", "INC\u{200B}-1"),
                "reason contains U+200B (zero width space)",
            ),
            (
                GOOD.replace("INC-1", r"INC-1\u0007"),
                "reason contains U+0007 (control character)",
            ),
            (
                GOOD.replace("INC-1", r"INC-1\u2066"),
                "reason contains U+2066 (left-to-right isolate)",
            ),
            (
                GOOD.replace("alice@", "alice\u{FEFF}@"),
                "issuer contains U+FEFF (zero width no-break space)",
            ),
            (
                GOOD.replace("\"reason\"", "\"ticket\":\"T\u{061C}1\",\"reason\""),
                "ticket contains U+061C (Arabic letter mark)",
            ),
            (
                GOOD.replace(
                    "\"target\":{}",
                    "\"target\":{\"labels\":{\"env\":\"pro\u{200D}d\"}}",
                ),
                "target.labels.env contains U+200D (zero width joiner)",
            ),
            (
                GOOD.replace(
                    "\"target\":{}",
                    "\"target\":{\"agents\":[\"a\",\"b\u{200F}\"]}",
                ),
                "target.agents[1] contains U+200F (right-to-left mark)",
            ),
            (
                GOOD.replace("\"variant\":\"off\"", "\"variant\":\"o\u{2060}ff\""),
                "actions[0].variant contains U+2060 (word joiner)",
            ),
            (
                GOOD.replace(
                    "\"hold\":\"30m\"",
                    "\"guard\":{\"probes\":[\"svc\u{202A}\"]}",
                ),
                "guard.probes[0] contains U+202A (left-to-right embedding)",
            ),
        ];
        for (text, says) in cases {
            assert_eq!(parse_err(&text), says);
        }
        // Ordinary non-ASCII text stays welcome.
        let fine = GOOD.replace("INC-1", "INC-1: Störung — 結帳 500s ✓");
        Payload::parse(fine.as_bytes()).unwrap();
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_refused() {
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = GOOD.find("INC-1").unwrap();
        bytes.insert(at, 0xFF);
        assert!(Payload::parse(&bytes).unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn durations_are_bounded_and_never_panic() {
        for huge in [
            "18446744073709551615s",
            "500000000years",
            "18446744073709551615years",
            "99999999999999999999999s",
            "101years",
        ] {
            assert!(HumanDuration::parse(huge).is_err(), "{huge}");
            let err = parse_err(&GOOD.replace("\"hold\":\"30m\"", &format!("\"hold\":\"{huge}\"")));
            assert!(err.contains(huge), "{huge}: {err}");
        }
        assert_eq!(HumanDuration::parse("100years").unwrap().0, MAX_DURATION);
        for (field, json, says) in [
            (
                "bake",
                r#""bake":"61m""#,
                "guard.bake is 1h 1m; at most 1h is allowed",
            ),
            (
                "before",
                r#""before":"2h""#,
                "guard.before is 2h; at most 1h is allowed",
            ),
            (
                "interval",
                r#""interval":"11m""#,
                "guard.interval is 11m; at most 10m is allowed",
            ),
        ] {
            let text = GOOD.replace(
                "\"hold\":\"30m\"",
                &format!("\"guard\":{{\"probes\":[\"svc\"],{json}}}"),
            );
            assert_eq!(parse_err(&text), says, "{field}");
        }
        let at_limit = GOOD.replace(
            "\"hold\":\"30m\"",
            r#""guard":{"probes":["svc"],"bake":"1h","before":"1h","interval":"10m"}"#,
        );
        Payload::parse(at_limit.as_bytes()).unwrap();
        let waves = GOOD.replace(
            "\"hold\":\"30m\"",
            r#""rollout":{"waves":[50,100],"wave_bake":"2days"}"#,
        );
        assert_eq!(
            parse_err(&waves),
            "rollout.wave_bake is 2days; at most 1day is allowed"
        );
    }

    #[test]
    fn timestamps_saturate_instead_of_panicking() {
        let now = Timestamp::now();
        assert_eq!(now.plus(Duration::MAX), Timestamp::max());
        assert_eq!(now.checked_plus(Duration::MAX), None);
        assert_eq!(now.checked_plus(MAX_DURATION).map(|t| t > now), Some(true));
        assert_eq!(
            now.checked_plus(Duration::from_secs(60)),
            Some(Timestamp(now.0 + Duration::from_secs(60)))
        );
        assert_eq!(Timestamp::max().to_string(), "9999-12-31T23:59:59.000Z");
        assert_eq!(
            Timestamp::max().plus(Duration::from_secs(1)),
            Timestamp::max()
        );
        // Times RFC 3339 cannot write are shown clamped, not a panic.
        let beyond = Timestamp(Timestamp::max().0 + Duration::from_secs(86_400 * 400));
        assert_eq!(beyond.to_string(), "9999-12-31T23:59:59.000Z");
        let before = Timestamp(SystemTime::UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(before.to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn thresholds_parse_by_shape() {
        assert_eq!(Threshold::parse("0.5%").unwrap().value, 0.005);
        assert_eq!(Threshold::parse("400ms").unwrap().value, 0.4);
        assert_eq!(Threshold::parse("12.5").unwrap().value, 12.5);
        assert_eq!(Threshold::parse("3").unwrap().value, 3.0);
        assert!(Threshold::parse("fast").is_err());
        assert!(Threshold::parse("1.").is_err());
    }

    #[test]
    fn percent_parses_exactly() {
        assert_eq!(Percent::parse("99.5%").unwrap(), Percent(9950));
        assert_eq!(Percent::parse("0.05%").unwrap(), Percent(5));
        assert!(Percent::parse("101%").is_err());
        assert!(Percent::parse("1.234%").is_err());
        assert!(Percent::parse("5").is_err());
    }
}
