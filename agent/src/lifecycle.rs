//! The lifecycle of a command on this agent (DESIGN §5), and the only caller
//! of providers.
//!
//! ```text
//! received → verified | rejected → planned → journaled → sampled → applied
//!          → baking → kept | rolled_back → reverted
//! ```
//!
//! Every transition is appended to the journal and the audit log before the
//! next step starts; the steps after which a crash could lose an intent or a
//! before-state are fsynced. That ordering is what lets [`Lifecycle::recover`]
//! finish or revert every command after a crash, and say which.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, OwnedMutexGuard};
use tourniquet_providers::{Provider, ProviderError};
use tracing::Instrument;

use crate::audit::AuditLog;
use crate::envelope::{sha256_hex, Envelope};
use crate::glob::glob_match;
use crate::journal::Journal;
use crate::keys::Signer;
use crate::metrics::Metrics;
use crate::payload::{Guard, OnBreach, Payload, Target, Timestamp, HALT_OP, REVERT_OP};
use crate::policy::{Policy, MAX_ENVELOPE_BYTES};
use crate::receipt::{self, AgentRef, Receipt};
use crate::record::{ActionRecord, CommandRecord, State};
use crate::rejection::{Reason, Rejection};
use crate::telemetry::{self, Probes, Verdict};

/// Environment variable naming a state after which a debug build aborts,
/// for crash-safety tests. Ignored by release builds.
pub const FAULT_ENV: &str = "TOURNIQUET_FAULT_AFTER";

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
        receipt: Option<Envelope>,
    },
}

struct Inner {
    journal: Journal,
    audit: AuditLog,
    records: HashMap<String, CommandRecord>,
}

/// Everything the agent runs commands with.
pub struct Lifecycle {
    identity: Identity,
    agent_ref: AgentRef,
    receipts_dir: PathBuf,
    policy: RwLock<Arc<Policy>>,
    policy_sha256: RwLock<String>,
    resources: BTreeMap<String, Resource>,
    probes: Probes,
    inner: Mutex<Inner>,
    /// Held from planning through apply, so before-states stay true.
    apply_lock: Arc<tokio::sync::Mutex<()>>,
    changed: watch::Sender<u64>,
    pub metrics: Metrics,
    fault_after: Option<State>,
    /// Where settled receipts go besides the receipts dir: the fleet
    /// transport publishes them.
    receipt_sink: Mutex<Option<tokio::sync::mpsc::UnboundedSender<SettledReceipt>>>,
}

/// A command a transport verified before submitting it, and the policy
/// that judged it.
#[derive(Clone)]
pub struct Peeked {
    pub verified: crate::policy::VerifiedCommand,
    policy: Arc<Policy>,
}

