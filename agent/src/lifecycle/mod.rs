//! The lifecycle of a command on this agent (DESIGN §5), and the only caller
//! of providers.
//!
//! ```text
//! received → verified | rejected → planned → journaled → sampled → applied
//!          → baking → kept | rolled_back → reverted
//! ```
//!
//! Where things live:
//! - this file: submit and process — from raw bytes to a started command;
//! - `check`: pure checks and planning;
//! - `execute`: apply, revert, hand-over to a superseding command;
//! - `bake`: the guard's bake, settling, and holds;
//! - `recovery`: what a restart finds unsettled;
//! - `drift`: a hotfix changed back behind the agent's back;
//! - `store`: the journal, audit log and receipts, and what is durable when;
//! - `locks`: one command at a time per resource.
//!
//! A command refused before a trusted signature verifies costs O(1): a
//! counter, a rate-limited audit entry with its hash, and the answer.
//! Nothing of it is journaled, and no receipt is signed for it.

mod bake;
mod check;
pub mod clock;
mod drift;
mod execute;
pub mod id;
pub mod locks;
pub mod receipt;
pub mod record;
mod recovery;
pub mod store;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tourniquet_providers::Provider;
use tracing::Instrument;

use crate::command::envelope::{sha256_hex, Envelope};
use crate::command::payload::{Guard, Payload, Timestamp, REVERT_OP};
use crate::command::rejection::{Reason, Rejection};
use crate::lifecycle::receipt::{AgentRef, Outcome, Receipt};
use crate::lifecycle::record::{CommandRecord, State};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Probes;
use crate::trust::keys::Signer;
use crate::trust::policy::{Policy, MAX_ENVELOPE_BYTES};

use clock::Clock;
use id::RecordId;
use locks::{ResourceGuard, ResourceLocks};
use store::Store;

/// Environment variable naming a state after which a debug build aborts,
/// for crash-safety tests. Ignored by release builds.
pub const FAULT_ENV: &str = "TOURNIQUET_FAULT_AFTER";
/// Environment variable naming a state after which a debug build's store
/// fails every write, as if the disk were full. Ignored by release builds.
pub const FAULT_STORAGE_ENV: &str = "TOURNIQUET_FAULT_STORAGE_AFTER";

/// Audit entries of unverified rejections written per second at most; the
/// rest are counted and folded into one summary entry.
const UNVERIFIED_AUDIT_PER_SECOND: u32 = 5;

/// A declared resource: its provider and agent-side defaults.
pub struct Resource {
    pub provider: Box<dyn Provider>,
    pub default_guard: Option<Guard>,
    pub on_drift: crate::config::OnDrift,
}

/// Who this agent is.
pub struct Identity {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub key: Signer,
}

/// What `submit` answers a transport.
#[derive(Debug)]
pub enum Submission {
    Accepted {
        id: String,
        state: State,
    },
    Rejected {
        rejection: Rejection,
        /// The signed rejection receipt; `None` for a command refused
        /// before a trusted signature verified, or when storage failed.
        receipt: Option<Envelope>,
    },
}

/// A command a transport verified before submitting it, and the policy
/// that judged it.
#[derive(Clone)]
pub struct Peeked {
    pub verified: crate::trust::policy::VerifiedCommand,
    policy: Arc<Policy>,
}

/// A command's newest receipt, found in the archive.
#[derive(Debug, Clone)]
pub struct ArchivedReceipt {
    pub id: String,
    /// The receipt's name (unique per receipt).
    pub name: String,
    pub receipt: Receipt,
    /// The signed receipt, whose payload is `receipt`.
    pub envelope: Envelope,
}

/// A receipt just signed and stored, for transports that pass it on.
#[derive(Debug, Clone)]
pub struct SettledReceipt {
    /// The receipt's name (unique per receipt).
    pub name: String,
    /// The command id, or `None` when the envelope never yielded one.
    pub command_id: Option<String>,
    /// The transport the command arrived through.
    pub transport: String,
    pub outcome: Outcome,
    pub reason_code: Option<Reason>,
    /// The signed receipt envelope, as JSON.
    pub envelope: Vec<u8>,
}

