//! The lifecycle against a fake provider and tokio's paused clock: the
//! invariants of "one command at a time per resource", storage that fails
//! closed, and a property test over random interleavings with crashes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use serde_json::{json, Value};
use tourniquet_providers::{ActionSpec, Provider, ProviderError, State as PState};

use super::clock::{Clock, TokioClock};
use super::store::{Store, StoreLimits};
use super::{Identity, Lifecycle, Resource, Submission};
use crate::command::envelope::{Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use crate::command::payload::Timestamp;
use crate::command::rejection::Reason;
use crate::lifecycle::record::State;
use crate::telemetry::Probes;
use crate::trust::keys::{self, Signer};
use crate::trust::policy::Policy;

/// Flags in memory: `flag.set {flag, variant}`. The variant `panic` makes
/// apply panic; a probe reads 1.0 while any flag is `bad`.
#[derive(Clone, Default)]
struct FakeFlags {
    values: Arc<Mutex<HashMap<String, String>>>,
    applies: Arc<AtomicUsize>,
}

impl FakeFlags {
    fn with(flags: &[&str]) -> FakeFlags {
        let f = FakeFlags::default();
        for name in flags {
            f.set(name, "on");
        }
        f
    }
    fn get(&self, flag: &str) -> String {
        self.values.lock().unwrap()[flag].clone()
    }
    fn set(&self, flag: &str, v: &str) {
        self.values.lock().unwrap().insert(flag.into(), v.into());
    }
    fn any_bad(&self) -> bool {
        self.values.lock().unwrap().values().any(|v| v == "bad")
    }
}

fn param<'a>(a: &'a ActionSpec, k: &str) -> Result<&'a str, ProviderError> {
    a.params
        .get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::Invalid(format!("missing {k}")))
}

#[async_trait]
impl Provider for FakeFlags {
    fn kind(&self) -> &'static str {
        "fake-flags"
    }
    fn validate(&self, a: &ActionSpec) -> Result<(), ProviderError> {
        if a.op != "flag.set" {
            return Err(ProviderError::Invalid(format!("unknown op {}", a.op)));
        }
        param(a, "flag")?;
        param(a, "variant")?;
        Ok(())
    }
    fn state_key(&self, a: &ActionSpec) -> String {
        format!("flag:{}", param(a, "flag").unwrap_or_default())
    }
    async fn snapshot(&self, a: &ActionSpec) -> Result<PState, ProviderError> {
        let flag = param(a, "flag")?;
        let v = self.values.lock().unwrap().get(flag).cloned();
        v.map(|v| json!({ "variant": v }))
            .ok_or_else(|| ProviderError::Invalid(format!("no flag {flag}")))
    }
    fn plan(&self, a: &ActionSpec, _before: &PState) -> Result<PState, ProviderError> {
        Ok(json!({ "variant": param(a, "variant")? }))
    }
    async fn apply(&self, a: &ActionSpec) -> Result<PState, ProviderError> {
        let (flag, v) = (param(a, "flag")?, param(a, "variant")?);
        if v == "panic" {
            panic!("the fake provider was asked to panic");
        }
        self.applies.fetch_add(1, Ordering::SeqCst);
        self.set(flag, v);
        Ok(json!({ "variant": v }))
    }
    async fn revert(&self, a: &ActionSpec, before: &PState) -> Result<PState, ProviderError> {
        let flag = param(a, "flag")?;
        let v = before["variant"].as_str().unwrap_or("on");
        self.set(flag, v);
        Ok(json!({ "variant": v }))
    }
    fn reversible(&self, _op: &str) -> bool {
        true
    }
}

/// An agent over a state dir, a fake provider and a clock.
struct Rig {
    dir: tempfile::TempDir,
    flags: FakeFlags,
    operator: Signer,
    policy: String,
}

