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

/// An RFC 3339 UTC timestamp (`2026-12-01T18:00:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
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
    /// `self + d`, saturating at a far-future instant: never panics.
    pub fn plus(self, d: Duration) -> Self {
        self.checked_plus(d).unwrap_or(Timestamp(
            SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799),
        ))
    }
    /// `self + d`, or `None` where that is not a representable instant.
    pub fn checked_plus(self, d: Duration) -> Option<Self> {
        self.0.checked_add(d).map(Timestamp)
    }
    /// How long from `self` until `later`; zero if `later` is not later.
    pub fn until(self, later: Timestamp) -> Duration {
        later.0.duration_since(self.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
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
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text)
            .map(HumanDuration)
            .map_err(|e| format!("{text:?} is not a duration like \"90s\" or \"10m\": {e}"))
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
        let bp = whole * 100 + frac;
        if bp > 10_000 {
            return Err(format!("{text:?} is more than 100%"));
        }
        Ok(Percent(bp))
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

/// Fleet waves, honoured by the NATS transport (`crate::fleet`): an agent
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
        let resource = match m.remove("resource") {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            None if op == REVERT_OP || op == HALT_OP => None,
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
        if op == REVERT_OP || op == HALT_OP {
            match (m.get("command").and_then(Value::as_str), m.len()) {
                (Some(c), 1) if ulid::Ulid::from_string(c).is_ok() => {}
                _ => {
                    return Err(de::Error::custom(format!(
                        "action {op}: takes exactly {{\"command\": \"<ULID>\"}}"
                    )))
                }
            }
        }
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

fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > max {
        return Err(format!("{field} is longer than {max} bytes"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

impl Payload {
    /// Parses payload bytes strictly. The error names the field and why.
    pub fn parse(bytes: &[u8]) -> Result<Payload, String> {
        serde_json::from_slice::<StrictJson>(bytes).map_err(|e| e.to_string())?;
        let p: Payload = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        p.check()?;
        Ok(p)
    }

    /// Shape rules serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        ulid::Ulid::from_string(&self.id).map_err(|_| format!("id {:?} is not a ULID", self.id))?;
        check_text("issuer", &self.issuer, 256)?;
        check_text("reason", &self.reason, 1024)?;
        if let Some(t) = &self.ticket {
            check_text("ticket", t, 128)?;
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
