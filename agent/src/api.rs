//! The HTTP API's requests and answers (DESIGN §7), as types.
//!
//! The agent's server writes these and the CLI and the end-to-end tests
//! read them, so a field renamed on one side breaks the build of the other
//! instead of rendering blank. The wire format is the contract scripts rely
//! on: every type serialises to exactly the JSON the agent has always sent
//! (the fixtures under `testdata/api/` are real answers of an agent from
//! before these types, and the tests below read and rewrite each of them
//! byte for byte). A field may be added; none may be renamed or removed.
//!
//! `GET /metrics` answers Prometheus text, which has no type here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::command::envelope::Envelope;
use crate::command::payload::Timestamp;
use crate::command::rejection::Reason;
use crate::lifecycle::receipt::{Outcome, Receipt, ReceiptAction, SignerRef};
use crate::lifecycle::record::{CommandRecord, State, Transition};
use crate::telemetry::TelemetryReport;

/// `POST` a signed command envelope here (the body is a DSSE
/// [`Envelope`]); answered with [`Accepted`], [`Rejected`] or [`ApiError`].
pub const COMMANDS_PATH: &str = "/v1/commands";
/// `GET`: [`Hotfixes`].
pub const HOTFIXES_PATH: &str = "/v1/hotfixes";
/// `GET`: [`Identity`].
pub const IDENTITY_PATH: &str = "/v1/identity";
/// `GET`: [`Health`].
pub const HEALTHZ_PATH: &str = "/healthz";
/// `GET`: Prometheus text.
pub const METRICS_PATH: &str = "/metrics";

/// `GET /v1/commands/{id}`, answered with a [`CommandAnswer`].
pub fn command_path(id: &str) -> String {
    format!("{COMMANDS_PATH}/{id}")
}

/// Longest `?wait=` the agent honours; a longer one is cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The query of `GET /v1/commands/{id}` (DESIGN §7): a client may wait for
/// the command to settle instead of polling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandQuery {
    /// `wait=10s`: answer once the command is settled, or after this long
    /// (at most [`MAX_WAIT`]). Without it the agent answers at once.
    pub wait: Option<Duration>,
    /// `after=baking`: a settled command in this state does not count as
    /// settled, so a client that saw it can wait for the next change.
    pub after: Option<State>,
}

impl CommandQuery {
    /// Reads the query string; parameters that do not parse are ignored,
    /// as the agent always has.
    pub fn parse(query: &str) -> CommandQuery {
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        CommandQuery {
            wait: param("wait")
                .and_then(|w| humantime::parse_duration(w).ok())
                .map(|d| d.min(MAX_WAIT)),
            after: param("after").and_then(State::parse),
        }
    }

    /// The query string, with its `?`, or an empty string.
    pub fn to_query(self) -> String {
        let mut parts = Vec::new();
        if let Some(w) = self.wait {
            parts.push(format!("wait={}", humantime::format_duration(w)));
        }
        if let Some(s) = self.after {
            parts.push(format!("after={}", s.as_str()));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// `POST /v1/commands` → `202` (DESIGN §7): the command verified and is
/// durably journaled; follow it with `GET /v1/commands/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: String,
    /// Where the command is now, usually `journaled`.
    pub status: State,
}

/// `POST /v1/commands` → `4xx`/`503` (DESIGN §7): the agent refused the
/// command and changed nothing. The status is [`Reason::http_status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejected {
    pub reason: Reason,
    pub message: String,
    /// The signed rejection receipt; `null` when the refusal came before a
    /// trusted signature verified (anyone can cause those), or when the
    /// agent could not record it.
    pub receipt: Option<Envelope>,
    /// For a revert of a command that a newer one superseded: the newer
    /// command, which is the one to revert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
}

/// The error body of every endpoint (DESIGN §7): `{"reason","message"}`.
/// A [`Rejected`] answer reads as one too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub reason: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(reason: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// The `reason` of an [`ApiError`]: a rejection code, or one of the API's
/// own codes for requests that never reached the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No such endpoint, or no such command.
    NotFound,
    MethodNotAllowed,
    /// The request did not arrive within `api.read_timeout`.
    RequestTimeout,
    /// Every connection slot is busy, or this connection was closed to
    /// make room for a newer one.
    TooManyConnections,
    /// The agent failed to process the request; its log says why.
    InternalError,
    /// A command refused, with its stable code (`too_large`, …).
    #[serde(untagged)]
    Refused(Reason),
}