impl Rig {
    fn new(flag_names: &[&str]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("operator");
        let public = keys::generate_keypair(&key, "op@test").unwrap();
        let operator = Signer::load(&key).unwrap();
        let policy = format!(
            "version = 1\nmax_ttl = \"1h\"\n[keys.op]\npublic_key = \"{}\"\nroles = [\"sre\"]\n[[rules]]\nops = [\"*\"]\nroles = [\"sre\"]\n",
            public.to_openssh().unwrap()
        );
        Rig {
            dir,
            flags: FakeFlags::with(flag_names),
            operator,
            policy,
        }
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    fn agent(&self, clock: Arc<dyn Clock>) -> Arc<Lifecycle> {
        let agent_key = self.state().join("agent_ed25519");
        if !agent_key.exists() {
            keys::generate_keypair(&agent_key, "agent@test").unwrap();
        }
        let (store, _) = Store::open(self.state(), StoreLimits::default(), clock.now()).unwrap();
        let mut resources = BTreeMap::new();
        resources.insert(
            "flags".to_string(),
            Resource {
                provider: Box::new(self.flags.clone()),
                default_guard: None,
                on_drift: crate::config::OnDrift::Reassert,
            },
        );
        let probe: crate::telemetry::ProbeConfig =
            toml::from_str("kind = \"http\"\nurl = \"http://127.0.0.1:9/\"").unwrap();
        let probes = Probes::new(BTreeMap::from([("p".to_string(), probe)]));
        let flags = self.flags.clone();
        probes.set_fake(Arc::new(move |_| {
            Some(if flags.any_bad() { 1.0 } else { 0.0 })
        }));
        Lifecycle::new(
            Identity {
                id: "agent-1".into(),
                labels: BTreeMap::new(),
                key: Signer::load(&agent_key).unwrap(),
            },
            Policy::from_toml(&self.policy, "policy.toml").unwrap(),
            "sha".into(),
            resources,
            probes,
            store,
            clock,
        )
    }

    fn envelope(&self, clock: &dyn Clock, actions: Value, extra: Value) -> Vec<u8> {
        let now = clock.now();
        let mut p = json!({
            "id": ulid::Ulid::new().to_string(),
            "issuer": "op@test",
            "issued_at": now.to_string(),
            "expires": now.plus(Duration::from_secs(600)).to_string(),
            "reason": "INC-1: test",
            "target": {},
            "actions": actions,
        });
        if let (Some(o), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        let bytes = serde_json::to_vec(&p).unwrap();
        let mut env = Envelope::new(COMMAND_PAYLOAD_TYPE, &bytes);
        let sig = self
            .operator
            .sign(
                COMMAND_NAMESPACE,
                &crate::command::envelope::pae(COMMAND_PAYLOAD_TYPE, &bytes),
            )
            .unwrap();
        env.add_signature(&sig).unwrap();
        serde_json::to_vec(&env).unwrap()
    }

    fn set(&self, clock: &dyn Clock, flag: &str, variant: &str, extra: Value) -> Vec<u8> {
        self.envelope(
            clock,
            json!([{"resource": "flags", "op": "flag.set", "flag": flag, "variant": variant}]),
            extra,
        )
    }

    fn revert(&self, clock: &dyn Clock, id: &str) -> Vec<u8> {
        self.envelope(clock, json!([{"op": "revert", "command": id}]), json!({}))
    }
}

fn accepted(s: &Submission) -> Option<String> {
    match s {
        Submission::Accepted { id, .. } => Some(id.clone()),
        Submission::Rejected { .. } => None,
    }
}

/// Lets every task run until no record is between received and settled.
async fn quiesce(lc: &Lifecycle) {
    for _ in 0..10_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if lc.store.count_live(|r| !r.is_settled()) == 0 {
            // One more round for tasks that were about to start.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if lc.store.count_live(|r| !r.is_settled()) == 0 {
                return;
            }
        }
    }
    panic!("commands never settled: {:?}", lc.store.live());
}

