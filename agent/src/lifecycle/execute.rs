//! Execute: apply a journaled command, revert one, and hand an older
//! hotfix's effect over to the command that supersedes it.
//!
//! Every function here runs with the command's resource locks held, so the
//! before-states captured at planning stay true until the change settles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tourniquet_providers::ActionSpec;

use super::locks::ResourceGuard;
use super::Lifecycle;
use crate::command::payload::REVERT_OP;
use crate::lifecycle::receipt::Outcome;
use crate::lifecycle::record::{ActionRecord, CommandRecord, State};

pub(super) fn spec_of(a: &ActionRecord) -> ActionSpec {
    ActionSpec {
        op: a.op.clone(),
        params: a.params.clone(),
    }
}

/// Why a revert did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    #[error("no command {0} on this agent")]
    Unknown(String),
    #[error("{0}")]
    Provider(String),
    #[error("the revert happened but cannot be recorded: {0}")]
    Storage(#[from] super::store::StoreError),
}

impl Lifecycle {
    /// Samples, applies, bakes and settles a journaled command, holding its
    /// resources throughout.
    pub(super) async fn execute(self: Arc<Self>, mut rec: CommandRecord, guard: ResourceGuard) {
        if let Some(target) = rec
            .related
            .clone()
            .filter(|_| rec.actions.iter().all(|a| a.op == REVERT_OP))
        {
            self.run_revert_command(rec, &target).await;
            drop(guard);
            return;
        }
        let g = rec.guard.clone();
        let mut report = rec.telemetry.clone().unwrap_or_default();
        if let Some(g) = &g {
            report.before = self.probes.sample(&g.probes, g.before.map(|b| b.0)).await;
        }
        rec.telemetry = g.as_ref().map(|_| report.clone());
        self.step(&mut rec, State::Sampled, None);

        let started = Instant::now();
        if let Err(msg) = self.apply_all(&mut rec).await {
            rec.message = Some(msg.clone());
            self.settle_or_undo(&mut rec, Outcome::Failed, Some(msg))
                .await;
            return;
        }
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        self.remember_own_writes(&rec);
        self.step(&mut rec, State::Applied, None);
        self.hand_over(&rec).await;
        self.bake_and_settle(rec, Duration::ZERO).await;
        drop(guard);
    }

    /// Applies actions in order; on a failure reverts the applied ones in
    /// reverse and returns why.
    pub(super) async fn apply_all(&self, rec: &mut CommandRecord) -> Result<(), String> {
        for i in 0..rec.actions.len() {
            let a = &rec.actions[i];
            let Some(res) = self.resources.get(&a.resource) else {
                let msg = format!("{}: no longer declared in this agent's config", a.resource);
                self.revert_actions(rec).await;
                return Err(msg);
            };
            match res.provider.apply(&spec_of(a)).await {
                Ok(after) => {
                    rec.actions[i].after = Some(after);
                    rec.actions[i].applied = true;
                }
                Err(e) => {
                    let msg = format!("{} {}: {e}", a.resource, a.op);
                    rec.actions[i].error = Some(e.to_string());
                    self.revert_actions(rec).await;
                    return Err(msg);
                }
            }
        }
        Ok(())
    }

    /// Reverts every applied, not yet reverted action in reverse order.
    /// Returns the errors, if any.
    pub(super) async fn revert_actions(&self, rec: &mut CommandRecord) -> Vec<String> {
        let mut errors = Vec::new();
        for i in (0..rec.actions.len()).rev() {
            let a = &rec.actions[i];
            if !a.applied || a.reverted || !a.reversible {
                continue;
            }
            let Some(before) = a.before.clone() else {
                continue;
            };
            let Some(res) = self.resources.get(&a.resource) else {
                let msg = format!(
                    "reverting {} {}: the resource is no longer declared",
                    a.resource, a.op
                );
                rec.actions[i].error = Some(msg.clone());
                errors.push(msg);
                continue;
            };
            match res.provider.revert(&spec_of(a), &before).await {
                Ok(_) => rec.actions[i].reverted = true,
                Err(e) => {
                    let msg = format!("reverting {} {}: {e}", a.resource, a.op);
                    rec.actions[i].error = Some(msg.clone());
                    errors.push(msg);
                }
            }
        }
        self.remember_own_writes(rec);
        errors
    }

