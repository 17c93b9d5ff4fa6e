//! The stable reason codes of a rejected command.
//!
//! Scripts and dashboards key on these strings, so they never change once
//! shipped. Each carries the HTTP status the API answers with and a human
//! sentence; the sentence may name fields but never a secret.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a command was refused. A refused command changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    BadEnvelope,
    BadPayload,
    TooLarge,
    BadSignature,
    UnknownSigner,
    RevokedKey,
    KeyNotValidNow,
    QuorumNotMet,
    NotPermitted,
    Expired,
    NotYetValid,
    TtlTooLong,
    /// The command's `hold` is longer than the policy's `max_hold`.
    HoldTooLong,
    Replay,
    NotTargeted,
    UnknownResource,
    InvalidAction,
    PolicyExpired,
    /// A fleet rollout stopped before this agent's wave: too many failures
    /// in earlier waves, or a signed `halt`. Nothing was applied.
    Halted,
    /// The agent cannot write its state dir, so it cannot promise to
    /// remember, revert or prove the change. Nothing was changed.
    StorageUnavailable,
}

impl Reason {
    /// Every reason, for docs, metrics and tests.
    pub const ALL: [Reason; 20] = [
        Reason::BadEnvelope,
        Reason::BadPayload,
        Reason::TooLarge,
        Reason::BadSignature,
        Reason::UnknownSigner,
        Reason::RevokedKey,
        Reason::KeyNotValidNow,
        Reason::QuorumNotMet,
        Reason::NotPermitted,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::TtlTooLong,
        Reason::HoldTooLong,
        Reason::Replay,
        Reason::NotTargeted,
        Reason::UnknownResource,
        Reason::InvalidAction,
        Reason::PolicyExpired,
        Reason::Halted,
        Reason::StorageUnavailable,
    ];

    /// The stable code, e.g. `quorum_not_met`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::BadEnvelope => "bad_envelope",
            Reason::BadPayload => "bad_payload",
            Reason::TooLarge => "too_large",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownSigner => "unknown_signer",
            Reason::RevokedKey => "revoked_key",
            Reason::KeyNotValidNow => "key_not_valid_now",
            Reason::QuorumNotMet => "quorum_not_met",
            Reason::NotPermitted => "not_permitted",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::TtlTooLong => "ttl_too_long",
            Reason::HoldTooLong => "hold_too_long",
            Reason::Replay => "replay",
            Reason::NotTargeted => "not_targeted",
            Reason::UnknownResource => "unknown_resource",
            Reason::InvalidAction => "invalid_action",
            Reason::PolicyExpired => "policy_expired",
            Reason::Halted => "halted",
            Reason::StorageUnavailable => "storage_unavailable",
        }
    }

    /// Whether the reason is decided before any signature from a trusted
    /// key has verified. Anyone can cause those, so such a refusal is
    /// answered to its sender and counted, and costs the agent no receipt
    /// file and no journal line.
    pub fn before_trust(self) -> bool {
        matches!(
            self,
            Reason::BadEnvelope
                | Reason::TooLarge
                | Reason::BadSignature
                | Reason::UnknownSigner
                | Reason::RevokedKey
                | Reason::KeyNotValidNow
                | Reason::PolicyExpired
        )
    }

    /// The HTTP status `POST /v1/commands` answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::BadEnvelope | Reason::BadPayload => 400,
            Reason::TooLarge => 413,
            Reason::BadSignature
            | Reason::UnknownSigner
            | Reason::RevokedKey
            | Reason::KeyNotValidNow => 401,
            Reason::QuorumNotMet | Reason::NotPermitted => 403,
            Reason::UnknownResource => 404,
            Reason::Replay => 409,
            Reason::Expired
            | Reason::NotYetValid
            | Reason::TtlTooLong
            | Reason::HoldTooLong
            | Reason::NotTargeted
            | Reason::InvalidAction => 422,
            Reason::PolicyExpired | Reason::StorageUnavailable => 503,
            Reason::Halted => 409,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: the code, plus a sentence for the human reading the receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
    /// For a revert of a command that a newer one superseded: the newer
    /// command, which is the one to revert. Carried into the record and
    /// the receipt so a script need not parse the sentence.
    pub superseded_by: Option<String>,
}

impl Rejection {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
            superseded_by: None,
        }
    }

    /// Names the command that superseded the one a revert asked for.
    pub fn with_superseded_by(mut self, id: impl Into<String>) -> Self {
        self.superseded_by = Some(id.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_reason_has_a_unique_code_that_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.code()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
    }

    #[test]
    fn new_reasons_have_their_statuses() {
        assert_eq!(Reason::HoldTooLong.code(), "hold_too_long");
        assert_eq!(Reason::HoldTooLong.http_status(), 422);
        assert_eq!(Reason::StorageUnavailable.code(), "storage_unavailable");
        assert_eq!(Reason::StorageUnavailable.http_status(), 503);
        assert!(Reason::BadSignature.before_trust());
        assert!(!Reason::HoldTooLong.before_trust());
        assert!(!Reason::StorageUnavailable.before_trust());
    }
}