/// At every quiet point: each flag holds the after-state of the one
/// command in force on it, or its original value when none is.
fn assert_invariants(lc: &Lifecycle, flags: &FakeFlags, original: &str) {
    let names: Vec<String> = flags.values.lock().unwrap().keys().cloned().collect();
    let active = lc.active();
    for name in names {
        let holders: Vec<_> = active
            .iter()
            .flat_map(|r| r.actions.iter().map(move |a| (r, a)))
            .filter(|(_, a)| a.applied && !a.reverted && a.params["flag"] == name.as_str())
            .collect();
        assert!(
            holders.len() <= 1,
            "{name}: {} commands in force at once: {:?}",
            holders.len(),
            holders.iter().map(|(r, _)| r.id).collect::<Vec<_>>()
        );
        let expected = match holders.first() {
            Some((_, a)) => a.after.as_ref().unwrap()["variant"]
                .as_str()
                .unwrap()
                .to_string(),
            None => original.to_string(),
        };
        assert_eq!(
            flags.get(&name),
            expected,
            "flag {name}; in force: {holders:?}"
        );
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn concurrent_holds_on_one_flag_leave_it_at_its_original_value() {
    let rt = paused_runtime();
    let rig = Rig::new(&["f"]);
    rt.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Timestamp::now()));
        let lc = rig.agent(clock.clone());
        for round in 0..3 {
            let mut tasks = Vec::new();
            for i in 0..20 {
                let guard = if i % 2 == 0 {
                    json!({"hold": "2s", "guard": {"probes": ["p"], "bake": "1s", "interval": "200ms"}})
                } else {
                    json!({"hold": "2s"})
                };
                let env = rig.set(&*clock, "f", if i % 3 == 0 { "on" } else { "off" }, guard);
                let lc = lc.clone();
                tasks.push(tokio::spawn(async move { lc.submit(&env, "test").await }));
            }
            for t in tasks {
                assert!(accepted(&t.await.unwrap()).is_some(), "round {round}");
            }
            quiesce(&lc).await;
            assert_invariants(&lc, &rig.flags, "on");
            tokio::time::sleep(Duration::from_secs(5)).await;
            quiesce(&lc).await;
            assert!(lc.active().is_empty(), "round {round}: {:?}", lc.active());
            assert_eq!(rig.flags.get("f"), "on", "round {round}");
        }
        assert_eq!(lc.metrics.drift_total(), 0);
    });
}

#[test]
fn unsigned_junk_costs_no_journal_and_no_receipt() {
    let rt = paused_runtime();
    let rig = Rig::new(&["f"]);
    rt.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Timestamp::now()));
        let lc = rig.agent(clock.clone());
        let journal = rig.state().join("journal.jsonl");
        let before = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
        let mut unsigned: Value =
            serde_json::from_slice(&rig.set(&*clock, "f", "off", json!({}))).unwrap();
        unsigned["signatures"] = json!([]);
        let unsigned = serde_json::to_vec(&unsigned).unwrap();
        for i in 0..500u32 {
            let junk: Vec<u8> = if i % 2 == 0 {
                unsigned.clone()
            } else {
                format!("{{\"not\": \"an envelope {i}\"}}").into_bytes()
            };
            match lc.submit(&junk, "test").await {
                Submission::Rejected { rejection, receipt } => {
                    assert!(receipt.is_none());
                    assert!(matches!(
                        rejection.reason,
                        Reason::BadSignature | Reason::BadEnvelope
                    ));
                }
                other => panic!("{other:?}"),
            }
        }
        let after = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(before, after, "junk reached the journal");
        assert!(lc.store.stats().recent == 0 && lc.store.stats().live == 0);
        let audit = std::fs::read_to_string(rig.state().join("audit.jsonl")).unwrap();
        let entries = audit
            .lines()
            .filter(|l| l.contains("rejected_unverified"))
            .count();
        assert!(
            entries <= 10,
            "{entries} audit entries for 500 junk bodies in no time"
        );
        lc.flush_unverified_summary();
        let audit = std::fs::read_to_string(rig.state().join("audit.jsonl")).unwrap();
        assert!(audit.contains("rejected_unverified_summary"));
    });
}

