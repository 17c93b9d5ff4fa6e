//! Crash safety: for every lifecycle transition, abort the real agent right
//! after that transition is persisted (the debug-only fault hook
//! `TOURNIQUET_FAULT_AFTER`), restart it, and check that nothing is left
//! half done:
//!
//! - the flags file is the before or the after document, never anything else;
//! - the audit chain verifies;
//! - the command reaches a terminal state with a stored, signed receipt;
//! - a replayed copy of the envelope is refused as `replay`.
//!
//! Also: recovery touches only what a previous run left unsettled, so a
//! clean restart re-processes nothing, and a command that arrives while the
//! agent starts runs exactly once.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use serde_json::{json, Value};
use tourniquet::command::envelope::{sha256_hex, Envelope};
use tourniquet::lifecycle::FAULT_ENV;
use tourniquet_e2e::*;

/// Which command the crash interrupts.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Shape {
    /// `flag.set new_flow off`, guarded by a healthy probe, held for 2s:
    /// received … sampled → applied → baking → kept → reverted.
    GuardedHeld,
    /// `flag.set new_flow off`, guarded by a probe that fails while the flag
    /// is off: … applied → baking → rolled_back.
    Breaching,
}

impl Shape {
    fn final_state(self) -> &'static str {
        match self {
            Shape::GuardedHeld => "reverted",
            Shape::Breaching => "rolled_back",
        }
    }
}

fn before_doc() -> Value {
    serde_json::from_str(FLAGS).expect("harness FLAGS")
}

fn after_doc() -> Value {
    let mut v = before_doc();
    v["flags"]["new_flow"]["defaultVariant"] = json!("off");
    v
}

/// The flags file parses and is exactly the before or the after document.
fn assert_flags_before_or_after(env: &Env, when: &str) -> Value {
    let bytes = env.flags_bytes();
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{when}: flags file does not parse ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    let variant = env.variant("new_flow");
    assert!(
        variant == "on" || variant == "off",
        "{when}: new_flow is {variant:?}"
    );
    assert!(
        doc == before_doc() || doc == after_doc(),
        "{when}: flags file is neither the before nor the after state: {doc}"
    );
    doc
}

/// Entries of the audit log that concern this envelope (by command id or,
/// before the id is trusted, by envelope hash).
fn entries_for(env: &Env, id: &str, sha: &str) -> Vec<Value> {
    env.audit_entries()
        .into_iter()
        .filter(|e| e["command"] == id || e["envelope_sha256"] == sha)
        .collect()
}

/// A request to the agent; if it goes unanswered, fails with whether the
/// agent is still running and everything it logged.
fn call(agent: &mut Agent, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let url = format!("{}{path}", agent.url);
    match http_request(method, &url, body) {
        Some((status, bytes)) => (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ),
        None => {
            let exited = agent.child.try_wait().ok().flatten();
            panic!(
                "{method} {path}: no answer (agent exit status: {exited:?})\n{}",
                agent.logs()
            )
        }
    }
}

/// Polls a command until its record satisfies `pred`.
fn wait_record(agent: &mut Agent, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(&format!("command {id}"), Duration::from_secs(60), || {
        let (status, rec) = call(agent, "GET", &format!("/v1/commands/{id}?wait=2s"), b"");
        (status == 200 && pred(&rec)).then_some(rec)
    })
}

