//! Receipts: the agent's signed statement of what it did with a command.
//!
//! A receipt is a DSSE envelope signed with the agent's own key (namespace
//! `tourniquet-receipt`), so it can be checked later by anyone holding the
//! agent's public key, including with stock `ssh-keygen -Y verify`. It is
//! the unit of the audit trail that leaves the box.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::audit::AuditHead;
use crate::command::envelope::{self, Envelope, RECEIPT_NAMESPACE, RECEIPT_PAYLOAD_TYPE};
use crate::command::payload::Timestamp;
use crate::command::rejection::{Reason, Rejection};
use crate::lifecycle::record::{CommandRecord, State, Transition};
use crate::telemetry::TelemetryReport;
use crate::trust::keys::{KeyError, Signer};

/// Receipt payload v1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    /// The command id, or `null` when the envelope never yielded one.
    pub command_id: Option<String>,
    pub envelope_sha256: String,
    pub agent: AgentRef,
    /// Names and fingerprints of the keys whose signatures counted.
    pub signers: Vec<SignerRef>,
    pub issuer: Option<String>,
    /// The command's stated reason (why a human asked), not a rejection code.
    pub command_reason: Option<String>,
    pub ticket: Option<String>,
    /// `accepted` or `rejected`.
    pub decision: String,
    /// The rejection code, when rejected.
    pub reason_code: Option<Reason>,
    pub message: Option<String>,
    /// The settled state this receipt reports.
    pub outcome: Outcome,
    pub dry_run: bool,
    pub actions: Vec<ReceiptAction>,
    pub telemetry: Option<TelemetryReport>,
    pub hold_until: Option<Timestamp>,
    pub related_command: Option<String>,
    /// For a revert refused because its target was superseded: the command
    /// that superseded it, the one to revert instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    pub timeline: Vec<Transition>,
    pub issued_at: Timestamp,
    /// The agent's audit log head when the receipt was signed: a log cut
    /// after this point is caught by comparing it with the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<AuditHead>,
}

/// The settled state a receipt reports: the states a command comes to rest
/// in (DESIGN §5), each serialised as the record state of the same name.
///
/// A closed set: a reader of receipts (the fleet view, the wave check)
/// refuses an outcome it does not know rather than guess what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied and kept: the guard passed, or there was none.
    Kept,
    /// The guard breached and the change was undone.
    RolledBack,
    /// Undone later: its hold ran out, or a `revert` command asked.
    Reverted,
    /// Applying failed, and nothing of it is left changed.
    Failed,
    /// A dry run: planned, nothing changed.
    Planned,
    /// A newer command on the same resource took over.
    Superseded,
    /// Refused; `reason_code` says why.
    Rejected,
}

impl Outcome {
    /// Every outcome, for conversions and tests.
    pub const ALL: [Outcome; 7] = [
        Outcome::Kept,
        Outcome::RolledBack,
        Outcome::Reverted,
        Outcome::Failed,
        Outcome::Planned,
        Outcome::Superseded,
        Outcome::Rejected,
    ];

    /// The record state this outcome settles a command in.
    pub fn state(self) -> State {
        match self {
            Outcome::Kept => State::Kept,
            Outcome::RolledBack => State::RolledBack,
            Outcome::Reverted => State::Reverted,
            Outcome::Failed => State::Failed,
            Outcome::Planned => State::Planned,
            Outcome::Superseded => State::Superseded,
            Outcome::Rejected => State::Rejected,
        }
    }