/// Rate limit of audit entries for unverified rejections.
#[derive(Default)]
struct UnverifiedAudit {
    window: Option<Instant>,
    written: u32,
    suppressed: BTreeMap<&'static str, u64>,
}

/// Everything the agent runs commands with.
pub struct Lifecycle {
    identity: Identity,
    agent_ref: AgentRef,
    policy: RwLock<Arc<Policy>>,
    policy_sha256: RwLock<String>,
    resources: BTreeMap<String, Resource>,
    probes: Probes,
    store: Store,
    locks: ResourceLocks,
    clock: Arc<dyn Clock>,
    /// Command ids verified but not yet journaled: a concurrent copy of the
    /// same command is a replay.
    in_flight: Mutex<HashSet<u128>>,
    changed: watch::Sender<u64>,
    pub metrics: Metrics,
    fault_after: Option<State>,
    fault_storage_after: Option<State>,
    receipt_sink: Mutex<Option<tokio::sync::mpsc::UnboundedSender<SettledReceipt>>>,
    unverified: Mutex<UnverifiedAudit>,
    /// Settles that could not be written; written when storage heals.
    unrecorded: Mutex<Vec<CommandRecord>>,
    /// Per watched file, what the agent itself last wrote there.
    own_writes: Mutex<BTreeMap<String, drift::FileIdentity>>,
}

fn fault_state(var: &str) -> Option<State> {
    if cfg!(debug_assertions) {
        std::env::var(var).ok().and_then(|s| State::parse(&s))
    } else {
        None
    }
}

impl Lifecycle {
    /// Builds the lifecycle over an opened store.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Identity,
        policy: Policy,
        policy_sha256: String,
        resources: BTreeMap<String, Resource>,
        probes: Probes,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> Arc<Lifecycle> {
        let agent_ref = AgentRef {
            id: identity.id.clone(),
            labels: identity.labels.clone(),
            key: identity.key.public_key().to_openssh().unwrap_or_default(),
        };
        let metrics = Metrics::new();
        metrics
            .active_hotfixes
            .set(store.count_live(|r| r.is_active()) as i64);
        Arc::new(Lifecycle {
            identity,
            agent_ref,
            policy: RwLock::new(Arc::new(policy)),
            policy_sha256: RwLock::new(policy_sha256),
            resources,
            probes,
            store,
            locks: ResourceLocks::default(),
            clock,
            in_flight: Mutex::new(HashSet::new()),
            changed: watch::channel(0).0,
            metrics,
            fault_after: fault_state(FAULT_ENV),
            fault_storage_after: fault_state(FAULT_STORAGE_ENV),
            receipt_sink: Mutex::new(None),
            unverified: Mutex::new(UnverifiedAudit::default()),
            unrecorded: Mutex::new(Vec::new()),
            own_writes: Mutex::new(BTreeMap::new()),
        })
    }