impl ErrorCode {
    /// The wire string, e.g. `not_found` or `quorum_not_met`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::Refused(r) => r.code(),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /healthz` (DESIGN §7): `200` while the agent can record commands,
/// `503` while its state dir refuses writes (commands are refused then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Why it is unavailable: `storage_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Unavailable,
}

/// `GET /v1/identity` (DESIGN §7): who this agent is, what it manages,
/// and the key its receipts are signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub agent_id: String,
    pub labels: BTreeMap<String, String>,
    /// The agent's receipt key, an OpenSSH public key line.
    pub public_key: String,
    pub fingerprint: String,
    /// SHA-256 of the trust policy in force.
    pub policy_sha256: String,
    pub resources: Vec<IdentityResource>,
    /// Names of the probes guards may use.
    pub probes: Vec<String>,
    pub version: String,
}

/// One resource in [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityResource {
    pub name: String,
    pub kind: String,
}

/// `GET /v1/hotfixes` (DESIGN §7): the hotfixes in force on this agent and
/// the hold time each has left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hotfixes {
    pub hotfixes: Vec<Hotfix>,
}

/// One hotfix in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hotfix {
    pub id: String,
    pub issuer: Option<String>,
    /// The command's stated reason.
    pub reason: Option<String>,
    pub actions: Vec<HotfixAction>,
    /// When it was last applied.
    pub applied_at: Option<Timestamp>,
    /// When its hold runs out and the agent reverts it.
    pub hold_until: Option<Timestamp>,
    pub hold_left_s: Option<u64>,
}

impl Hotfix {
    /// The hotfix a record in force shows, its hold counted from `now`.
    pub fn of(r: &CommandRecord, now: Timestamp) -> Hotfix {
        Hotfix {
            id: r.id.to_string(),
            issuer: r.payload.as_ref().map(|p| p.issuer.clone()),
            reason: r.payload.as_ref().map(|p| p.reason.clone()),
            actions: r
                .actions
                .iter()
                .map(|a| HotfixAction {
                    resource: a.resource.clone(),
                    op: a.op.clone(),
                    params: a.params.clone(),
                    before: a.before.clone(),
                    after: a.after.clone(),
                    change: Some(a.change_line()),
                })
                .collect(),
            applied_at: r
                .timeline
                .iter()
                .rev()
                .find(|t| t.state == State::Applied)
                .map(|t| t.at),
            hold_until: r.hold_until,
            hold_left_s: hold_left(r, now),
        }
    }
}

/// One action of a [`Hotfix`]: the resource's state before and after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HotfixAction {
    pub resource: String,
    pub op: String,
    pub params: Map<String, Value>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// The change in words, e.g. `web-asg asg.cap: max 20 → 4, desired 12 → 4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

/// Whole seconds of hold left at `now`, if the record has a hold.
fn hold_left(r: &CommandRecord, now: Timestamp) -> Option<u64> {
    r.hold_until.map(|t| now.until(t).as_secs())
}

/// `GET /v1/commands/{id}` (DESIGN §5, §7): a command's state and receipt.
/// A command the agent still holds comes as its whole record; one that
/// has left memory, rebuilt from its newest archived receipt.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CommandAnswer {
    Live(Box<CommandView>),
    Archived(Box<ArchivedCommand>),
}

/// Read by its `archived` field, so a body that fits neither shape says
/// which field is wrong.
impl<'de> Deserialize<'de> for CommandAnswer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if v.get("archived") == Some(&Value::Bool(true)) {
            read(v).map(CommandAnswer::Archived)
        } else {
            read(v).map(CommandAnswer::Live)
        }
        .map_err(D::Error::custom)
    }
}

fn read<T: DeserializeOwned>(v: Value) -> Result<Box<T>, serde_json::Error> {
    serde_json::from_value(v).map(Box::new)
}

impl CommandAnswer {
    /// The id asked for: a command id, or `sha256:…` for an envelope
    /// refused before it yielded one.
    pub fn id(&self) -> String {
        match self {
            CommandAnswer::Live(v) => v.record.id.to_string(),
            CommandAnswer::Archived(a) => a.id.clone(),
        }
    }

    pub fn state(&self) -> State {
        match self {
            CommandAnswer::Live(v) => v.record.state,
            CommandAnswer::Archived(a) => a.state.state(),
        }
    }

    /// Settled for a waiting client: terminal, or kept (even if held).
    pub fn settled(&self) -> bool {
        match self {
            CommandAnswer::Live(v) => v.settled,
            CommandAnswer::Archived(a) => a.settled,
        }
    }