    /// The outcome a record in `state` has settled with, if that state is
    /// one a command rests in.
    pub fn from_state(state: State) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.state() == state)
    }

    /// The wire string, e.g. `rolled_back`.
    pub fn as_str(self) -> &'static str {
        self.state().as_str()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRef {
    pub id: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignerRef {
    pub name: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiptAction {
    pub resource: String,
    pub op: String,
    pub params: Map<String, Value>,
    pub before: Option<Value>,
    /// Intended state for a dry run; the state after apply otherwise.
    pub after: Option<Value>,
    pub reversible: bool,
    pub applied: bool,
    pub reverted: bool,
    pub error: Option<String>,
    /// The change in words, e.g. `edge-waf waf.block: +203.0.113.7/32
    /// (3 → 4 addresses)`, beside the states it was read from. Receipts
    /// older than the op registry have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

impl ReceiptAction {
    /// The change in words: as signed, or read from the states of a
    /// receipt that predates the field.
    pub fn change_line(&self) -> String {
        self.change.clone().unwrap_or_else(|| {
            let line = tourniquet_providers::registry::change_line(
                &self.resource,
                &self.op,
                &self.params,
                self.before.as_ref(),
                self.after.as_ref(),
            );
            if self.reverted {
                format!("{line} (reverted)")
            } else {
                line
            }
        })
    }
}

impl Receipt {
    /// A receipt for a command that has just settled with `outcome`.
    pub fn for_record(
        r: &CommandRecord,
        outcome: Outcome,
        agent: &AgentRef,
        audit_head: Option<AuditHead>,
    ) -> Receipt {
        let payload = r.payload.as_ref();
        let rejected = r.reason.is_some();
        Receipt {
            command_id: r
                .id
                .command()
                .map(|u| u.to_string())
                .or_else(|| r.command_id()),
            envelope_sha256: r.envelope_sha256.clone(),
            agent: agent.clone(),
            signers: r
                .signers
                .iter()
                .map(|s| SignerRef {
                    name: s.name.clone(),
                    fingerprint: s.fingerprint.clone(),
                })
                .collect(),
            issuer: payload.map(|p| p.issuer.clone()),
            command_reason: payload.map(|p| p.reason.clone()),
            ticket: payload.and_then(|p| p.ticket.clone()),
            decision: if rejected { "rejected" } else { "accepted" }.into(),
            reason_code: r.reason,
            message: r.message.clone(),
            outcome,
            dry_run: r.dry_run(),
            actions: r
                .actions
                .iter()
                .map(|a| ReceiptAction {
                    resource: a.resource.clone(),
                    op: a.op.clone(),
                    params: a.params.clone(),
                    before: a.before.clone(),
                    after: if r.dry_run() {
                        a.planned.clone()
                    } else {
                        a.after.clone()
                    },
                    reversible: a.reversible,
                    applied: a.applied,
                    reverted: a.reverted,
                    error: a.error.clone(),
                    change: Some(a.change_line()),
                })
                .collect(),
            telemetry: r.telemetry.clone(),
            hold_until: r.hold_until,
            related_command: r.related.clone(),
            superseded_by: r.superseded_by.clone(),
            timeline: r.timeline.clone(),
            issued_at: Timestamp::now(),
            audit_head,
        }
    }

    /// A receipt for an envelope refused before it had a trustworthy id.
    pub fn for_rejection(
        claimed_id: Option<String>,
        envelope_sha256: &str,
        rejection: &Rejection,
        agent: &AgentRef,
        received_at: Timestamp,
    ) -> Receipt {
        Receipt {
            command_id: claimed_id,
            envelope_sha256: envelope_sha256.to_string(),
            agent: agent.clone(),
            signers: Vec::new(),
            issuer: None,
            command_reason: None,
            ticket: None,
            decision: "rejected".into(),
            reason_code: Some(rejection.reason),
            message: Some(rejection.message.clone()),
            outcome: Outcome::Rejected,
            dry_run: false,
            actions: Vec::new(),
            telemetry: None,
            hold_until: None,
            related_command: None,
            superseded_by: rejection.superseded_by.clone(),
            timeline: vec![
                Transition {
                    state: State::Received,
                    at: received_at,
                    note: None,
                },
                Transition {
                    state: State::Rejected,
                    at: Timestamp::now(),
                    note: Some(rejection.reason.code().into()),
                },
            ],
            issued_at: Timestamp::now(),
            audit_head: None,
        }
    }

    /// Signs the receipt with the agent key.
    pub fn sign(&self, key: &Signer) -> Result<Envelope, KeyError> {
        let bytes = serde_json::to_vec(self).map_err(|e| KeyError::Sign(e.to_string()))?;
        let mut env = Envelope::new(RECEIPT_PAYLOAD_TYPE, &bytes);
        let sig = key.sign(
            RECEIPT_NAMESPACE,
            &envelope::pae(RECEIPT_PAYLOAD_TYPE, &bytes),
        )?;
        env.add_signature(&sig)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(env)
    }
}

/// Checks a receipt envelope against an agent public key (OpenSSH line) and
/// returns the receipt.
pub fn verify_receipt(env: &Envelope, agent_public_key: &str) -> Result<Receipt, String> {
    let bytes = verify_receipt_payload(env, agent_public_key)?;
    serde_json::from_slice(&bytes).map_err(|e| format!("receipt payload: {e}"))
}

/// Checks a receipt envelope against an agent public key (OpenSSH line) and
/// returns the signed payload, unparsed: `audit export` reads receipts of
/// any agent version as plain JSON, so one with a field this version does
/// not know still counts.
pub fn verify_receipt_payload(env: &Envelope, agent_public_key: &str) -> Result<Vec<u8>, String> {
    if env.payload_type != RECEIPT_PAYLOAD_TYPE {
        return Err(format!(
            "payloadType {:?} is not a receipt",
            env.payload_type
        ));
    }
    let expected = ssh_key::PublicKey::from_openssh(agent_public_key.trim())
        .map_err(|e| format!("agent key: {e}"))?;
    let bytes = env.payload_bytes().map_err(|e| e.to_string())?;
    let message = envelope::pae(&env.payload_type, &bytes);
    let sig = env.signatures.first().ok_or("the receipt is not signed")?;
    let sig = envelope::decode_signature(&sig.sig)?;
    if sig.public_key() != expected.key_data() {
        return Err("the receipt was signed by another key".into());
    }
    envelope::verify_sshsig(RECEIPT_NAMESPACE, &message, &sig)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_written_as_the_state_it_settles_in() {
        for o in Outcome::ALL {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.state().as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
            assert_eq!(Outcome::from_state(o.state()), Some(o));
        }
        for s in [
            State::Received,
            State::Verified,
            State::Applied,
            State::Baking,
        ] {
            assert_eq!(Outcome::from_state(s), None, "{s:?} is not a resting state");
        }
    }
}
