//! Bake and hold: judge a change by its guard, settle it with a signed
//! receipt, and revert it when its hold runs out.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use tracing::Instrument;

use super::id::RecordId;
use super::store::StoreError;
use super::{Lifecycle, SettledReceipt};
use crate::command::payload::OnBreach;
use crate::lifecycle::receipt::{Outcome, Receipt};
use crate::lifecycle::record::{CommandRecord, State};
use crate::telemetry::{self, Verdict};

/// Longest bake the agent will run, whatever a command asks.
pub const MAX_BAKE: Duration = Duration::from_secs(3600);

impl Lifecycle {
    /// Moves a record to a settled state: signs its receipt, records both,
    /// and (except for a rejection) makes them durable before returning.
    /// Returns the receipt. On a storage error nothing is published.
    pub(super) async fn settle(
        &self,
        rec: &mut CommandRecord,
        outcome: Outcome,
        note: Option<String>,
    ) -> Result<Option<Value>, StoreError> {
        self.settle_with(rec, outcome, note, outcome != Outcome::Rejected)
            .await
    }

    /// [`Lifecycle::settle`], syncing only when `durable`: a superseded
    /// command's settle rides on the sync of the command that superseded
    /// it (recovery hands over again if that one never settled).
    pub(super) async fn settle_with(
        &self,
        rec: &mut CommandRecord,
        outcome: Outcome,
        note: Option<String>,
        durable: bool,
    ) -> Result<Option<Value>, StoreError> {
        let state = outcome.state();
        rec.transition(state, note, self.now());
        let name = match rec.id {
            RecordId::Command(_) => {
                format!("{}.{}.{}", rec.id, rec.receipts.len() + 1, state.as_str())
            }
            RecordId::Envelope(_) => format!(
                "rejected-{}.{}",
                rec.envelope_sha256.get(..16).unwrap_or_default(),
                ulid::Ulid::new()
            ),
        };
        rec.receipts.push(name.clone());
        let receipt =
            Receipt::for_record(rec, outcome, &self.agent_ref, Some(self.store.audit_head()));
        let signed = receipt
            .sign(&self.identity.key)
            .map_err(std::io::Error::other)
            .and_then(|env| {
                let text = serde_json::to_string(&env).map_err(std::io::Error::other)?;
                let raw = RawValue::from_string(text).map_err(std::io::Error::other)?;
                Ok((env, raw))
            });
        let (env, raw) = match signed {
            Ok(x) => x,
            Err(e) => {
                rec.receipts.pop();
                return Err(StoreError::Io {
                    path: "agent_ed25519".into(),
                    source: e,
                });
            }
        };
        let note = rec.timeline.last().and_then(|t| t.note.clone());
        let detail =
            json!({"receipt": name, "reason_code": rec.reason.map(|r| r.code()), "note": note});
        if let Err(e) = self.store.write_settle(rec, &name, &raw, detail) {
            rec.receipts.pop();
            return Err(e);
        }
        if durable {
            if let Err(e) = self.store.sync_all().await {
                rec.receipts.pop();
                return Err(e);
            }
        }
        let sink = self
            .receipt_sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(sink) = sink {
            let _ = sink.send(SettledReceipt {
                name,
                command_id: receipt.command_id.clone(),
                transport: rec.transport.clone(),
                outcome: receipt.outcome,
                reason_code: receipt.reason_code,
                envelope: raw.get().as_bytes().to_vec(),
            });
        }
        self.metrics.count_outcome(state.as_str());
        self.metrics
            .active_hotfixes
            .set(self.store.count_live(|r| r.is_active()) as i64);
        self.notify(rec);
        Ok(serde_json::to_value(&env).ok())
    }

    /// Bakes (if guarded), judges, and settles as kept or rolled back.
    /// `elapsed` is bake time already served before a restart. The caller
    /// holds the command's resource locks.
    pub(super) async fn bake_and_settle(
        self: &Arc<Self>,
        mut rec: CommandRecord,
        elapsed: Duration,
    ) {
        let mut paused = false;
        if let Some(g) = rec.guard.clone() {
            let bake = g.bake.map(|b| b.0).unwrap_or_default().min(MAX_BAKE);
            let interval = g
                .interval
                .map(|i| i.0)
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(10), MAX_BAKE);
            self.step(
                &mut rec,
                State::Baking,
                Some(format!("bake {}", humantime::format_duration(bake))),
            );
            let checks = telemetry::effective_checks(&g, |p| self.probes.get(p).map(|c| c.unit()));
            let mut judgement =
                telemetry::Judgement::new(&g, checks, rec.telemetry.clone().unwrap_or_default());
            let deadline = tokio::time::Instant::now() + bake.saturating_sub(elapsed);
            loop {
                let samples = self.probes.sample(&g.probes, None).await;
                let abort = judgement.push(samples);
                // Keep the record current so a restart resumes with what
                // was measured so far.
                rec.telemetry = Some(judgement.report.clone());
                if abort {
                    tracing::warn!(command = %rec.id, "guard: consecutive breaches, aborting the bake");
                    break;
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    break;
                }
                tokio::time::sleep_until(deadline.min(now + interval)).await;
            }
            let report = judgement.finish();
            let verdict = report.verdict.unwrap_or(Verdict::Inconclusive);
            rec.telemetry = Some(report);
            let roll_back = match verdict {
                Verdict::Breach => g.on_breach == OnBreach::Rollback,
                Verdict::Inconclusive => {
                    g.on_inconclusive == crate::command::payload::OnInconclusive::Rollback
                }
                Verdict::Pass => false,
            };
            if roll_back {
                let errors = self.revert_actions(&mut rec).await;
                self.metrics.rollbacks.inc();
                let why = if verdict == Verdict::Breach {
                    "guard breached"
                } else {
                    "guard inconclusive"
                };
                let note = if errors.is_empty() {
                    format!("{why}: rolled back")
                } else {
                    format!("{why}; rollback incomplete: {}", errors.join("; "))
                };
                self.settle_or_undo(&mut rec, Outcome::RolledBack, Some(note))
                    .await;
                return;
            }
            if verdict == Verdict::Inconclusive {
                tracing::warn!(command = %rec.id, "guard inconclusive: keeping the change");
            }
            paused = verdict == Verdict::Breach && g.on_breach == OnBreach::Pause;
        }
        let hold = rec.payload.as_ref().and_then(|p| p.hold);
        rec.hold_until = hold.map(|h| self.now().plus(h.0));
        let note = rec.telemetry.as_ref().and_then(|t| t.verdict).map(|v| {
            let v = serde_json::to_value(v)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            if paused {
                format!("guard verdict: {v}; paused for an operator (on_breach = pause)")
            } else {
                format!("guard verdict: {v}")
            }
        });
        if self.settle_or_undo(&mut rec, Outcome::Kept, note).await && rec.hold_until.is_some() {
            self.arm_hold(rec.id.to_string());
        }
    }

    /// Reverts `id` when its hold runs out.
    pub(super) fn arm_hold(self: &Arc<Self>, id: String) {
        let this = self.clone();
        let span = tracing::info_span!("hold", id = %id);
        tokio::spawn(
            async move {
                loop {
                    let Some(rec) = this.record(&id) else { return };
                    let (true, Some(until)) = (rec.is_active(), rec.hold_until) else {
                        return;
                    };
                    let wait = this.now().until(until);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    match this.revert_command(&id, "hold ran out".into(), None).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::error!(command = %id, error = %e, "hold revert failed; retrying in 5s");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
}