/// Aborts the agent right after `transition` is persisted for a command of
/// `shape`, restarts it, and checks the crash left nothing half done.
fn crash_after(transition: &str, shape: Shape) {
    let env = Env::new();
    // Healthy, unless the shape wants the probe to fail while new_flow is off.
    let bad_variant = if shape == Shape::Breaching {
        "off"
    } else {
        "never"
    };
    let svc = FlagAwareService::start(env.path("flags.json"), "new_flow", bad_variant);
    env.write_config(&format!(
        "{}{}",
        env.default_config(),
        svc.probe_config("svc")
    ));

    let mut p = payload(set_new_flow("off"));
    p["guard"] = json!({"probes": ["svc"], "bake": "300ms", "on_breach": "rollback"});
    if shape == Shape::GuardedHeld {
        p["hold"] = json!("2s");
    }
    let id = p["id"].as_str().expect("id").to_string();
    let body = sign(&p, &[env.key("alice")]);
    let sha = sha256_hex(&body);

    // 1. Run until the fault hook aborts the agent.
    let mut agent = env.start_with(&[(FAULT_ENV, transition)]);
    // Transitions up to `journaled` happen before the HTTP answer, so the
    // agent may die with the request in flight: no answer is fine then.
    if let Some((status, resp)) = http_request("POST", &format!("{}/v1/commands", agent.url), &body)
    {
        let resp: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
        assert_eq!(status, 202, "{transition}: POST answered {resp}");
        assert_eq!(resp["id"], id.as_str(), "{transition}: {resp}");
    }
    let exit = agent.wait_exit(Duration::from_secs(60));
    assert_eq!(
        exit.signal(),
        Some(libc::SIGABRT),
        "{transition}: the agent must die by the fault hook's abort, got {exit}\n{}",
        agent.logs()
    );
    let marker = format!("{FAULT_ENV}={transition} reached; aborting");
    wait_for("the fault hook's log line", Duration::from_secs(10), || {
        agent.logs().contains(&marker).then_some(())
    });
    let crash_logs = agent.logs();
    drop(agent);

    // The transition the agent died after was persisted to the audit log.
    let at_crash = entries_for(&env, &id, &sha);
    assert!(
        at_crash.iter().any(|e| e["event"] == transition),
        "{transition}: not in the audit log before the abort: {at_crash:?}\n{crash_logs}"
    );
    let doc = assert_flags_before_or_after(&env, &format!("{transition}: right after the abort"));
    // Nothing is written before `applied`; a rollback or revert is done
    // before it is recorded.
    let expected = match transition {
        "applied" | "baking" | "kept" => after_doc(),
        _ => before_doc(),
    };
    assert_eq!(
        doc, expected,
        "{transition}: flags file right after the abort\n{crash_logs}"
    );
    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(
        code, 0,
        "{transition}: audit chain after the abort: {out}{err}"
    );

    // 2. Restart without the hook; recovery finishes or undoes the command.
    let mut agent = env.start();
    let rec = wait_record(&mut agent, &id, |r| r["terminal"] == true);
    let logs = agent.logs();
    assert_eq!(
        rec["state"],
        shape.final_state(),
        "{transition}: final state\n{rec:#}\n--- before the abort:\n{crash_logs}\n--- after the restart:\n{logs}"
    );

    // The flags file is whole, and back to the before state (reverted or
    // rolled back).
    let doc = assert_flags_before_or_after(&env, &format!("{transition}: after recovery"));
    assert_eq!(
        doc,
        before_doc(),
        "{transition}: a {} command must leave the before state",
        shape.final_state()
    );

    // A receipt for the final state is recorded, stored and signed by the agent.
    let receipts: Vec<&str> = rec["receipts"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(!receipts.is_empty(), "{transition}: no receipts in {rec:#}");
    for name in &receipts {
        assert!(
            tourniquet::lifecycle::store::read_receipt(&env.path("state"), name).is_some(),
            "{transition}: receipt {name} is not stored"
        );
    }
    let last = receipts.last().expect("a receipt");
    assert!(
        last.ends_with(&format!(".{}", shape.final_state())),
        "{transition}: the last receipt {last} is not for {}",
        shape.final_state()
    );
    let (_, identity) = call(&mut agent, "GET", "/v1/identity", b"");
    let receipt_env: Envelope =
        serde_json::from_value(rec["receipt"].clone()).expect("receipt envelope");
    let receipt = tourniquet::lifecycle::receipt::verify_receipt(
        &receipt_env,
        identity["public_key"].as_str().expect("agent key"),
    )
    .unwrap_or_else(|e| panic!("{transition}: receipt does not verify: {e}"));
    assert_eq!(receipt.command_id.as_deref(), Some(id.as_str()));
    assert_eq!(receipt.outcome.as_str(), shape.final_state());
    assert_eq!(receipt.envelope_sha256, sha);

    // 3. A replayed copy is refused and changes nothing.
    let flags_before_replay = env.flags_bytes();
    let (status, resp) = call(&mut agent, "POST", "/v1/commands", &body);
    assert_eq!(
        (status, resp["reason"].as_str()),
        (409, Some("replay")),
        "{transition}: replay answered {resp}"
    );
    assert_eq!(
        env.flags_bytes(),
        flags_before_replay,
        "{transition}: the replay changed the flags file"
    );
    let (_, still) = call(&mut agent, "GET", &format!("/v1/commands/{id}"), b"");
    assert_eq!(
        still["state"],
        shape.final_state(),
        "{transition}: the replay changed the record"
    );

    // The recovery was recorded, naming the state the crash left behind.
    // (After `received` the id is not trusted yet: that entry names the
    // envelope by its hash only.)
    if transition != shape.final_state() {
        let entries = entries_for(&env, &id, &sha);
        assert!(
            entries
                .iter()
                .any(|e| e["event"] == "recovered" && e["detail"]["found"] == transition),
            "{transition}: no `recovered` audit event for the command: {entries:#?}\n{logs}"
        );
    }

    agent.stop();
    let logs = agent.logs();
    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(
        code, 0,
        "{transition}: audit chain after recovery: {out}{err}"
    );

    // Recovery handled only what the crash left unsettled: after a terminal
    // state there is nothing to recover, and the agent never refuses its
    // own command. The one `rejected` entry is the replay sent above.
    let entries = entries_for(&env, &id, &sha);
    if transition == shape.final_state() {
        let recovered: Vec<&Value> = entries
            .iter()
            .filter(|e| e["event"] == "recovered")
            .collect();
        assert!(
            recovered.is_empty(),
            "{transition}: nothing to recover after a terminal state, but: {recovered:#?}\naudit log:\n{:#?}\n--- before the abort:\n{crash_logs}\n--- after the restart:\n{logs}",
            env.audit_entries()
        );
    }
    let rejected: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "rejected")
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "{transition}: recovery rejected the command's own envelope: {rejected:#?}\n{logs}"
    );
    drop(svc);
}

