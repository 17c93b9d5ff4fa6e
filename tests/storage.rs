//! Storage that fails, end to end: Tourniquet fails closed.
//!
//! A hotfix agent that applies a change it cannot record leaves operators
//! with a change nobody can see, revert or prove. So:
//!
//! - a full or read-only state dir refuses commands with
//!   `storage_unavailable`, changes nothing, reports itself unhealthy on
//!   `/healthz`, and recovers by itself once the dir is writable again;
//! - a change whose settle cannot be written after its apply is reverted,
//!   and its record says so;
//! - an audit log whose last entries were cut is caught by
//!   `tourniquet audit verify`, which says how many are missing;
//! - a torn last line (a write cut short) is repaired at start and recorded.
//!
//! The full and read-only cases mount a real tmpfs as the state dir, so the
//! agent meets the same `ENOSPC` and `EROFS` a real disk gives. Mounting
//! needs root; without it these tests fail and say so.

use std::time::Duration;

use serde_json::{json, Value};
use tourniquet_e2e::store::{
    all_audit_entries, files_open_for_writing, fill, healthz, hotfix_ids, Tmpfs,
};
use tourniquet_e2e::*;

/// The debug-build hook: once a command reaches this state, every later
/// state-dir write fails as if the disk were full.
const FAULT_STORAGE_ENV: &str = "TOURNIQUET_FAULT_STORAGE_AFTER";

fn flip(env: &Env, variant: &str) -> Vec<u8> {
    sign(&payload(set_new_flow(variant)), &[env.key("alice")])
}

/// While the state dir cannot be written: `/healthz` answers 503 with the
/// reason, and a valid flip is refused with `storage_unavailable` and
/// changes nothing.
///
/// The agent must notice on its own: `/healthz` is 503 *while* the dir
/// cannot be written, not only after a command failed. Waiting for that
/// before sending the flip also keeps the refusal deterministic: on a full
/// filesystem an append can still fit in the unused tail of a file's last
/// page, so whether a first write fails would otherwise depend on sizes.
fn assert_unhealthy_and_refused(env: &Env, agent: &Agent, what: &str) {
    let before = env.flags_bytes();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let health = loop {
        let (s, v) = healthz(agent);
        if s == 503 {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: /healthz still answers {s} {v} 30s after the state dir became unwritable; \
             the agent must notice by itself"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(health["status"], "unavailable", "{what}: {health}");
    assert_eq!(health["reason"], "storage_unavailable", "{what}: {health}");
    assert!(
        health["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: /healthz says why: {health}"
    );

    let (status, body) = post_command(agent, &flip(env, "off"));
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("storage_unavailable")),
        "{what}: a valid command must be refused: {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: the refusal says why: {body}"
    );
    assert_eq!(
        env.flags_bytes(),
        before,
        "{what}: the flags file changed although the command was refused"
    );
    assert_eq!(
        hotfix_ids(agent),
        Some(Vec::new()),
        "{what}: nothing may be in force"
    );
    let (status, health) = healthz(agent);
    assert_eq!(status, 503, "{what}: still unavailable: {health}");
}

/// Once the dir is writable again: `/healthz` 200 by itself, and a flip
/// goes through.
fn assert_recovers(env: &Env, agent: &Agent, what: &str) {
    let health = wait_for(
        &format!("{what}: /healthz to recover to 200 by itself"),
        Duration::from_secs(30),
        || {
            let (s, v) = healthz(agent);
            (s == 200).then_some(v)
        },
    );
    assert_eq!(health["status"], "ok", "{what}: {health}");
    let (status, body) = post_command(agent, &flip(env, "off"));
    assert_eq!(status, 202, "{what}: a flip after recovery: {body}");
    let id = body["id"].as_str().expect("id");
    let rec = wait_settled(agent, id);
    assert_eq!(rec["state"], "kept", "{what}: {rec:#}");
    assert_eq!(env.variant("new_flow"), "off", "{what}: the flip applied");
    assert!(rec["receipt"].is_object(), "{what}: a receipt: {rec:#}");
}

#[test]
fn a_full_state_dir_refuses_commands_and_recovers_by_itself() {
    let env = Env::new();
    let tmpfs = Tmpfs::mount(&env.path("state"), "1m");
    let agent = env.start();
    let filler = fill(tmpfs.path(), "filler");
    assert_unhealthy_and_refused(&env, &agent, "full state dir");
    std::fs::remove_file(&filler).expect("remove the filler");
    assert_recovers(&env, &agent, "after freeing space");
    drop(agent);
}

/// Linux refuses to remount a filesystem read-only (`EBUSY`) while any
/// process holds a file on it open for writing, so the agent must not keep
/// state files open for writing between writes (its lock can be held
/// through a read-only descriptor). The test retries for 10 s, then fails
/// naming the files the agent holds open.
#[test]
fn a_read_only_state_dir_refuses_commands_and_recovers_by_itself() {
    let env = Env::new();
    let tmpfs = Tmpfs::mount(&env.path("state"), "4m");
    let agent = env.start();
    if let Err(e) = tmpfs.try_remount_ro(Duration::from_secs(10)) {
        let open = files_open_for_writing(agent.child.id(), tmpfs.path());
        panic!(
            "{e}: the kernel refuses to make a filesystem read-only while a process holds a file \
             on it open for writing, and the agent holds these open in its state dir: {open:?}"
        );
    }
    assert_unhealthy_and_refused(&env, &agent, "read-only state dir");
    tmpfs.remount_rw();
    assert_recovers(&env, &agent, "after remounting read-write");
    drop(agent);
}

/// Every string value in a record, except its `state` fields (a timeline
/// entry's state name is not a message).
fn messages(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| messages(x, out)),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "state")
            .for_each(|(_, x)| messages(x, out)),
        _ => {}
    }
}