#[test]
fn a_command_that_cannot_be_journaled_changes_nothing() {
    let rt = paused_runtime();
    let rig = Rig::new(&["f"]);
    rt.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Timestamp::now()));
        let lc = rig.agent(clock.clone());
        lc.store.fail_writes(true);
        let env = rig.set(&*clock, "f", "off", json!({}));
        match lc.submit(&env, "test").await {
            Submission::Rejected { rejection, .. } => {
                assert_eq!(rejection.reason, Reason::StorageUnavailable)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rig.flags.get("f"), "on");
        assert!(lc.storage_health().is_err());
        lc.store.fail_writes(false);
        lc.heal_storage().await;
        assert!(lc.storage_health().is_ok());
        // The refused command was never recorded, so it may be sent again.
        assert!(accepted(&lc.submit(&env, "test").await).is_some());
        quiesce(&lc).await;
        assert_eq!(rig.flags.get("f"), "off");
    });
}

#[test]
fn a_settle_that_cannot_be_written_undoes_the_change() {
    let rt = paused_runtime();
    let rig = Rig::new(&["f"]);
    rt.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Timestamp::now()));
        let mut lc = rig.agent(clock.clone());
        Arc::get_mut(&mut lc).unwrap().fault_storage_after = Some(State::Applied);
        let env = rig.set(&*clock, "f", "off", json!({"hold": "1h"}));
        let id = accepted(&lc.submit(&env, "test").await).unwrap();
        quiesce(&lc).await;
        let rec = lc.record(&id).unwrap();
        assert_eq!(rec.state, State::Failed, "{rec:?}");
        assert!(rec.message.unwrap().contains("was reverted"));
        assert_eq!(rig.flags.get("f"), "on");
        // Once the disk works again, the failure is recorded.
        lc.store.fail_writes(false);
        lc.heal_storage().await;
        assert!(lc
            .read_receipt(&lc.record(&id).unwrap().receipts[0])
            .is_some());
    });
}

#[test]
fn a_panicking_provider_ends_the_command_failed_with_a_receipt() {
    let rt = paused_runtime();
    let rig = Rig::new(&["f"]);
    rt.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Timestamp::now()));
        let lc = rig.agent(clock.clone());
        let id = accepted(
            &lc.submit(&rig.set(&*clock, "f", "panic", json!({})), "test")
                .await,
        )
        .unwrap();
        quiesce(&lc).await;
        let rec = lc.record(&id).unwrap();
        assert_eq!(rec.state, State::Failed);
        assert!(!rec.receipts.is_empty());
        // The agent still works.
        let id = accepted(
            &lc.submit(&rig.set(&*clock, "f", "off", json!({})), "test")
                .await,
        )
        .unwrap();
        quiesce(&lc).await;
        assert_eq!(lc.record(&id).unwrap().state, State::Kept);
    });
}

#[test]
fn memory_and_journal_stay_bounded_over_many_commands() {
    let rt = paused_runtime();
    let rig = Rig::new(&["f"]);
    rt.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Timestamp::now()));
        let lc = rig.agent(clock.clone());
        let mut first = None;
        for i in 0..600 {
            let env = rig.set(
                &*clock,
                "f",
                if i % 2 == 0 { "off" } else { "on" },
                json!({}),
            );
            let id = accepted(&lc.submit(&env, "test").await).unwrap();
            first.get_or_insert(id);
            quiesce(&lc).await;
        }
        let stats = lc.store.stats();
        assert!(stats.live <= 1, "{stats:?}");
        assert!(stats.recent <= super::store::RECENT_RECORDS, "{stats:?}");
        assert!(stats.journal_bytes < 4 * 1024 * 1024, "{stats:?}");
        // The first command left memory, and is still found on disk.
        let first = first.unwrap();
        assert!(lc.record(&first).is_none());
        let listing: Vec<_> = std::fs::read_dir(rig.state().join("receipts"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let archived = lc
            .archived_receipt(&first)
            .await
            .unwrap_or_else(|| panic!("{first} is not archived: {listing:?}"));
        assert_eq!(
            archived.envelope.payload_type,
            crate::command::envelope::RECEIPT_PAYLOAD_TYPE
        );
        assert_eq!(archived.receipt.command_id.as_deref(), Some(first.as_str()));
    });
}