    /// The rejection code, when refused.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            CommandAnswer::Live(v) => v.record.reason,
            CommandAnswer::Archived(a) => a.reason,
        }
    }

    /// Why it was refused or failed.
    pub fn message(&self) -> Option<&str> {
        match self {
            CommandAnswer::Live(v) => v.record.message.as_deref(),
            CommandAnswer::Archived(a) => a.message.as_deref(),
        }
    }
}

/// A command the agent holds in memory: its whole record (everything but
/// the raw envelope), whether it has settled, and its newest receipt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandView {
    #[serde(flatten)]
    pub record: CommandRecord,
    pub settled: bool,
    pub terminal: bool,
    pub hold_left_s: Option<u64>,
    /// The newest signed receipt; `null` before the command settles.
    pub receipt: Option<Envelope>,
}

impl CommandView {
    /// The view of a record, its hold counted from `now`.
    pub fn of(record: CommandRecord, receipt: Option<Envelope>, now: Timestamp) -> CommandView {
        let record = record.with_changes();
        CommandView {
            settled: record.is_settled(),
            terminal: record.is_terminal(),
            hold_left_s: hold_left(&record, now),
            receipt,
            record,
        }
    }
}

/// A command that has left the agent's memory, as its newest archived
/// receipt tells it: what `status ID` shows for an older command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedCommand {
    pub id: String,
    pub state: Outcome,
    /// Always `true`: tells this shape from [`CommandView`].
    pub archived: bool,
    pub settled: bool,
    /// `false` only for a kept hotfix, which may still be reverted.
    pub terminal: bool,
    pub actions: Vec<ReceiptAction>,
    pub telemetry: Option<TelemetryReport>,
    pub timeline: Vec<Transition>,
    pub hold_until: Option<Timestamp>,
    /// The rejection code, when refused.
    pub reason: Option<Reason>,
    pub message: Option<String>,
    pub signers: Vec<SignerRef>,
    /// The command it reverted, or that superseded it.
    pub related: Option<String>,
    /// The receipt's name.
    pub receipts: Vec<String>,
    pub receipt: Envelope,
}

impl ArchivedCommand {
    /// The view of command `id` from its receipt `name`, `receipt` being the
    /// payload of the signed `envelope`.
    pub fn of(id: String, name: String, receipt: Receipt, envelope: Envelope) -> ArchivedCommand {
        ArchivedCommand {
            id,
            state: receipt.outcome,
            archived: true,
            settled: true,
            terminal: receipt.outcome != Outcome::Kept,
            actions: receipt.actions,
            telemetry: receipt.telemetry,
            timeline: receipt.timeline,
            hold_until: receipt.hold_until,
            reason: receipt.reason_code,
            message: receipt.message,
            signers: receipt.signers,
            related: receipt.related_command,
            receipts: vec![name],
            receipt: envelope,
        }
    }
}