#[test]
fn a_settle_that_cannot_be_written_after_apply_is_reverted_and_says_so() {
    let env = Env::new();
    let original: Value = serde_json::from_slice(&env.flags_bytes()).expect("flags json");
    let agent = env.start_with(&[(FAULT_STORAGE_ENV, "applied")]);
    let (status, body) = post_command(&agent, &flip(&env, "off"));
    assert_eq!(
        status, 202,
        "the intent is journaled before the fault: {body}"
    );
    let id = body["id"].as_str().expect("id").to_string();
    let rec = wait_for(
        &format!("command {id} to settle"),
        Duration::from_secs(60),
        || {
            let (s, v) = get_json(&agent, &format!("/v1/commands/{id}?wait=10s"));
            (s == 200 && v["settled"] == json!(true)).then_some(v)
        },
    );
    assert_eq!(
        rec["state"], "failed",
        "a change whose settle cannot be written must not stay: {rec:#}"
    );
    let mut texts = Vec::new();
    messages(&rec, &mut texts);
    assert!(
        texts.iter().any(|t| t.to_lowercase().contains("revert")),
        "the record says the change was reverted: {rec:#}"
    );
    let now: Value = serde_json::from_slice(&env.flags_bytes()).expect("flags json");
    assert_eq!(env.variant("new_flow"), "on", "the flag is back");
    assert_eq!(
        now, original,
        "the flags file is back at its original value"
    );
    assert_eq!(hotfix_ids(&agent), Some(Vec::new()), "nothing in force");
}

/// Runs three flips to settle on a fresh agent, then stops it.
fn agent_with_history(env: &Env) {
    let mut agent = env.start();
    for variant in ["off", "on", "off"] {
        let (status, body) = post_command(&agent, &flip(env, variant));
        assert_eq!(status, 202, "{body}");
        wait_settled(&agent, body["id"].as_str().expect("id"));
    }
    agent.stop();
}

fn audit_lines(env: &Env) -> Vec<String> {
    std::fs::read_to_string(env.path("state/audit.jsonl"))
        .expect("state/audit.jsonl")
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn audit_verify_catches_a_cut_tail_and_says_how_much_is_missing() {
    let env = Env::new();
    agent_with_history(&env);
    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(code, 0, "the untouched log verifies: {out}{err}");

    let lines = audit_lines(&env);
    assert!(lines.len() > 6, "enough history to cut: {lines:?}");
    let kept = &lines[..lines.len() - 6];
    std::fs::write(
        env.path("state/audit.jsonl"),
        format!("{}\n", kept.join("\n")),
    )
    .expect("cut the tail");

    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(code, 5, "a cut tail fails verification: {out}{err}");
    assert!(
        format!("{out}{err}").contains("6 entries missing"),
        "says how many entries are missing: {out}{err}"
    );

    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state", "--json"]);
    assert_eq!(code, 5, "{out}{err}");
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}{err}"));
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["missing_entries"], json!(6), "{v}");
}

#[test]
fn a_torn_last_audit_line_is_repaired_at_start_and_recorded() {
    let env = Env::new();
    agent_with_history(&env);
    let last = audit_lines(&env).pop().expect("an audit entry");
    let half = &last.as_bytes()[..last.len() / 2];
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(env.path("state/audit.jsonl"))
            .expect("open audit log");
        f.write_all(half).expect("append half a line");
    }

    // The repair happens at start, before the agent answers.
    let mut agent = env.start();
    let entries = all_audit_entries(&env.path("state"));
    let Some(entry) = entries
        .iter()
        .find(|e| e["event"] == "torn_tail_repaired")
        .cloned()
    else {
        let events: Vec<&Value> = entries.iter().rev().take(5).map(|e| &e["event"]).collect();
        panic!("no torn_tail_repaired audit entry after a start on a torn line; the last events, newest first: {events:?}");
    };
    // The chain continues: a command after the repair is recorded too.
    let (status, body) = post_command(&agent, &flip(&env, "on"));
    assert_eq!(status, 202, "{body}");
    wait_settled(&agent, body["id"].as_str().expect("id"));
    agent.stop();
    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(code, 0, "the repaired chain verifies ({entry}): {out}{err}");
}