#[derive(Debug, Clone)]
enum Op {
    Set {
        flag: usize,
        variant: usize,
        hold: Option<u64>,
        guarded: bool,
    },
    Pair {
        flag: usize,
    },
    Revert {
        which: usize,
    },
    Advance {
        secs: u64,
    },
    Crash,
}

const FLAGS: [&str; 2] = ["a", "b"];
const VARIANTS: [&str; 3] = ["on", "off", "bad"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..3usize, prop::option::of(1..6u64), any::<bool>()).prop_map(
            |(flag, variant, hold, guarded)| Op::Set { flag, variant, hold, guarded }
        ),
        1 => (0..2usize).prop_map(|flag| Op::Pair { flag }),
        1 => (0..8usize).prop_map(|which| Op::Revert { which }),
        2 => (1..8u64).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Crash),
    ]
}

fn run_ops(ops: Vec<Op>) {
    let rig = Rig::new(&FLAGS);
    let mut rt = paused_runtime();
    let mut wall = Timestamp::now();
    let mut clock: Arc<dyn Clock> = rt.block_on(async { Arc::new(TokioClock::starting_at(wall)) });
    let mut lc = rt.block_on(async { rig.agent(clock.clone()) });
    let mut sent: Vec<String> = Vec::new();
    for op in ops {
        match op {
            Op::Crash => {
                wall = clock.now();
                drop(lc);
                rt.shutdown_background();
                rt = paused_runtime();
                clock = rt.block_on(async { Arc::new(TokioClock::starting_at(wall)) });
                lc = rt.block_on(async {
                    let lc = rig.agent(clock.clone());
                    let pending = lc.unsettled();
                    lc.recover(pending).await;
                    lc
                });
            }
            op => rt.block_on(async {
                match op {
                    Op::Set {
                        flag,
                        variant,
                        hold,
                        guarded,
                    } => {
                        let mut extra = json!({});
                        if let Some(h) = hold {
                            extra["hold"] = json!(format!("{h}s"));
                        }
                        if guarded {
                            extra["guard"] =
                                json!({"probes": ["p"], "bake": "1s", "interval": "300ms"});
                        }
                        let env = rig.set(&*clock, FLAGS[flag], VARIANTS[variant], extra);
                        if let Some(id) = accepted(&lc.submit(&env, "test").await) {
                            sent.push(id);
                        }
                    }
                    Op::Pair { flag } => {
                        let a = rig.set(
                            &*clock,
                            FLAGS[flag],
                            "off",
                            json!({"hold": "3s", "guard": {"probes": ["p"], "bake": "1s"}}),
                        );
                        let b = rig.set(&*clock, FLAGS[flag], "bad", json!({"hold": "2s"}));
                        let (x, y) = tokio::join!(lc.submit(&a, "test"), lc.submit(&b, "test"));
                        sent.extend(accepted(&x));
                        sent.extend(accepted(&y));
                    }
                    Op::Revert { which } => {
                        if let Some(id) = sent.get(which % sent.len().max(1)) {
                            let env = rig.revert(&*clock, id);
                            let _ = lc.submit(&env, "test").await;
                        }
                    }
                    Op::Advance { secs } => tokio::time::sleep(Duration::from_secs(secs)).await,
                    Op::Crash => {}
                }
            }),
        }
        rt.block_on(quiesce(&lc));
        assert_invariants(&lc, &rig.flags, "on");
    }
    // Every hold runs out: nothing is in force, everything is original.
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        quiesce(&lc).await;
    });
    assert!(
        lc.active().iter().all(|r| r.hold_until.is_none()),
        "{:?}",
        lc.active()
    );
    if lc.active().is_empty() {
        for f in FLAGS {
            assert_eq!(rig.flags.get(f), "on", "flag {f} with nothing in force");
        }
    }
    assert_invariants(&lc, &rig.flags, "on");
    assert_eq!(lc.metrics.drift_total(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 200,
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_keep_the_newest_command_in_force(ops in prop::collection::vec(op(), 1..14)) {
        run_ops(ops);
    }
}