/// The body the agent sends: pretty JSON and a newline.
pub fn to_body<T: Serialize>(answer: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec_pretty(answer)?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real answer of an agent from before these types.
    fn fixture(name: &str) -> String {
        let path = format!("{}/testdata/api/{name}.json", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Reads the fixture as `T` and writes it back: the bytes must be the
    /// agent's, so the wire format is unchanged.
    fn round_trip<T: Serialize + DeserializeOwned>(name: &str) -> T {
        let text = fixture(name);
        let typed: T =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} does not read: {e}"));
        let again = String::from_utf8(to_body(&typed).unwrap()).unwrap();
        assert_eq!(again, text, "{name} changed on the wire");
        typed
    }

    #[test]
    fn post_answers_keep_their_wire_format() {
        let a: Accepted = round_trip("post_accepted");
        assert_eq!(a.status, State::Journaled);
        let r: Rejected = round_trip("post_not_permitted");
        assert_eq!(r.reason, Reason::NotPermitted);
        assert!(r.receipt.is_some());
        let r: Rejected = round_trip("post_unknown_signer");
        assert_eq!((r.reason, r.receipt), (Reason::UnknownSigner, None));
        let r: Rejected = round_trip("post_bad_envelope");
        assert_eq!(r.reason, Reason::BadEnvelope);
        let r: Rejected = round_trip("post_storage_unavailable");
        assert_eq!(r.reason, Reason::StorageUnavailable);
        // A rejection reads as an error body too, as clients read it.
        let e: ApiError = serde_json::from_str(&fixture("post_not_permitted")).unwrap();
        assert_eq!(e.reason, ErrorCode::Refused(Reason::NotPermitted));
    }

    #[test]
    fn error_bodies_keep_their_wire_format() {
        let e: ApiError = round_trip("too_large");
        assert_eq!(e.reason, ErrorCode::Refused(Reason::TooLarge));
        let e: ApiError = round_trip("not_found");
        assert_eq!(e.reason, ErrorCode::NotFound);
        let e: ApiError = round_trip("command_not_found");
        assert_eq!(e.reason, ErrorCode::NotFound);
        let e: ApiError = round_trip("method_not_allowed");
        assert_eq!(e.reason, ErrorCode::MethodNotAllowed);
    }

    #[test]
    fn every_error_code_round_trips_as_its_string() {
        let codes = [
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::RequestTimeout,
            ErrorCode::TooManyConnections,
            ErrorCode::InternalError,
        ]
        .into_iter()
        .chain(Reason::ALL.map(ErrorCode::Refused));
        for code in codes {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn command_answers_keep_their_wire_format() {
        for name in [
            "get_kept",
            "get_planned",
            "get_rejected",
            "get_reverted",
            "get_storage_cmd",
        ] {
            let a: CommandAnswer = round_trip(name);
            assert!(matches!(a, CommandAnswer::Live(_)), "{name}");
            assert!(a.settled(), "{name}");
        }
        let a: CommandAnswer = round_trip("get_kept");
        assert_eq!(a.state(), State::Kept);
        let CommandAnswer::Live(v) = &a else {
            unreachable!()
        };
        assert!(v.record.telemetry.is_some() && v.receipt.is_some());
        let a: CommandAnswer = round_trip("get_rejected");
        assert_eq!(a.reason(), Some(Reason::NotPermitted));
        assert!(a.id().starts_with("sha256:"));
        for (name, state) in [
            ("get_archived_reverted", State::Reverted),
            ("get_archived_planned", State::Planned),
        ] {
            let a: CommandAnswer = round_trip(name);
            assert!(matches!(a, CommandAnswer::Archived(_)), "{name}");
            assert_eq!(a.state(), state);
        }
    }

    #[test]
    fn an_unreadable_command_answer_names_the_field() {
        let mut v: Value = serde_json::from_str(&fixture("get_archived_planned")).unwrap();
        v["state"] = "someday".into();
        let e = serde_json::from_value::<CommandAnswer>(v).unwrap_err();
        assert!(e.to_string().contains("someday"), "{e}");
    }

    #[test]
    fn the_other_endpoints_keep_their_wire_format() {
        let h: Hotfixes = round_trip("hotfixes");
        assert_eq!(h.hotfixes.len(), 1);
        assert!(h.hotfixes[0].hold_left_s.is_some());
        let h: Hotfixes = round_trip("hotfixes_empty");
        assert!(h.hotfixes.is_empty());
        let h: Health = round_trip("healthz");
        assert_eq!((h.status, h.reason), (HealthStatus::Ok, None));
        let h: Health = round_trip("healthz_unavailable");
        assert_eq!(h.reason, Some(Reason::StorageUnavailable));
        let i: Identity = round_trip("identity");
        assert_eq!(i.resources.len(), 2);
    }

    #[test]
    fn receipts_keep_their_wire_format() {
        for (name, outcome) in [
            ("receipt_kept", Outcome::Kept),
            ("receipt_rejected", Outcome::Rejected),
        ] {
            let text = fixture(name);
            let r: Receipt = serde_json::from_str(&text).unwrap();
            assert_eq!(r.outcome, outcome);
            // Receipts are signed compact, exactly as serialised.
            assert_eq!(serde_json::to_string(&r).unwrap(), text, "{name}");
        }
    }

    #[test]
    fn the_command_query_reads_what_it_writes() {
        let q = CommandQuery {
            wait: Some(Duration::from_secs(10)),
            after: Some(State::Baking),
        };
        assert_eq!(q.to_query(), "?wait=10s&after=baking");
        assert_eq!(CommandQuery::parse("wait=10s&after=baking"), q);
        assert_eq!(CommandQuery::default().to_query(), "");
        assert_eq!(
            CommandQuery::parse("wait=1h").wait,
            Some(MAX_WAIT),
            "waits are capped"
        );
        assert_eq!(
            CommandQuery::parse("wait=soon&after=later"),
            CommandQuery::default()
        );
        assert_eq!(CommandQuery::parse("waiting=1s").wait, None);
    }
}