    /// Sends every receipt settled from now on to `sink` as well.
    pub fn set_receipt_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<SettledReceipt>) {
        *self.receipt_sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn agent_ref(&self) -> &AgentRef {
        &self.agent_ref
    }

    pub fn resources(&self) -> &BTreeMap<String, Resource> {
        &self.resources
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn policy_sha256(&self) -> String {
        self.policy_sha256
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Swaps in a new policy (already checked) and records it.
    pub fn replace_policy(&self, policy: Policy, sha256: String) {
        let summary = policy.summary();
        if let Ok(mut p) = self.policy.write() {
            *p = Arc::new(policy);
        }
        if let Ok(mut s) = self.policy_sha256.write() {
            *s = sha256.clone();
        }
        self.audit_event(
            "policy_reloaded",
            json!({"sha256": sha256, "summary": summary}),
        );
    }

    /// Appends an agent-level event to the audit log.
    pub fn audit_event(&self, event: &str, detail: Value) {
        if let Err(e) = self.store.audit_event(event, detail) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// Makes everything written so far durable (at shutdown).
    pub async fn flush(&self) {
        if let Err(e) = self.store.sync_all().await {
            tracing::error!(error = %e, "cannot sync the state dir");
        }
    }

    /// `Err(why)` while the state dir cannot be written.
    pub fn storage_health(&self) -> Result<(), store::Unhealthy> {
        self.store.health()
    }

    /// Tries to heal the store, then writes the settles it could not.
    pub async fn heal_storage(self: &Arc<Self>) {
        if self.store.health().is_ok() || !self.store.heal() {
            return;
        }
        let pending =
            std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()));
        for mut rec in pending {
            // Only settles are kept unrecorded, so each rests in an outcome.
            let Some(outcome) = Outcome::from_state(rec.state) else {
                tracing::error!(command = %rec.id, state = rec.state.as_str(), "an unrecorded command that never settled; dropped");
                continue;
            };
            let note = rec.timeline.last().and_then(|t| t.note.clone());
            if let Err(e) = self.settle(&mut rec, outcome, note).await {
                tracing::error!(command = %rec.id, error = %e, "still cannot record a settle");
            }
        }
    }

    /// A record by command id (or `sha256:…` envelope hash).
    pub fn record(&self, id: &str) -> Option<CommandRecord> {
        let id: RecordId = id.parse().ok()?;
        self.store.record(&id)
    }

    /// The newest archived receipt of an older command: what `status ID`
    /// shows once the record has left memory.
    pub async fn archived_receipt(self: &Arc<Self>, id: &str) -> Option<ArchivedReceipt> {
        let rid: RecordId = id.parse().ok()?;
        let id = rid.command()?.to_string();
        let this = self.clone();
        let key = id.clone();
        let archived = tokio::task::spawn_blocking(move || this.store.archived(None, Some(&key)))
            .await
            .ok()??;
        let envelope: Envelope = serde_json::from_str(archived.receipt.get()).ok()?;
        let receipt: Receipt = serde_json::from_slice(&envelope.payload_bytes().ok()?).ok()?;
        Some(ArchivedReceipt {
            id,
            name: archived.name,
            receipt,
            envelope,
        })
    }

    /// Whether this agent has a record of the envelope with this hash.
    pub fn knows_envelope(&self, sha_hex: &str) -> bool {
        RecordId::from_sha256_hex(sha_hex).is_some_and(|id| self.store.record(&id).is_some())
    }

    /// Records applied and still in force.
    pub fn active(&self) -> Vec<CommandRecord> {
        self.store.live_where(|r| r.is_active())
    }

    /// Subscribes to "some record changed".
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Reads a stored receipt envelope by name.
    pub fn read_receipt(&self, name: &str) -> Option<Value> {
        self.store.receipt(name)
    }

    fn notify(&self, rec: &CommandRecord) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        tracing::info!(command = %rec.id, state = rec.state.as_str(), "transition");
        self.fault_hook(rec.state);
    }

    /// The debug builds' fault hooks, fired once `state` is recorded.
    fn fault_hook(&self, state: State) {
        if self.fault_storage_after == Some(state) {
            self.store.fail_writes(true);
        }
        if self.fault_after == Some(state) {
            eprintln!(
                "tourniquet: {FAULT_ENV}={} reached; aborting",
                state.as_str()
            );
            std::process::abort();
        }
    }

    /// Moves a record to `state` and writes the step (not synced).
    fn step(&self, rec: &mut CommandRecord, state: State, note: Option<String>) {
        rec.transition(state, note, self.now());
        if let Err(e) = self.store.write_step(rec, Value::Null) {
            tracing::error!(command = %rec.id, error = %e, "cannot write a step");
        }
        self.notify(rec);
    }

    /// Entry point of every transport: takes raw envelope bytes.
    pub async fn submit(self: &Arc<Self>, bytes: &[u8], transport: &str) -> Submission {
        self.submit_gated(bytes, transport, None, None).await
    }

    /// Like [`Lifecycle::submit`], for a transport that has already
    /// [`peek`](Lifecycle::peek)ed the command (the verification is reused
    /// while the policy is unchanged). A command that verifies is refused
    /// with `hold_back` instead of planned: the fleet transport's way to
    /// answer `halted` with a full, signed rejection receipt.
    pub async fn submit_gated(
        self: &Arc<Self>,
        bytes: &[u8],
        transport: &str,
        hold_back: Option<Rejection>,
        peeked: Option<Peeked>,
    ) -> Submission {
        let sha = sha256_hex(bytes);
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return self.reject_unverified(
                &sha,
                transport,
                Rejection::new(
                    Reason::TooLarge,
                    format!(
                        "envelope is {} bytes; the limit is {MAX_ENVELOPE_BYTES}",
                        bytes.len()
                    ),
                ),
            );
        }
        // The bytes received are the bytes verified: never a lossy copy.
        let Ok(text) = std::str::from_utf8(bytes) else {
            return self.reject_unverified(
                &sha,
                transport,
                Rejection::new(Reason::BadEnvelope, "the envelope is not valid UTF-8"),
            );
        };
        let Some(key) = RecordId::from_sha256_hex(&sha) else {
            return self.reject_unverified(
                &sha,
                transport,
                Rejection::new(Reason::BadEnvelope, "cannot hash the envelope"),
            );
        };
        let now = self.now();
        let rec = CommandRecord {
            id: key,
            state: State::Received,
            envelope: Arc::from(text),
            envelope_sha256: sha,
            transport: transport.to_string(),
            received_at: now,
            payload: None,
            signers: Vec::new(),
            actions: Vec::new(),
            guard: None,
            telemetry: None,
            replay_until: None,
            hold_until: None,
            reason: None,
            message: None,
            timeline: vec![crate::lifecycle::record::Transition {
                state: State::Received,
                at: now,
                note: None,
            }],
            drifts: Vec::new(),
            receipts: Vec::new(),
            related: None,
            superseded_by: None,
        };
        let span = tracing::info_span!("command", envelope = %&rec.envelope_sha256[..16]);
        self.process(rec, hold_back, peeked).instrument(span).await
    }

    /// Verifies an envelope against the current policy without recording
    /// anything: for transports that must read a command's targeting or
    /// rollout before deciding whether it is theirs. The command still goes
    /// through [`Lifecycle::submit`], which verifies it again.
    pub fn peek(&self, bytes: &[u8]) -> Result<Peeked, Rejection> {
        let policy = self.policy();
        let verified = policy.verify_envelope(bytes, self.now())?;
        Ok(Peeked { verified, policy })
    }

    /// Refuses a command no trusted key vouches for: a counter, a
    /// rate-limited audit entry with its hash, and the answer. Nothing is
    /// journaled and no receipt is signed, so junk costs O(1).
    fn reject_unverified(&self, sha: &str, transport: &str, rejection: Rejection) -> Submission {
        let code = rejection.reason.code();
        self.metrics.count_command(Some(code));
        tracing::debug!(reason = code, "unverified command rejected");
        let write = {
            let mut u = self.unverified.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if u.window
                .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
            {
                u.window = Some(now);
                u.written = 0;
            }
            if u.written < UNVERIFIED_AUDIT_PER_SECOND {
                u.written += 1;
                true
            } else {
                *u.suppressed.entry(code).or_default() += 1;
                false
            }
        };
        if write {
            let message: String = rejection.message.chars().take(200).collect();
            let _ = self.store.audit_envelope(
                "rejected_unverified",
                sha,
                json!({"reason_code": code, "message": message, "transport": transport}),
            );
        }
        Submission::Rejected {
            rejection,
            receipt: None,
        }
    }

    /// Writes one summary entry for the unverified rejections the rate
    /// limit left out since the last summary.
    pub fn flush_unverified_summary(&self) {
        let suppressed = std::mem::take(
            &mut self
                .unverified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .suppressed,
        );
        if !suppressed.is_empty() {
            let total: u64 = suppressed.values().sum();
            self.audit_event(
                "rejected_unverified_summary",
                json!({"count": total, "by_reason": suppressed}),
            );
        }
    }

    /// Refuses a command whose signatures verified: a signed rejection
    /// receipt, recorded.
    async fn reject_signed(&self, mut rec: CommandRecord, rejection: Rejection) -> Submission {
        tracing::warn!(reason = rejection.reason.code(), message = %rejection.message, "command rejected");
        self.metrics.count_command(Some(rejection.reason.code()));
        if let Some(u) = rec.id.command() {
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&u.0);
        }
        // Keyed by its envelope: a refused copy must never shadow the
        // record of the accepted command with the same id.
        if let Some(key) = RecordId::from_sha256_hex(&rec.envelope_sha256) {
            rec.id = key;
        }
        rec.reason = Some(rejection.reason);
        rec.message = Some(rejection.message.clone());
        rec.superseded_by = rejection.superseded_by.clone();
        let note = Some(rejection.reason.code().to_string());
        match self.settle(&mut rec, Outcome::Rejected, note).await {
            Ok(receipt) => Submission::Rejected {
                rejection,
                receipt: receipt.and_then(|v| serde_json::from_value(v).ok()),
            },
            Err(_) => Submission::Rejected {
                rejection,
                receipt: None,
            },
        }
    }

    fn storage_refusal(e: &store::StoreError) -> Rejection {
        Rejection::new(
            Reason::StorageUnavailable,
            format!("the agent cannot record the command, so it changed nothing: {e}"),
        )
    }

    /// Verifies, checks and plans a received command; journals it and
    /// starts execution. Used for fresh commands and for recovery of ones
    /// that had not been planned.
    async fn process(
        self: &Arc<Self>,
        mut rec: CommandRecord,
        hold_back: Option<Rejection>,
        peeked: Option<Peeked>,
    ) -> Submission {
        let policy = self.policy();
        let started = Instant::now();
        // A transport's verified peek stands if it was judged by this very
        // policy, over these very bytes, and has not expired since.
        let now = self.now();
        let reuse = peeked.filter(|p| {
            Arc::ptr_eq(&p.policy, &policy)
                && p.verified.envelope_sha256 == rec.envelope_sha256
                && now <= p.verified.payload.expires.plus(policy.clock_skew())
        });
        let verified = match reuse {
            Some(p) => p.verified,
            None => match policy.verify_envelope(rec.envelope.as_bytes(), now) {
                Ok(v) => v,
                Err(rej) if rej.reason.before_trust() => {
                    return self.reject_unverified(&rec.envelope_sha256, &rec.transport, rej)
                }
                Err(rej) => return self.reject_signed(rec, rej).await,
            },
        };
        self.metrics
            .verify_seconds
            .observe(started.elapsed().as_secs_f64());
        let payload = verified.payload;
        rec.signers = verified.signers;
        rec.payload = Some(payload.clone());
        if let Some(rej) = self.refusal(&rec, &payload, &policy, hold_back) {
            return self.reject_signed(rec, rej).await;
        }
        let Ok(ulid) = ulid::Ulid::from_string(&payload.id) else {
            return self
                .reject_signed(rec, Rejection::new(Reason::BadPayload, "id is not a ULID"))
                .await;
        };
        rec.id = RecordId::Command(ulid);
        rec.guard = self.effective_guard(&payload);
        rec.replay_until = payload.expires.checked_plus(policy.clock_skew());
        if rec.replay_until.is_none() {
            return self
                .reject_signed(
                    rec,
                    Rejection::new(Reason::BadPayload, "expires is too far in the future"),
                )
                .await;
        }
        self.metrics.count_command(None);
        let kind = if payload.actions.iter().any(|a| a.op == REVERT_OP) {
            "revert"
        } else {
            "hotfix"
        };
        // Who asked and why, in the hash-chained log itself: it outlives
        // journal compaction.
        let who = json!({
            "issued_at": payload.issued_at,
            "issuer": payload.issuer,
            "reason": payload.reason,
            "ticket": payload.ticket,
            "kind": kind,
            "signers": rec.signers.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        });
        // Received and verified: the envelope is written to the journal
        // now (not synced: a crash of the process loses nothing, and the
        // sender gets its answer only after the intent is synced), so a
        // restart finds it and verifies it again.
        if let Err(e) = self.store.write_intent(&rec, Value::Null) {
            return self.refuse_storage(&rec, &e);
        }
        self.fault_hook(State::Received);
        rec.transition(State::Verified, None, self.now());
        if let Err(e) = self.store.write_step(&rec, who) {
            self.store.forget(&rec.id);
            return self.refuse_storage(&rec, &e);
        }
        self.notify(&rec);
        let keys = self.lock_keys(&payload);
        match self.locks.try_acquire(&keys) {
            Some(guard) => self.plan_and_start(rec, payload, guard).await,
            None => {
                // Another command holds the resource: make this one durable
                // now, and plan it when its turn comes.
                if let Err(e) = self.store.sync_journal().await {
                    self.store.forget(&rec.id);
                    return self.refuse_storage(&rec, &e);
                }
                self.release_in_flight(&rec);
                let id = rec.id.to_string();
                let this = self.clone();
                let span = tracing::info_span!("command", id = %id);
                self.spawn_guarded(
                    rec.id,
                    async move {
                        let guard = this.locks.acquire(&keys).await;
                        let _ = this.plan_and_start(rec, payload, guard).await;
                    }
                    .instrument(span),
                );
                Submission::Accepted {
                    id,
                    state: State::Verified,
                }
            }
        }
    }

    fn release_in_flight(&self, rec: &CommandRecord) {
        if let Some(u) = rec.id.command() {
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&u.0);
        }
    }

    fn refuse_storage(&self, rec: &CommandRecord, e: &store::StoreError) -> Submission {
        self.release_in_flight(rec);
        let rejection = Self::storage_refusal(e);
        self.metrics.count_command(Some(rejection.reason.code()));
        tracing::error!(command = %rec.id, error = %e, "refused: the state dir cannot be written");
        Submission::Rejected {
            rejection,
            receipt: None,
        }
    }

    /// Replay, hold-back and the pure checks (all after signatures
    /// verified, so each gets a signed receipt); marks the id in flight
    /// when it passes.
    fn refusal(
        &self,
        rec: &CommandRecord,
        payload: &Payload,
        policy: &Policy,
        hold_back: Option<Rejection>,
    ) -> Option<Rejection> {
        let Ok(ulid) = ulid::Ulid::from_string(&payload.id) else {
            return Some(Rejection::new(
                Reason::BadPayload,
                format!("id {:?} is not a ULID", payload.id),
            ));
        };
        let replay = || {
            Rejection::new(
                Reason::Replay,
                format!("command {} was already received", payload.id),
            )
        };
        if self.store.seen(ulid) {
            return Some(replay());
        }
        if let Some(rej) = hold_back {
            return Some(rej);
        }
        if let Err(rej) = self.check_command(payload, &rec.signers, policy) {
            return Some(rej);
        }
        if !self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ulid.0)
        {
            return Some(replay());
        }
        None
    }

    /// The resources a command touches: its actions', or for a revert the
    /// reverted command's.
    fn lock_keys(&self, payload: &Payload) -> Vec<String> {
        let mut keys = Vec::new();
        for a in &payload.actions {
            if let Some(target) = a.revert_target() {
                if let Some(orig) = self.record(target) {
                    keys.extend(orig.actions.iter().map(|oa| oa.resource.clone()));
                }
            } else if let Some(r) = &a.resource {
                keys.push(r.clone());
            }
        }
        keys
    }

    /// Plans a verified command under its resource locks, journals its
    /// intent durably, and starts it.
    async fn plan_and_start(
        self: &Arc<Self>,
        mut rec: CommandRecord,
        payload: Payload,
        guard: ResourceGuard,
    ) -> Submission {
        if let Err(e) = self.plan(&mut rec, &payload).await {
            drop(guard);
            return match e {
                check::PlanError::Rejected(rej) => self.reject_signed(rec, rej).await,
                check::PlanError::Failed(msg) => {
                    self.release_in_flight(&rec);
                    rec.message = Some(msg.clone());
                    let _ = self.settle(&mut rec, Outcome::Failed, Some(msg)).await;
                    Submission::Accepted {
                        id: rec.id.to_string(),
                        state: rec.state,
                    }
                }
            };
        }
        if payload.dry_run {
            drop(guard);
            self.release_in_flight(&rec);
            let note = Some("dry run: nothing changed".to_string());
            return match self.settle(&mut rec, Outcome::Planned, note).await {
                Ok(_) => Submission::Accepted {
                    id: rec.id.to_string(),
                    state: State::Planned,
                },
                Err(e) => self.refuse_storage(&rec, &e),
            };
        }
        self.step(&mut rec, State::Planned, None);
        rec.transition(State::Journaled, None, self.now());
        let durable = match self.store.write_step(&rec, Value::Null) {
            Ok(()) => self.store.sync_journal().await,
            Err(e) => Err(e),
        };
        self.release_in_flight(&rec);
        if let Err(e) = durable {
            self.store.forget(&rec.id);
            return self.refuse_storage(&rec, &e);
        }
        self.notify(&rec);
        let id = rec.id.to_string();
        let this = self.clone();
        let span = tracing::info_span!("command", id = %id);
        self.spawn_guarded(
            rec.id,
            async move { this.execute(rec, guard).await }.instrument(span),
        );
        Submission::Accepted {
            id,
            state: State::Journaled,
        }
    }

    /// Runs a command's task; a panic in it ends the command `failed`, with
    /// a receipt, after undoing what it applied.
    fn spawn_guarded(
        self: &Arc<Self>,
        id: RecordId,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(panic) = std::panic::AssertUnwindSafe(fut).catch_unwind().await {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(command = %id, panic = %why, "command task panicked");
                this.fail_after_panic(id, &why).await;
            }
        });
    }

    async fn fail_after_panic(self: &Arc<Self>, id: RecordId, why: &str) {
        let Some(mut rec) = self.store.record(&id) else {
            return;
        };
        if rec.is_terminal() {
            return;
        }
        let keys: Vec<String> = rec.actions.iter().map(|a| a.resource.clone()).collect();
        let _guard = self.locks.acquire(&keys).await;
        let errors = self.revert_actions(&mut rec).await;
        let mut note = format!("internal error: {why}; what it applied was reverted");
        if !errors.is_empty() {
            note = format!(
                "internal error: {why}; revert incomplete: {}",
                errors.join("; ")
            );
        }
        rec.message = Some(note.clone());
        if let Err(e) = self.settle(&mut rec, Outcome::Failed, Some(note)).await {
            tracing::error!(command = %rec.id, error = %e, "cannot record a failed command");
        }
    }

    /// Forgets what retention no longer needs, and writes the summary of
    /// rate-limited audit entries.
    pub fn prune(&self) {
        self.store.prune_replay(self.now());
        self.flush_unverified_summary();
    }
}