    /// Marks older hotfixes on the same keys as handed over to `rec`; an
    /// older one left with nothing of its own is superseded.
    pub(super) async fn hand_over(&self, rec: &CommandRecord) {
        let keys: Vec<(String, String)> = rec
            .actions
            .iter()
            .filter_map(|a| {
                let p = &self.resources.get(&a.resource)?.provider;
                Some((a.resource.clone(), p.state_key(&spec_of(a))))
            })
            .collect();
        for mut other in self.active() {
            if other.id == rec.id {
                continue;
            }
            let mut touched = false;
            for oa in other.actions.iter_mut() {
                let Some(res) = self.resources.get(&oa.resource) else {
                    continue;
                };
                let k = (oa.resource.clone(), res.provider.state_key(&spec_of(oa)));
                if oa.applied && !oa.reverted && keys.contains(&k) {
                    // Its effect now belongs to the newer command.
                    oa.reverted = true;
                    oa.error = Some(format!("handed over to {}", rec.id));
                    touched = true;
                }
            }
            if touched {
                other.related = Some(rec.id.to_string());
                if other.actions.iter().all(|a| !a.applied || a.reverted) {
                    let note = Some(format!("superseded by {}", rec.id));
                    if let Err(e) = self
                        .settle_with(&mut other, Outcome::Superseded, note, false)
                        .await
                    {
                        tracing::error!(command = %other.id, error = %e, "cannot record a superseded command");
                    }
                } else if let Err(e) = self
                    .store
                    .write_step(&other, json!({"handed_over_to": rec.id.to_string()}))
                {
                    tracing::error!(command = %other.id, error = %e, "cannot record a hand-over");
                }
            }
        }
    }

    /// Reverts an active command's effect and settles it as `reverted`,
    /// taking its resources' locks.
    pub async fn revert_command(
        &self,
        id: &str,
        note: String,
        by: Option<&str>,
    ) -> Result<(), RevertError> {
        let Some(rec) = self.record(id) else {
            return Err(RevertError::Unknown(id.to_string()));
        };
        let keys: Vec<String> = rec.actions.iter().map(|a| a.resource.clone()).collect();
        let _guard = self.locks.acquire(&keys).await;
        self.revert_command_locked(id, note, by).await
    }

    /// [`Lifecycle::revert_command`] for a caller that holds the locks.
    pub(super) async fn revert_command_locked(
        &self,
        id: &str,
        note: String,
        by: Option<&str>,
    ) -> Result<(), RevertError> {
        // Read again under the locks: it may have been superseded.
        let Some(mut rec) = self.record(id) else {
            return Err(RevertError::Unknown(id.to_string()));
        };
        if !rec.is_active() {
            return Ok(());
        }
        let errors = self.revert_actions(&mut rec).await;
        if !errors.is_empty() {
            let _ = self
                .store
                .write_step(&rec, json!({"revert_errors": errors}));
            return Err(RevertError::Provider(errors.join("; ")));
        }
        if let Some(by) = by {
            rec.related = Some(by.to_string());
        }
        if let Err(e) = self.settle(&mut rec, Outcome::Reverted, Some(note)).await {
            // The resource is back; the record will say so once storage heals.
            self.keep_unrecorded(rec);
            return Err(e.into());
        }
        Ok(())
    }

    async fn run_revert_command(self: &Arc<Self>, mut rec: CommandRecord, target: &str) {
        self.step(&mut rec, State::Sampled, None);
        let note = format!("reverted by command {}", rec.id);
        let by = rec.id.to_string();
        match self.revert_command_locked(target, note, Some(&by)).await {
            Ok(()) => {
                let original = self.record(target);
                for a in rec.actions.iter_mut() {
                    a.applied = true;
                    a.after = original
                        .as_ref()
                        .and_then(|o| o.actions.iter().find(|oa| oa.resource == a.resource))
                        .and_then(|oa| oa.before.clone());
                }
                self.step(&mut rec, State::Applied, None);
                let note = Some(format!("reverted {target}"));
                if let Err(e) = self.settle(&mut rec, Outcome::Kept, note).await {
                    tracing::error!(command = %rec.id, error = %e, "cannot record a revert command");
                    self.keep_unrecorded(rec);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                rec.message = Some(msg.clone());
                if let Err(e) = self.settle(&mut rec, Outcome::Failed, Some(msg)).await {
                    tracing::error!(command = %rec.id, error = %e, "cannot record a failed revert");
                    self.keep_unrecorded(rec);
                }
            }
        }
    }

    /// Settles a command that changed something; when the settle cannot be
    /// recorded, undoes the change (fail closed) and says so.
    pub(super) async fn settle_or_undo(
        &self,
        rec: &mut CommandRecord,
        outcome: Outcome,
        note: Option<String>,
    ) -> bool {
        match self.settle(rec, outcome, note).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(command = %rec.id, error = %e, "cannot record the settle; undoing the change");
                let errors = self.revert_actions(rec).await;
                let msg = if errors.is_empty() {
                    format!("storage unavailable: the settle could not be recorded ({e}); the change was reverted")
                } else {
                    format!(
                        "storage unavailable: the settle could not be recorded ({e}); reverting failed: {}",
                        errors.join("; ")
                    )
                };
                rec.message = Some(msg.clone());
                rec.hold_until = None;
                rec.transition(State::Failed, Some(msg), self.now());
                self.keep_unrecorded(rec.clone());
                false
            }
        }
    }

    /// Keeps a settle that could not be written, visible in memory, until
    /// storage heals.
    pub(super) fn keep_unrecorded(&self, rec: CommandRecord) {
        self.store.show(rec.clone());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        let mut list = self.unrecorded.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|r| r.id != rec.id);
        list.push(rec);
    }
}
