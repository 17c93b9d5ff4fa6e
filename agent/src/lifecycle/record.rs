//! The durable picture of one command on this agent: its state, what it
//! changed, what the probes said, and when each step happened. The journal
//! persists it, receipts are rendered from it, and the API serves it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use std::sync::Arc;

use crate::command::payload::{Guard, Payload, Timestamp};
use crate::command::rejection::Reason;
use crate::lifecycle::id::RecordId;
use crate::telemetry::TelemetryReport;
use crate::trust::policy::TrustedSigner;

/// Where a command is in its lifecycle (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Received,
    Verified,
    Rejected,
    Planned,
    Journaled,
    Sampled,
    Applied,
    Baking,
    Kept,
    RolledBack,
    Reverted,
    Failed,
    Superseded,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::Verified => "verified",
            State::Rejected => "rejected",
            State::Planned => "planned",
            State::Journaled => "journaled",
            State::Sampled => "sampled",
            State::Applied => "applied",
            State::Baking => "baking",
            State::Kept => "kept",
            State::RolledBack => "rolled_back",
            State::Reverted => "reverted",
            State::Failed => "failed",
            State::Superseded => "superseded",
        }
    }

    /// Every state, for fault injection tests and docs.
    pub const ALL: [State; 13] = [
        State::Received,
        State::Verified,
        State::Rejected,
        State::Planned,
        State::Journaled,
        State::Sampled,
        State::Applied,
        State::Baking,
        State::Kept,
        State::RolledBack,
        State::Reverted,
        State::Failed,
        State::Superseded,
    ];

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One action's before/after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRecord {
    pub resource: String,
    pub op: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    /// State captured at planning.
    #[serde(default)]
    pub before: Option<Value>,
    /// What planning said the state would become.
    #[serde(default)]
    pub planned: Option<Value>,
    /// State the provider reported after apply.
    #[serde(default)]
    pub after: Option<Value>,
    pub reversible: bool,
    #[serde(default)]
    pub applied: bool,
    #[serde(default)]
    pub reverted: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The readable change ([`ActionRecord::change_line`]), filled in for
    /// answers only: the journal keeps the states it is computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

impl ActionRecord {
    /// The change in words, from the op's declaration:
    /// `edge-waf waf.block: +203.0.113.7/32 (3 → 4 addresses)`. Before
    /// apply (and for a dry run) it shows the planned state.
    pub fn change_line(&self) -> String {
        let line = tourniquet_providers::registry::change_line(
            &self.resource,
            &self.op,
            &self.params,
            self.before.as_ref(),
            self.after.as_ref().or(self.planned.as_ref()),
        );
        if self.reverted {
            format!("{line} (reverted)")
        } else {
            line
        }
    }
}

/// Most timeline steps kept per command.
pub const MAX_TIMELINE: usize = 64;

/// Most drift events kept per command.
pub const MAX_DRIFT_EVENTS: usize = 20;

/// The resource was changed back behind the agent's back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftEvent {
    pub at: Timestamp,
    pub resource: String,
    /// What the hotfix had put there.
    pub expected: Value,
    /// What was found instead.
    pub found: Value,
    /// `reasserted`, `reported`, or why re-asserting failed.
    pub outcome: String,
}

/// One step of the timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transition {
    pub state: State,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Everything this agent knows about one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The command's id once verified; the envelope's hash before.
    pub id: RecordId,
    pub state: State,
    /// The envelope exactly as received. Never serialised with the record:
    /// the journal stores it once, and views never show it.
    #[serde(skip)]
    pub envelope: Arc<str>,
    pub envelope_sha256: String,
    /// `http`, `inbox`, …
    pub transport: String,
    pub received_at: Timestamp,
    #[serde(default)]
    pub payload: Option<Payload>,
    #[serde(default)]
    pub signers: Vec<TrustedSigner>,
    #[serde(default)]
    pub actions: Vec<ActionRecord>,
    /// The guard in force: the command's, or its resource's default.
    #[serde(default)]
    pub guard: Option<Guard>,
    #[serde(default)]
    pub telemetry: Option<TelemetryReport>,
    /// The id stays in the replay set until then.
    #[serde(default)]
    pub replay_until: Option<Timestamp>,
    #[serde(default)]
    pub hold_until: Option<Timestamp>,
    #[serde(default)]
    pub reason: Option<Reason>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub timeline: Vec<Transition>,
    /// Drift seen while the hotfix was in force, oldest first (bounded).
    #[serde(default)]
    pub drifts: Vec<DriftEvent>,
    /// Receipt file names, oldest first.
    #[serde(default)]
    pub receipts: Vec<String>,
    /// For `revert` commands: the command undone. For superseded ones: the
    /// newer command that took over.
    #[serde(default)]
    pub related: Option<String>,
    /// For a revert refused because its target was superseded: the command
    /// that superseded it (see [`Rejection::superseded_by`]).
    ///
    /// [`Rejection::superseded_by`]: crate::command::rejection::Rejection::superseded_by
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
}

impl CommandRecord {
    /// The record with each action's readable change filled in, for an
    /// answer.
    pub fn with_changes(mut self) -> CommandRecord {
        for a in &mut self.actions {
            a.change = Some(a.change_line());
        }
        self
    }

    /// Terminal: nothing further will happen to it. A kept hotfix that can
    /// still be reverted is not terminal: it is in force, and must never be
    /// forgotten by journal compaction.
    pub fn is_terminal(&self) -> bool {
        match self.state {
            State::Rejected
            | State::RolledBack
            | State::Reverted
            | State::Failed
            | State::Superseded => true,
            State::Planned => self.dry_run(),
            State::Kept => !self.is_active(),
            _ => false,
        }
    }

    /// Applied and still in force: something of it can still be reverted.
    pub fn is_active(&self) -> bool {
        self.state == State::Kept
            && self
                .actions
                .iter()
                .any(|a| a.applied && !a.reverted && a.reversible)
    }

    /// Settled for a waiting client: terminal, or kept (even if held).
    pub fn is_settled(&self) -> bool {
        self.is_terminal() || self.state == State::Kept
    }

    pub fn transition(&mut self, state: State, note: Option<String>, at: Timestamp) {
        self.state = state;
        if self.timeline.len() >= MAX_TIMELINE {
            // A record bounded however long it lives: keep the first
            // steps and the newest.
            self.timeline.remove(MAX_TIMELINE / 2);
        }
        self.timeline.push(Transition { state, at, note });
    }

    /// The command id the payload claims, once it verified.
    pub fn command_id(&self) -> Option<String> {
        self.payload.as_ref().map(|p| p.id.clone())
    }

    pub fn dry_run(&self) -> bool {
        self.payload.as_ref().is_some_and(|p| p.dry_run)
    }
}