/// Control without a crash: a settled command is not re-processed by a
/// clean restart.
#[test]
fn clean_restart_recovers_nothing() {
    let env = Env::new();
    let body = sign(&payload(set_new_flow("off")), &[env.key("alice")]);
    let sha = sha256_hex(&body);
    let mut agent = env.start();
    let (status, resp) = post_command(&agent, &body);
    assert_eq!(status, 202, "{resp}");
    let id = resp["id"].as_str().expect("id").to_string();
    let rec = wait_record(&mut agent, &id, |r| r["settled"] == true);
    assert_eq!(rec["state"], "kept", "{rec:#}");
    agent.stop();

    let mut agent = env.start();
    let rec = wait_record(&mut agent, &id, |r| r["settled"] == true);
    assert_eq!(rec["state"], "kept", "{rec:#}");
    assert_eq!(env.variant("new_flow"), "off");
    agent.stop();
    let logs = agent.logs();
    let entries = entries_for(&env, &id, &sha);
    let unexpected: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "recovered" || e["event"] == "rejected")
        .collect();
    assert!(
        unexpected.is_empty(),
        "a clean restart re-processed a settled command: {unexpected:#?}\n{logs}"
    );
    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn crash_after_received() {
    crash_after("received", Shape::GuardedHeld);
}

#[test]
fn crash_after_verified() {
    crash_after("verified", Shape::GuardedHeld);
}

#[test]
fn crash_after_planned() {
    crash_after("planned", Shape::GuardedHeld);
}

#[test]
fn crash_after_journaled() {
    crash_after("journaled", Shape::GuardedHeld);
}

#[test]
fn crash_after_sampled() {
    crash_after("sampled", Shape::GuardedHeld);
}

#[test]
fn crash_after_applied() {
    crash_after("applied", Shape::GuardedHeld);
}

#[test]
fn crash_after_baking() {
    crash_after("baking", Shape::GuardedHeld);
}

#[test]
fn crash_after_kept() {
    crash_after("kept", Shape::GuardedHeld);
}

#[test]
fn crash_after_reverted() {
    crash_after("reverted", Shape::GuardedHeld);
}

#[test]
fn crash_after_rolled_back() {
    crash_after("rolled_back", Shape::Breaching);
}

// The rollback path interrupted before the verdict: recovery re-bakes,
// sees the breach, and rolls back.

#[test]
fn crash_after_sampled_then_breach() {
    crash_after("sampled", Shape::Breaching);
}

#[test]
fn crash_after_applied_then_breach() {
    crash_after("applied", Shape::Breaching);
}

#[test]
fn crash_after_baking_then_breach() {
    crash_after("baking", Shape::Breaching);
}

/// An agent process started by hand; killed on drop.
struct Raw(std::process::Child);

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the agent without waiting for readiness and POSTs `body` the moment
/// it prints its address, so the command is in flight while start-up runs.
/// Returns the process, its URL and the POST's status.
fn start_and_post_at_once(env: &Env, body: &[u8]) -> (Raw, String, Option<u16>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin())
        .args(["agent", "--config", "agent.toml"])
        .current_dir(env.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .env_remove(FAULT_ENV)
        .spawn()
        .expect("spawn agent");
    let stdout = child.stdout.take().expect("stdout");
    let child = Raw(child);
    let url = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("listens:")
                .map(|u| u.trim().to_string())
        })
        .expect("the agent prints where it listens");
    let status = http_request("POST", &format!("{url}/v1/commands"), body).map(|(s, _)| s);
    (child, url, status)
}

/// Recovery is for what a previous run left unsettled: a command that
/// arrives while the agent is starting must run once, not be "recovered"
/// (re-verified or re-executed) alongside its live run.
#[test]
fn a_command_sent_during_startup_runs_once() {
    for round in 0..20 {
        let env = Env::new();
        let p = payload(set_new_flow("off"));
        let id = p["id"].as_str().expect("id").to_string();
        let body = sign(&p, &[env.key("alice")]);
        let (agent, url, status) = start_and_post_at_once(&env, &body);
        let rec = wait_for(&format!("command {id}"), Duration::from_secs(60), || {
            let (s, b) = http_request("GET", &format!("{url}/v1/commands/{id}?wait=2s"), b"")?;
            let v: Value = serde_json::from_slice(&b).ok()?;
            (s == 200 && v["settled"] == true).then_some(v)
        });
        drop(agent);
        let entries = env.audit_entries();
        let mine: Vec<&Value> = entries
            .iter()
            .filter(|e| {
                e["command"] == id.as_str() || e["envelope_sha256"] == sha256_hex(&body).as_str()
            })
            .collect();
        let count = |ev: &str| mine.iter().filter(|e| e["event"] == ev).count();
        assert!(
            status == Some(202) && count("recovered") == 0 && count("applied") == 1 && count("rejected") == 0,
            "round {round}: POST answered {status:?}; the command must run once and not be recovered: {mine:#?}\n{rec:#}"
        );
    }
}
