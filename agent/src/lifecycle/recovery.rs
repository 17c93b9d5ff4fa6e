//! Recovery: what a restart finds unsettled, finished or reverted, each
//! record on its own.
//!
//! The rules (README, "Crash safety"):
//! - queued (`verified`): verified again from the stored envelope, then
//!   planned as if it had just arrived;
//! - `journaled` or `sampled`: the apply is finished from the journal;
//! - `applied` or `baking`: the guard is judged again;
//! - `kept` with a hold: the hold is re-armed.
//!
//! A record whose recovery fails or panics is quarantined: an audit entry
//! says why, and the others recover regardless.

use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::json;

use super::Lifecycle;
use crate::lifecycle::record::{CommandRecord, State};

impl Lifecycle {
    /// What a crash left unsettled, oldest first. Take it before any
    /// transport starts, so a live command is never mistaken for a leftover.
    pub fn unsettled(&self) -> Vec<CommandRecord> {
        self.store.live_where(|r| !r.is_terminal())
    }

    /// Finishes or reverts every command a crash left unsettled, and
    /// re-arms holds. Says which in the audit log.
    pub async fn recover(self: &Arc<Self>, pending: Vec<CommandRecord>) {
        for rec in pending {
            let id = rec.id;
            let keys: Vec<String> = match rec.state {
                State::Received | State::Verified | State::Planned => rec
                    .payload
                    .as_ref()
                    .map(|p| self.lock_keys(p))
                    .unwrap_or_default(),
                _ => rec.actions.iter().map(|a| a.resource.clone()).collect(),
            };
            if let Some(missing) = keys.iter().find(|k| !self.resources.contains_key(*k)) {
                self.quarantine(
                    &rec,
                    &format!("resource {missing:?} is no longer declared in this agent's config"),
                );
                continue;
            }
            if rec.state == State::Kept {
                if rec.hold_until.is_some() {
                    self.audit_recovery(&rec, "holding: re-armed the hold timer");
                    self.arm_hold(id.to_string());
                }
                continue;
            }
            // In order of arrival: each waits for the resources the one
            // before it is still working on.
            let guard = self.locks.acquire(&keys).await;
            let this = self.clone();
            tokio::spawn(async move {
                let work =
                    std::panic::AssertUnwindSafe(this.clone().recover_one(rec.clone(), guard));
                if let Err(panic) = work.catch_unwind().await {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    this.quarantine(&rec, &format!("recovery panicked: {why}"));
                }
            });
        }
    }

    async fn recover_one(self: Arc<Self>, rec: CommandRecord, guard: super::locks::ResourceGuard) {
        match rec.state {
            State::Received | State::Verified | State::Planned => {
                self.audit_recovery(&rec, "re-verifying: nothing was applied before the restart");
                let policy = self.policy();
                match policy.verify_envelope(rec.envelope.as_bytes(), self.now()) {
                    Ok(v) => {
                        let mut rec = rec;
                        rec.signers = v.signers;
                        rec.actions.clear();
                        let payload = v.payload;
                        let _ = self.plan_and_start(rec, payload, guard).await;
                    }
                    Err(rej) => {
                        drop(guard);
                        let _ = self.reject_signed(rec, rej).await;
                    }
                }
            }
            State::Journaled | State::Sampled => {
                self.audit_recovery(&rec, "finishing: applying the journaled intent");
                self.execute(rec, guard).await;
            }
            State::Applied | State::Baking => {
                self.audit_recovery(&rec, "finishing: judging the guard after the restart");
                // The hand-over to this command may not have been made
                // durable before the crash: make it again (idempotent).
                self.hand_over(&rec).await;
                let now = self.now();
                let served = rec
                    .timeline
                    .iter()
                    .rev()
                    .find(|t| t.state == State::Applied)
                    .map(|t| t.at.until(now))
                    .unwrap_or_default();
                self.bake_and_settle(rec, served).await;
                drop(guard);
            }
            other => {
                self.quarantine(
                    &rec,
                    &format!("no recovery rule for state {}", other.as_str()),
                );
            }
        }
    }

    fn audit_recovery(&self, rec: &CommandRecord, what: &str) {
        tracing::warn!(command = %rec.id, state = rec.state.as_str(), "recovering: {what}");
        let _ = self.store.audit_command(
            "recovered",
            rec,
            json!({"found": rec.state.as_str(), "action": what}),
        );
    }

    /// Sets a record aside that cannot be recovered, saying why.
    fn quarantine(&self, rec: &CommandRecord, why: &str) {
        tracing::error!(command = %rec.id, state = rec.state.as_str(), "quarantined: {why}");
        let _ = self.store.audit_command(
            "quarantined",
            rec,
            json!({"found": rec.state.as_str(), "why": why}),
        );
    }
}