/// A receipt just signed and stored, for transports that pass it on.
#[derive(Debug, Clone)]
pub struct SettledReceipt {
    /// The file name under `receipts/` (unique per receipt).
    pub name: String,
    /// The command id, or `None` when the envelope never yielded one.
    pub command_id: Option<String>,
    /// The transport the command arrived through.
    pub transport: String,
    pub outcome: String,
    pub reason_code: Option<String>,
    /// The signed receipt envelope, as JSON.
    pub envelope: Vec<u8>,
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl Lifecycle {
    /// Builds the lifecycle over an opened journal and audit log.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Identity,
        state_dir: &Path,
        policy: Policy,
        policy_sha256: String,
        resources: BTreeMap<String, Resource>,
        probes: Probes,
        journal: Journal,
        audit: AuditLog,
        records: HashMap<String, CommandRecord>,
    ) -> std::io::Result<Arc<Lifecycle>> {
        let receipts_dir = state_dir.join("receipts");
        crate::state::create_private_dir(&receipts_dir)?;
        let agent_ref = AgentRef {
            id: identity.id.clone(),
            labels: identity.labels.clone(),
            key: identity.key.public_key().to_openssh().unwrap_or_default(),
        };
        let fault_after = if cfg!(debug_assertions) {
            std::env::var(FAULT_ENV).ok().and_then(|s| State::parse(&s))
        } else {
            None
        };
        let metrics = Metrics::new();
        metrics
            .active_hotfixes
            .set(records.values().filter(|r| r.is_active()).count() as i64);
        Ok(Arc::new(Lifecycle {
            identity,
            agent_ref,
            receipts_dir,
            policy: RwLock::new(Arc::new(policy)),
            policy_sha256: RwLock::new(policy_sha256),
            resources,
            probes,
            inner: Mutex::new(Inner {
                journal,
                audit,
                records,
            }),
            apply_lock: Arc::new(tokio::sync::Mutex::new(())),
            changed: watch::channel(0).0,
            metrics,
            fault_after,
            receipt_sink: Mutex::new(None),
        }))
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
        let mut inner = self.lock_inner();
        if let Err(e) = inner.audit.append(event, None, None, detail, true) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    fn lock_inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A record by command id.
    pub fn record(&self, id: &str) -> Option<CommandRecord> {
        self.lock_inner().records.get(id).cloned()
    }

    /// Records applied and still in force.
    pub fn active(&self) -> Vec<CommandRecord> {
        let mut v: Vec<CommandRecord> = self
            .lock_inner()
            .records
            .values()
            .filter(|r| r.is_active())
            .cloned()
            .collect();
        v.sort_by_key(|r| r.received_at);
        v
    }

    /// Subscribes to "some record changed".
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Reads a stored receipt envelope by file name.
    pub fn read_receipt(&self, name: &str) -> Option<Value> {
        let bytes = std::fs::read(self.receipts_dir.join(format!("{name}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Appends the record's state to the journal and audit log, publishes it,
    /// and fires the test fault hook.
    fn persist(&self, rec: &CommandRecord, durable: bool, detail: Value) {
        {
            let mut inner = self.lock_inner();
            if let Err(e) = inner.journal.append(rec, durable) {
                tracing::error!(command = %rec.id, error = %e, "cannot write the journal");
            }
            let command = (!rec.id.starts_with("sha256:")).then_some(rec.id.as_str());
            if let Err(e) = inner.audit.append(
                rec.state.as_str(),
                command,
                Some(&rec.envelope_sha256),
                detail,
                // The journal carries recovery; the audit log is synced when
                // a command settles, keeping one fsync off the apply path.
                durable && rec.is_settled(),
            ) {
                tracing::error!(command = %rec.id, error = %e, "cannot write the audit log");
            }
            let key = format!("sha256:{}", rec.envelope_sha256);
            if rec.id != key {
                inner.records.remove(&key);
            }
            inner.records.insert(rec.id.clone(), rec.clone());
        }
        self.changed.send_modify(|n| *n += 1);
        tracing::info!(command = %rec.id, state = rec.state.as_str(), "transition");
        if self.fault_after == Some(rec.state) {
            eprintln!(
                "tourniquet: {FAULT_ENV}={} reached; aborting",
                rec.state.as_str()
            );
            std::process::abort();
        }
    }

    /// Moves a record to `state` and persists it.
    fn step(&self, rec: &mut CommandRecord, state: State, note: Option<String>, durable: bool) {
        rec.transition(state, note);
        self.persist(rec, durable, Value::Null);
    }

    /// Moves a record to a settled state: signs and stores its receipt first,
    /// then persists durably, so a settled state always has a receipt.
    fn settle(&self, rec: &mut CommandRecord, state: State, note: Option<String>) {
        rec.transition(state, note);
        let durable = state != State::Rejected;
        let name = if rec.id.starts_with("sha256:") {
            format!(
                "rejected-{}.{}",
                &rec.envelope_sha256[..16],
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            )
        } else {
            format!("{}.{}.{}", rec.id, rec.receipts.len() + 1, state.as_str())
        };
        let mut receipt = Receipt::for_record(rec, &self.agent_ref);
        if rec.id.starts_with("sha256:") {
            receipt.command_id = rec.payload.as_ref().map(|p| p.id.clone());
        }
        match receipt.sign(&self.identity.key).map(|env| {
            let stored = receipt::store(&self.receipts_dir, &name, &env, durable);
            (env, stored)
        }) {
            Ok((env, Ok(()))) => {
                rec.receipts.push(name.clone());
                let sink = self
                    .receipt_sink
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                if let Some(sink) = sink {
                    let _ = sink.send(SettledReceipt {
                        name: name.clone(),
                        command_id: receipt.command_id.clone(),
                        transport: rec.transport.clone(),
                        outcome: receipt.outcome.clone(),
                        reason_code: receipt.reason_code.clone(),
                        envelope: serde_json::to_vec(&env).unwrap_or_default(),
                    });
                }
            }
            Ok((_, Err(e))) => {
                tracing::error!(command = %rec.id, error = %e, "cannot store receipt")
            }
            Err(e) => tracing::error!(command = %rec.id, error = %e, "cannot sign receipt"),
        }
        self.metrics.count_outcome(state.as_str());
        let note = rec.timeline.last().and_then(|t| t.note.clone());
        self.persist(
            rec,
            durable,
            json!({"receipt": name, "reason_code": rec.reason.map(|r| r.code()), "note": note}),
        );
        self.metrics.active_hotfixes.set(
            self.lock_inner()
                .records
                .values()
                .filter(|r| r.is_active())
                .count() as i64,
        );
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
        let mut rec = CommandRecord {
            id: format!("sha256:{sha}"),
            state: State::Received,
            envelope: if bytes.len() <= MAX_ENVELOPE_BYTES {
                String::from_utf8_lossy(bytes).into_owned()
            } else {
                String::new()
            },
            envelope_sha256: sha,
            transport: transport.to_string(),
            received_at: now(),
            payload: None,
            signers: Vec::new(),
            actions: Vec::new(),
            guard: None,
            telemetry: None,
            replay_until: None,
            hold_until: None,
            reason: None,
            message: None,
            timeline: Vec::new(),
            drifts: Vec::new(),
            receipts: Vec::new(),
            related: None,
        };
        if bytes.len() > MAX_ENVELOPE_BYTES {
            rec.transition(State::Received, None);
            let rejection = Rejection::new(
                Reason::TooLarge,
                format!(
                    "envelope is {} bytes; the limit is {MAX_ENVELOPE_BYTES}",
                    bytes.len()
                ),
            );
            return self.reject(rec, rejection);
        }
        self.step(&mut rec, State::Received, None, false);
        let span = tracing::info_span!("command", envelope = %&rec.envelope_sha256[..16]);
        self.process(rec, hold_back, peeked).instrument(span).await
    }

    /// Verifies an envelope against the current policy without recording
    /// anything: for transports that must read a command's targeting or
    /// rollout before deciding whether it is theirs. The command still goes
    /// through [`Lifecycle::submit`], which verifies it again.
    pub fn peek(&self, bytes: &[u8]) -> Result<Peeked, Rejection> {
        let policy = self.policy();
        let verified = policy.verify_envelope(bytes, now())?;
        Ok(Peeked { verified, policy })
    }

    fn reject(&self, mut rec: CommandRecord, rejection: Rejection) -> Submission {
        tracing::warn!(reason = rejection.reason.code(), message = %rejection.message, "command rejected");
        self.metrics.count_command(Some(rejection.reason.code()));
        rec.id = format!("sha256:{}", rec.envelope_sha256);
        rec.reason = Some(rejection.reason);
        rec.message = Some(rejection.message.clone());
        self.settle(
            &mut rec,
            State::Rejected,
            Some(rejection.reason.code().into()),
        );
        let receipt = rec
            .receipts
            .last()
            .and_then(|n| self.read_receipt(n))
            .and_then(|v| serde_json::from_value(v).ok());
        Submission::Rejected { rejection, receipt }
    }

    /// Verifies, checks and plans a received command; journals it and
    /// starts execution. Used for fresh commands and for recovery of ones
    /// that had not reached `journaled`.
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
        let reuse = peeked.filter(|p| {
            Arc::ptr_eq(&p.policy, &policy)
                && p.verified.envelope_sha256 == rec.envelope_sha256
                && now() <= p.verified.payload.expires.plus(policy.clock_skew())
        });
        let verified = match reuse {
            Some(p) => p.verified,
            None => match policy.verify_envelope(rec.envelope.as_bytes(), now()) {
                Ok(v) => v,
                Err(rej) => return self.reject(rec, rej),
            },
        };
        self.metrics
            .verify_seconds
            .observe(started.elapsed().as_secs_f64());
        let payload = verified.payload;
        rec.signers = verified.signers;
        rec.payload = Some(payload.clone());
        if let Some(existing) = self.record(&payload.id) {
            return self.reject(
                rec,
                Rejection::new(
                    Reason::Replay,
                    format!(
                        "command {} was already received ({})",
                        payload.id,
                        existing.state.as_str()
                    ),
                ),
            );
        }
        if let Some(rej) = hold_back {
            return self.reject(rec, rej);
        }
        if let Err(rej) = self.check_command(&payload, &rec.signers, &policy) {
            return self.reject(rec, rej);
        }
        rec.id = payload.id.clone();
        rec.guard = self.effective_guard(&payload);
        rec.replay_until = Some(payload.expires.plus(policy.clock_skew()));
        self.metrics.count_command(None);
        rec.transition(State::Verified, None);
        // Who asked and why, in the hash-chained log itself: it outlives
        // journal compaction.
        let kind = if payload.actions.iter().any(|a| a.op == REVERT_OP) {
            "revert"
        } else {
            "hotfix"
        };
        self.persist(
            &rec,
            false,
            json!({
                "issued_at": payload.issued_at,
                "issuer": payload.issuer,
                "reason": payload.reason,
                "ticket": payload.ticket,
                "kind": kind,
                "signers": rec.signers.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            }),
        );

        let lock = self.apply_lock.clone().lock_owned().await;
        if let Err(e) = self.plan(&mut rec, &payload).await {
            drop(lock);
            return match e {
                PlanError::Rejected(rej) => self.reject(rec, rej),
                PlanError::Failed(msg) => {
                    rec.message = Some(msg.clone());
                    self.settle(&mut rec, State::Failed, Some(msg));
                    Submission::Accepted {
                        id: rec.id.clone(),
                        state: rec.state,
                    }
                }
            };
        }
        if payload.dry_run {
            drop(lock);
            self.settle(
                &mut rec,
                State::Planned,
                Some("dry run: nothing changed".into()),
            );
            return Submission::Accepted {
                id: rec.id,
                state: State::Planned,
            };
        }
        self.step(&mut rec, State::Planned, None, false);
        self.step(&mut rec, State::Journaled, None, true);
        let id = rec.id.clone();
        let this = self.clone();
        let span = tracing::info_span!("command", id = %id);
        tokio::spawn(async move { this.execute(rec, lock).await }.instrument(span));
        Submission::Accepted {
            id,
            state: State::Journaled,
        }
    }

    fn effective_guard(&self, payload: &Payload) -> Option<Guard> {
        payload.guard.clone().or_else(|| {
            payload
                .actions
                .iter()
                .filter_map(|a| a.resource.as_ref())
                .filter_map(|r| self.resources.get(r))
                .find_map(|r| r.default_guard.clone())
        })
    }

    /// Targeting, resources, permissions and action shape. Pure: no I/O.
    fn check_command(
        &self,
        p: &Payload,
        signers: &[crate::policy::TrustedSigner],
        policy: &Policy,
    ) -> Result<(), Rejection> {
        self.check_target(&p.target)?;
        if p.actions.iter().any(|a| a.op == HALT_OP) {
            return Err(Rejection::new(
                Reason::InvalidAction,
                "halt stops a fleet rollout: send it over NATS (tourniquet halt ID --send nats://…)",
            ));
        }
        self.check_actions(p, signers, policy)
    }

    /// Whether this agent is one the target names.
    pub fn check_target(&self, t: &Target) -> Result<(), Rejection> {
        if !t.agents.is_empty() && !t.agents.iter().any(|a| a == &self.identity.id) {
            return Err(Rejection::new(
                Reason::NotTargeted,
                format!("agent {} is not in target.agents", self.identity.id),
            ));
        }
        for (k, pattern) in &t.labels {
            match self.identity.labels.get(k) {
                Some(v) if glob_match(pattern, v) => {}
                Some(v) => {
                    return Err(Rejection::new(
                        Reason::NotTargeted,
                        format!("label {k}={v} does not match {pattern:?}"),
                    ))
                }
                None => {
                    return Err(Rejection::new(
                        Reason::NotTargeted,
                        format!("this agent has no label {k:?}"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn check_actions(
        &self,
        p: &Payload,
        signers: &[crate::policy::TrustedSigner],
        policy: &Policy,
    ) -> Result<(), Rejection> {
        let reverts = p.actions.iter().filter(|a| a.op == REVERT_OP).count();
        if reverts > 0 && p.actions.len() > 1 {
            return Err(Rejection::new(
                Reason::InvalidAction,
                "revert must be the only action of its command",
            ));
        }
        for a in &p.actions {
            if let Some(target) = a.revert_target() {
                let Some(original) = self.record(target) else {
                    return Err(Rejection::new(
                        Reason::InvalidAction,
                        format!("command {target} is not known to this agent"),
                    ));
                };
                if !original.is_active() {
                    return Err(Rejection::new(
                        Reason::InvalidAction,
                        format!(
                            "command {target} is {}, not in force; nothing to revert",
                            original.state.as_str()
                        ),
                    ));
                }
                for r in original.actions.iter().map(|a| a.resource.as_str()) {
                    policy.authorize(REVERT_OP, r, signers)?;
                }
                continue;
            }
            let name = a.resource.as_deref().unwrap_or_default();
            let Some(resource) = self.resources.get(name) else {
                return Err(Rejection::new(
                    Reason::UnknownResource,
                    format!("this agent declares no resource {name:?}"),
                ));
            };
            policy.authorize(&a.op, name, signers)?;
            resource
                .provider
                .validate(&a.spec())
                .map_err(|e| Rejection::new(Reason::InvalidAction, format!("{name}: {e}")))?;
            if p.hold.is_some() && !resource.provider.reversible(&a.op) {
                return Err(Rejection::new(
                    Reason::InvalidAction,
                    format!(
                        "{} on {name} cannot be reverted, so it cannot be held",
                        a.op
                    ),
                ));
            }
        }
        if let Some(g) = p.guard.as_ref() {
            for probe in g.probes.iter().chain(g.checks.iter().map(|c| &c.probe)) {
                if !self.probes.contains(probe) {
                    return Err(Rejection::new(
                        Reason::InvalidAction,
                        format!("guard names probe {probe:?}, which this agent does not declare"),
                    ));
                }
            }
            let checks = telemetry::effective_checks(g, |p| self.probes.get(p).map(|c| c.unit()));
            if let Some(p) = g
                .probes
                .iter()
                .find(|p| !checks.iter().any(|c| &c.probe == *p))
            {
                return Err(Rejection::new(
                    Reason::InvalidAction,
                    format!("guard probe {p:?} is not a ratio; give it a check (max, min, max_increase or max_decrease)"),
                ));
            }
        }
        Ok(())
    }

    /// Captures before-states and intended after-states.
    async fn plan(&self, rec: &mut CommandRecord, p: &Payload) -> Result<(), PlanError> {
        rec.actions.clear();
        if let Some(target) = p.actions.first().and_then(|a| a.revert_target()) {
            let original = self.record(target).ok_or_else(|| {
                PlanError::Rejected(Rejection::new(
                    Reason::InvalidAction,
                    format!("command {target} is not known"),
                ))
            })?;
            rec.related = Some(target.to_string());
            for a in original.actions.iter().filter(|a| a.applied && !a.reverted) {
                rec.actions.push(ActionRecord {
                    resource: a.resource.clone(),
                    op: REVERT_OP.into(),
                    params: a.params.clone(),
                    before: a.after.clone(),
                    planned: a.before.clone(),
                    after: None,
                    reversible: false,
                    applied: false,
                    reverted: false,
                    error: None,
                });
            }
            return Ok(());
        }
        let active = self.active();
        for a in &p.actions {
            let name = a.resource.clone().unwrap_or_default();
            let resource = &self.resources[&name];
            let spec = a.spec();
            let mut before = resource
                .provider
                .snapshot(&spec)
                .await
                .map_err(|e| match e {
                    ProviderError::Invalid(m) => PlanError::Rejected(Rejection::new(
                        Reason::InvalidAction,
                        format!("{name}: {m}"),
                    )),
                    ProviderError::Failed(m) => {
                        PlanError::Failed(format!("{name}: reading before-state: {m}"))
                    }
                })?;
            // A newer hotfix on the same thing takes over the older one's
            // before-state, so reverting it restores what was there first.
            let key = resource.provider.state_key(&spec);
            for other in &active {
                for oa in other
                    .actions
                    .iter()
                    .filter(|oa| oa.resource == name && oa.applied && !oa.reverted)
                {
                    let other_spec = tourniquet_providers::ActionSpec {
                        op: oa.op.clone(),
                        params: oa.params.clone(),
                    };
                    if resource.provider.state_key(&other_spec) == key {
                        if let Some(b) = &oa.before {
                            before = b.clone();
                        }
                    }
                }
            }
            let planned = resource.provider.plan(&spec, &before).map_err(|e| {
                PlanError::Rejected(Rejection::new(
                    Reason::InvalidAction,
                    format!("{name}: {e}"),
                ))
            })?;
            rec.actions.push(ActionRecord {
                resource: name,
                op: a.op.clone(),
                params: a.params.clone(),
                before: Some(before),
                planned: Some(planned),
                after: None,
                reversible: resource.provider.reversible(&a.op),
                applied: false,
                reverted: false,
                error: None,
            });
        }
        Ok(())
    }

    /// Samples, applies, bakes and settles a journaled command.
    async fn execute(self: Arc<Self>, mut rec: CommandRecord, lock: OwnedMutexGuard<()>) {
        if let Some(target) = rec
            .related
            .clone()
            .filter(|_| rec.actions.iter().all(|a| a.op == REVERT_OP))
        {
            drop(lock);
            self.run_revert_command(rec, &target).await;
            return;
        }
        let guard = rec.guard.clone();
        let mut report = rec.telemetry.clone().unwrap_or_default();
        if let Some(g) = &guard {
            report.before = self.probes.sample(&g.probes, g.before.map(|b| b.0)).await;
        }
        rec.telemetry = guard.as_ref().map(|_| report.clone());
        self.step(&mut rec, State::Sampled, None, false);

        let started = Instant::now();
        if let Err(msg) = self.apply_all(&mut rec).await {
            drop(lock);
            rec.message = Some(msg.clone());
            self.settle(&mut rec, State::Failed, Some(msg));
            return;
        }
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        self.step(&mut rec, State::Applied, None, true);
        self.hand_over(&rec);
        drop(lock);
        self.bake_and_settle(rec, Duration::ZERO).await;
    }

    /// Applies actions in order; on a failure reverts the applied ones in
    /// reverse and returns why.
    async fn apply_all(&self, rec: &mut CommandRecord) -> Result<(), String> {
        for i in 0..rec.actions.len() {
            let a = &rec.actions[i];
            let provider = &self.resources[&a.resource].provider;
            let spec = tourniquet_providers::ActionSpec {
                op: a.op.clone(),
                params: a.params.clone(),
            };
            match provider.apply(&spec).await {
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
    async fn revert_actions(&self, rec: &mut CommandRecord) -> Vec<String> {
        let mut errors = Vec::new();
        for i in (0..rec.actions.len()).rev() {
            let a = &rec.actions[i];
            if !a.applied || a.reverted || !a.reversible {
                continue;
            }
            let Some(before) = a.before.clone() else {
                continue;
            };
            let provider = &self.resources[&a.resource].provider;
            let spec = tourniquet_providers::ActionSpec {
                op: a.op.clone(),
                params: a.params.clone(),
            };
            match provider.revert(&spec, &before).await {
                Ok(_) => rec.actions[i].reverted = true,
                Err(e) => {
                    let msg = format!("reverting {} {}: {e}", a.resource, a.op);
                    rec.actions[i].error = Some(msg.clone());
                    errors.push(msg);
                }
            }
        }
        errors
    }

    /// Marks older hotfixes on the same keys as handed over to `rec`; an
    /// older one left with nothing of its own is superseded.
    fn hand_over(&self, rec: &CommandRecord) {
        let keys: Vec<(String, String)> = rec
            .actions
            .iter()
            .map(|a| {
                let p = &self.resources[&a.resource].provider;
                (a.resource.clone(), p.state_key(&spec_of(a)))
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
                other.related = Some(rec.id.clone());
                if other.actions.iter().all(|a| !a.applied || a.reverted) {
                    self.settle(
                        &mut other,
                        State::Superseded,
                        Some(format!("superseded by {}", rec.id)),
                    );
                } else {
                    self.persist(&other, true, json!({"handed_over_to": rec.id}));
                }
            }
        }
    }

    /// Bakes (if guarded), judges, and settles as kept or rolled back.
    /// `elapsed` is bake time already served before a restart.
    async fn bake_and_settle(self: &Arc<Self>, mut rec: CommandRecord, elapsed: Duration) {
        let mut paused = false;
        if let Some(g) = rec.guard.clone() {
            let bake = g.bake.map(|b| b.0).unwrap_or_default();
            let interval = g.interval.map(|i| i.0).unwrap_or(Duration::from_secs(1));
            self.step(
                &mut rec,
                State::Baking,
                Some(format!("bake {}", humantime::format_duration(bake))),
                false,
            );
            let checks = telemetry::effective_checks(&g, |p| self.probes.get(p).map(|c| c.unit()));
            let mut judgement =
                telemetry::Judgement::new(&g, checks, rec.telemetry.clone().unwrap_or_default());
            let deadline = tokio::time::Instant::now() + bake.saturating_sub(elapsed);
            let breach_seen = std::time::Instant::now();
            loop {
                let samples = self.probes.sample(&g.probes, None).await;
                let abort = judgement.push(samples);
                // Keep the journal's view current so a restart resumes with
                // what was measured so far.
                rec.telemetry = Some(judgement.report.clone());
                if abort {
                    tracing::warn!(command = %rec.id, after_ms = breach_seen.elapsed().as_millis() as u64, "guard: consecutive breaches, aborting the bake");
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
                    g.on_inconclusive == crate::payload::OnInconclusive::Rollback
                }
                Verdict::Pass => false,
            };
            if roll_back {
                let _lock = self.apply_lock.lock().await;
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
                self.settle(&mut rec, State::RolledBack, Some(note));
                return;
            }
            if verdict == Verdict::Inconclusive {
                tracing::warn!(command = %rec.id, "guard inconclusive: keeping the change");
            }
            paused = verdict == Verdict::Breach && g.on_breach == OnBreach::Pause;
        }
        let hold = rec.payload.as_ref().and_then(|p| p.hold);
        rec.hold_until = hold.map(|h| now().plus(h.0));
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
        self.settle(&mut rec, State::Kept, note);
        if rec.hold_until.is_some() {
            self.arm_hold(rec.id.clone());
        }
    }

    /// Reverts `id` when its hold runs out.
    fn arm_hold(self: &Arc<Self>, id: String) {
        let this = self.clone();
        let span = tracing::info_span!("hold", id = %id);
        tokio::spawn(async move {
            loop {
                let Some(rec) = this.record(&id) else { return };
                let (true, Some(until)) = (rec.is_active(), rec.hold_until) else {
                    return;
                };
                let wait = now().until(until);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                match this.revert_command(&id, "hold ran out".into(), None).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(command = %id, error = %e, "hold revert failed; retrying in 30s");
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            }
        }.instrument(span));
    }

    /// Reverts an active command's effect and settles it as `reverted`.
    pub async fn revert_command(
        &self,
        id: &str,
        note: String,
        by: Option<&str>,
    ) -> Result<(), String> {
        let _lock = self.apply_lock.lock().await;
        let Some(mut rec) = self.record(id) else {
            return Err(format!("no command {id}"));
        };
        if !rec.is_active() {
            return Ok(());
        }
        let errors = self.revert_actions(&mut rec).await;
        if !errors.is_empty() {
            self.persist(&rec, true, json!({"revert_errors": errors}));
            return Err(errors.join("; "));
        }
        if let Some(by) = by {
            rec.related = Some(by.to_string());
        }
        self.settle(&mut rec, State::Reverted, Some(note));
        Ok(())
    }

    async fn run_revert_command(self: &Arc<Self>, mut rec: CommandRecord, target: &str) {
        self.step(&mut rec, State::Sampled, None, false);
        match self
            .revert_command(
                target,
                format!("reverted by command {}", rec.id),
                Some(&rec.id),
            )
            .await
        {
            Ok(()) => {
                let original = self.record(target);
                for a in rec.actions.iter_mut() {
                    a.applied = true;
                    a.after = original
                        .as_ref()
                        .and_then(|o| o.actions.iter().find(|oa| oa.resource == a.resource))
                        .and_then(|oa| oa.before.clone());
                }
                self.step(&mut rec, State::Applied, None, true);
                self.settle(&mut rec, State::Kept, Some(format!("reverted {target}")));
            }
            Err(e) => {
                rec.message = Some(e.clone());
                self.settle(&mut rec, State::Failed, Some(e));
            }
        }
    }

    /// Finishes or reverts every command a crash left unsettled, and
    /// re-arms holds. Says which in the audit log.
    ///
    /// `pending` must be taken with [`Lifecycle::unsettled`] before any
    /// transport starts, so a live command is never mistaken for a crash
    /// leftover.
    pub async fn recover(self: &Arc<Self>, pending: Vec<CommandRecord>) {
        for rec in pending {
            let id = rec.id.clone();
            match rec.state {
                State::Received | State::Verified | State::Planned => {
                    self.audit_recovery(
                        &rec,
                        "re-verifying: nothing was applied before the restart",
                    );
                    let mut fresh = rec.clone();
                    fresh.id = format!("sha256:{}", rec.envelope_sha256);
                    fresh.actions.clear();
                    {
                        let mut inner = self.lock_inner();
                        inner.records.remove(&id);
                        inner.records.insert(fresh.id.clone(), fresh.clone());
                    }
                    let _ = self.process(fresh, None, None).await;
                }
                State::Journaled | State::Sampled => {
                    self.audit_recovery(&rec, "finishing: applying the journaled intent");
                    let lock = self.apply_lock.clone().lock_owned().await;
                    self.clone().execute(rec, lock).await;
                }
                State::Applied | State::Baking => {
                    self.audit_recovery(&rec, "finishing: judging the guard after the restart");
                    let served = rec
                        .timeline
                        .iter()
                        .rev()
                        .find(|t| t.state == State::Applied)
                        .map(|t| t.at.until(now()))
                        .unwrap_or_default();
                    self.bake_and_settle(rec, served).await;
                }
                // In force with a hold: the timer did not survive the restart.
                State::Kept if rec.hold_until.is_some() => {
                    self.audit_recovery(&rec, "holding: re-armed the hold timer");
                    self.arm_hold(id);
                }
                _ => {}
            }
        }
    }

    /// What a crash left unsettled, oldest first.
    pub fn unsettled(&self) -> Vec<CommandRecord> {
        let mut pending: Vec<CommandRecord> = self
            .lock_inner()
            .records
            .values()
            .filter(|r| !r.is_terminal())
            .cloned()
            .collect();
        pending.sort_by_key(|r| r.received_at);
        pending
    }

    fn audit_recovery(&self, rec: &CommandRecord, what: &str) {
        tracing::warn!(command = %rec.id, state = rec.state.as_str(), "recovering: {what}");
        let mut inner = self.lock_inner();
        let command = (!rec.id.starts_with("sha256:")).then_some(rec.id.as_str());
        let _ = inner.audit.append(
            "recovered",
            command,
            Some(&rec.envelope_sha256),
            json!({"found": rec.state.as_str(), "action": what}),
            true,
        );
    }

    /// Compares every hotfix in force on `resource` with what the resource
    /// holds now. A difference is drift: recorded in the audit log and the
    /// metrics, and re-asserted unless the resource only reports.
    pub async fn check_drift(&self, resource: &str) {
        let Some(res) = self.resources.get(resource) else {
            return;
        };
        // Serialises with apply and revert: our own writes are never drift.
        let _lock = self.apply_lock.lock().await;
        for mut rec in self.active() {
            let mut changed = false;
            for i in 0..rec.actions.len() {
                let a = &rec.actions[i];
                if a.resource != resource || !a.applied || a.reverted || !a.reversible {
                    continue;
                }
                let spec = spec_of(a);
                let Some(expected) = a.after.clone() else {
                    continue;
                };
                // A half-written file is not a verdict; the next event is.
                let Ok(found) = res.provider.snapshot(&spec).await else {
                    continue;
                };
                if still_holds(&found, &expected) {
                    continue;
                }
                let reassert = res.on_drift == crate::config::OnDrift::Reassert;
                // Report-only: the same drift is reported once, not on every touch.
                if !reassert
                    && rec
                        .drifts
                        .last()
                        .is_some_and(|d| d.resource == resource && d.found == found)
                {
                    continue;
                }
                self.metrics.count_drift(resource);
                tracing::warn!(command = %rec.id, resource, "drift: the resource no longer holds the hotfix");
                let outcome = if reassert {
                    match res.provider.apply(&spec).await {
                        Ok(after) => {
                            rec.actions[i].after = Some(after);
                            "reasserted".to_string()
                        }
                        Err(e) => format!("reassert failed: {e}"),
                    }
                } else {
                    "reported".to_string()
                };
                let event = crate::record::DriftEvent {
                    at: now(),
                    resource: resource.to_string(),
                    expected,
                    found,
                    outcome: outcome.clone(),
                };
                rec.drifts.push(event.clone());
                if rec.drifts.len() > crate::record::MAX_DRIFT_EVENTS {
                    rec.drifts.remove(0);
                }
                let mut inner = self.lock_inner();
                let _ = inner.audit.append(
                    "drifted",
                    Some(&rec.id),
                    Some(&rec.envelope_sha256),
                    serde_json::to_value(&event).unwrap_or(Value::Null),
                    true,
                );
                changed = true;
            }
            if changed {
                let mut inner = self.lock_inner();
                if let Err(e) = inner.journal.append(&rec, true) {
                    tracing::error!(command = %rec.id, error = %e, "cannot write the journal");
                }
                inner.records.insert(rec.id.clone(), rec.clone());
                drop(inner);
                self.changed.send_modify(|n| *n += 1);
            }
        }
    }

    /// Forgets settled records whose ids no longer need replay protection.
    pub fn prune(&self) {
        let cutoff = now();
        self.lock_inner().records.retain(|_, r| {
            !r.is_terminal()
                || r.replay_until.is_some_and(|t| t >= cutoff)
                || r.received_at.plus(Duration::from_secs(3600)) >= cutoff
        });
    }
}

/// Whether a fresh snapshot still shows what apply left. The state apply
/// returns may carry diagnostics a snapshot cannot know (an AWS call's
/// tries, an invalidation id), so only the fields the snapshot reads count.
fn still_holds(found: &Value, expected: &Value) -> bool {
    match (found, expected) {
        (Value::Object(f), Value::Object(e)) => f.iter().all(|(k, v)| e.get(k) == Some(v)),
        _ => found == expected,
    }
}

fn spec_of(a: &ActionRecord) -> tourniquet_providers::ActionSpec {
    tourniquet_providers::ActionSpec {
        op: a.op.clone(),
        params: a.params.clone(),
    }
}

enum PlanError {
    Rejected(Rejection),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::still_holds;
    use serde_json::json;

    #[test]
    fn diagnostics_in_the_applied_state_are_not_drift() {
        let after =
            json!({"max": 4, "desired": 4, "tries": {"autoscaling:UpdateAutoScalingGroup": 2}});
        assert!(still_holds(&json!({"max": 4, "desired": 4}), &after));
        assert!(!still_holds(&json!({"max": 10, "desired": 4}), &after));
        assert!(!still_holds(
            &json!({"max": 4, "desired": 4, "min": 1}),
            &after
        ));
        assert!(still_holds(&json!("x"), &json!("x")));
    }
}
