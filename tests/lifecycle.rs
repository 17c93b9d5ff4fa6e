//! The lifecycle end to end: holds that run out (across a restart), guards
//! that keep or roll back, revert commands, dry runs, live policy reloads
//! across atomic renames, the inbox, superseding, and the agent's own
//! endpoints.

use std::time::Duration;

use serde_json::{json, Value};
use tourniquet::command::envelope::sha256_hex;
use tourniquet_e2e::*;

fn flag_set_cli(env: &Env, agent: &Agent, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "flag",
        "set",
        "checkout-flags",
        "new_flow",
        "off",
        "--reason",
        "INC-1: checkout 500s",
        "--key",
        "alice_ed25519",
        "--send",
        &agent.url,
    ];
    args.extend_from_slice(extra);
    env.cli(&args)
}

fn id_from_json(stdout: &str) -> String {
    let v: Value =
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    v["id"].as_str().expect("id").to_string()
}

#[test]
fn the_hold_runs_out_and_the_agent_reverts_even_after_a_restart() {
    let env = Env::new();
    let mut agent = env.start();
    let (code, out, err) = flag_set_cli(&env, &agent, &["--hold", "2s", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = id_from_json(&out);
    let rec: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["state"], "kept");
    assert!(rec["hold_until"].is_string());
    assert_eq!(env.variant("new_flow"), "off");
    assert_eq!(rec["actions"][0]["before"]["defaultVariant"], "on");
    assert_eq!(rec["actions"][0]["after"]["defaultVariant"], "off");

    // Stop the agent before the hold runs out, and start it after.
    agent.stop();
    let hold_until = humantime::parse_rfc3339(rec["hold_until"].as_str().unwrap()).unwrap();
    wait_for(
        "the hold to pass while the agent is down",
        Duration::from_secs(30),
        || (std::time::SystemTime::now() > hold_until).then_some(()),
    );
    assert_eq!(
        env.variant("new_flow"),
        "off",
        "nothing reverts while the agent is down"
    );
    let agent = env.start();
    let rec = wait_state(&agent, &id, |r| r["state"] == "reverted");
    assert_eq!(env.variant("new_flow"), "on");
    let receipts = rec["receipts"].as_array().unwrap();
    assert!(
        receipts
            .iter()
            .any(|r| r.as_str().unwrap().ends_with(".reverted")),
        "{receipts:?}"
    );
    assert!(
        receipts
            .iter()
            .any(|r| r.as_str().unwrap().ends_with(".kept")),
        "{receipts:?}"
    );
    let audit = env.audit_entries();
    assert!(audit
        .iter()
        .any(|e| e["event"] == "recovered" && e["command"] == id.as_str()));
    assert!(audit
        .iter()
        .any(|e| e["event"] == "reverted" && e["command"] == id.as_str()));
    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_hotfix_that_makes_things_worse_is_rolled_back() {
    let env = Env::new();
    let svc = FlagAwareService::start(env.path("flags.json"), "new_flow", "off");
    env.write_config(&format!(
        "{}{}",
        env.default_config(),
        svc.probe_config("svc")
    ));
    let agent = env.start();
    let (code, out, err) = flag_set_cli(
        &env,
        &agent,
        &["--guard", "svc", "--bake", "100ms", "--json"],
    );
    assert_eq!(code, 4, "rolled back exits 4: {out}{err}");
    let rec: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["state"], "rolled_back");
    assert_eq!(env.variant("new_flow"), "on", "the flag is back");
    let t = &rec["telemetry"];
    assert_eq!(t["verdict"], "breach");
    // The probe's value is its error ratio: 0 before, 1 once the flag broke it.
    assert_eq!(t["before"][0]["value"], 0.0);
    assert_eq!(t["after"][0]["value"], 1.0);
    assert_eq!(t["checks"][0]["check"], "max_increase");
    assert_eq!(t["checks"][0]["verdict"], "breach");
    assert_eq!(rec["actions"][0]["reverted"], true);
    let (_, metrics) = http_request("GET", &format!("{}/metrics", agent.url), b"").unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("tourniquet_rollbacks_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_hotfix_that_helps_is_kept_with_before_and_after_numbers() {
    let env = Env::new();
    // The service fails while new_flow is on: turning it off is the fix.
    let svc = FlagAwareService::start(env.path("flags.json"), "new_flow", "on");
    env.write_config(&format!(
        "{}{}",
        env.default_config(),
        svc.probe_config("svc")
    ));
    let agent = env.start();
    let (code, out, err) = flag_set_cli(&env, &agent, &["--guard", "svc", "--bake", "50ms"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("kept"), "{out}");
    assert!(
        out.contains("probe:     svc: before 100.00% (0/3 ok"),
        "{out}"
    );
    assert!(out.contains("after 0.00% (3/3 ok"), "{out}");
    assert!(
        out.contains("max_increase"),
        "the side-by-side check table: {out}"
    );
    assert!(out.contains("on → off"), "{out}");
    assert_eq!(env.variant("new_flow"), "off");
}

#[test]
fn a_revert_command_undoes_an_earlier_one_once() {
    let env = Env::new();
    let agent = env.start();
    let (code, out, err) = flag_set_cli(&env, &agent, &["--hold", "1h", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = id_from_json(&out);
    let (code, out, err) = env.revert_cli(&id, "INC-1 resolved", "bob", &agent.url, &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(env.variant("new_flow"), "on");
    let (_, original) = get_json(&agent, &format!("/v1/commands/{id}"));
    assert_eq!(original["state"], "reverted");
    assert_eq!(original["related"], id_from_json(&out).as_str());
    let (code, _, err) = env.revert_cli(&id, "again", "bob", &agent.url, &[]);
    assert_eq!(code, 2, "reverting twice is rejected: {err}");
    assert!(err.contains("invalid_action"), "{err}");
}

#[test]
fn a_dry_run_plans_and_changes_nothing() {
    let env = Env::new();
    let agent = env.start();
    let before = env.flags_bytes();
    let (code, out, err) = flag_set_cli(&env, &agent, &["--dry-run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let rec: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["state"], "planned");
    assert_eq!(rec["actions"][0]["before"]["defaultVariant"], "on");
    assert_eq!(rec["actions"][0]["planned"]["defaultVariant"], "off");
    assert_eq!(rec["actions"][0]["applied"], false);
    assert_eq!(env.flags_bytes(), before);
}

/// Writes `text` to the policy by temp file + rename, as editors do.
fn rename_policy(env: &Env, text: &str, n: usize) {
    let tmp = env.path(&format!(".policy.toml.{n}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, env.path("policy.toml")).unwrap();
}

fn policy_sha(agent: &Agent) -> String {
    get_json(agent, "/v1/identity").1["policy_sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn policy_edits_are_picked_up_across_five_atomic_renames() {
    let env = Env::new();
    let agent = env.start();
    let without = env.default_policy();
    let with_mallory = format!(
        "{without}\n[keys.mallory]\npublic_key = \"{}\"\nroles = [\"sre\"]\n",
        env.key("mallory").public
    );
    for i in 0..5 {
        let trusted = i % 2 == 0;
        let text = if trusted { &with_mallory } else { &without };
        rename_policy(&env, text, i);
        let want = sha256_hex(text.as_bytes());
        wait_for(
            &format!("policy reload #{}", i + 1),
            Duration::from_secs(10),
            || (policy_sha(&agent) == want).then_some(()),
        );
        let (status, body) = post_command(
            &agent,
            &sign(&payload(set_new_flow("off")), &[env.key("mallory")]),
        );
        if trusted {
            assert_eq!(
                status,
                202,
                "rename #{}: mallory is trusted now: {body}",
                i + 1
            );
            wait_settled(&agent, body["id"].as_str().unwrap());
        } else {
            assert_eq!(
                body["reason"],
                "unknown_signer",
                "rename #{}: {body}",
                i + 1
            );
        }
    }
    // A broken edit keeps the last good policy and says why.
    let last_good = policy_sha(&agent);
    rename_policy(&env, "version = 1\nmax_ttl = \n", 99);
    wait_for(
        "policy_rejected in the audit log",
        Duration::from_secs(10),
        || {
            env.audit_entries()
                .iter()
                .any(|e| e["event"] == "policy_rejected")
                .then_some(())
        },
    );
    assert_eq!(policy_sha(&agent), last_good);
    let (status, _) = post_command(
        &agent,
        &sign(&payload(set_new_flow("on")), &[env.key("alice")]),
    );
    assert_eq!(status, 202, "the last good policy still works");
}

#[test]
fn the_inbox_applies_dropped_envelopes_and_sorts_them() {
    let env = Env::new();
    let agent = env.start();
    let good = sign(&payload(set_new_flow("off")), &[env.key("alice")]);
    std::fs::write(env.path("good.json"), &good).unwrap();
    let (code, out, err) = env.cli(&["send", "good.json", "--to", "dir:inbox"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("inbox/done", Duration::from_secs(10), || {
        std::fs::read_dir(env.path("inbox/done"))
            .ok()?
            .next()
            .map(|_| ())
    });
    let id = serde_json::from_slice::<Value>(
        &tourniquet::command::envelope::decode_base64(
            serde_json::from_slice::<Value>(&good).unwrap()["payload"]
                .as_str()
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_settled(&agent, &id);
    assert_eq!(env.variant("new_flow"), "off");
    // A hostile file goes to rejected/ and changes nothing.
    let before = env.flags_bytes();
    let bad = sign(&payload(set_new_flow("on")), &[env.key("mallory")]);
    std::fs::write(env.path("inbox/.bad.tmp"), &bad).unwrap();
    std::fs::rename(env.path("inbox/.bad.tmp"), env.path("inbox/bad.json")).unwrap();
    wait_for("inbox/rejected", Duration::from_secs(10), || {
        env.path("inbox/rejected/bad.json").exists().then_some(())
    });
    assert_eq!(env.flags_bytes(), before);
    // Signed by a key nobody trusts: no receipt, a note in the audit log.
    assert!(env
        .audit_entries()
        .iter()
        .any(|e| e["event"] == "rejected_unverified"
            && e["detail"]["reason_code"] == "unknown_signer"));
}

#[test]
fn a_newer_hotfix_on_the_same_flag_supersedes_the_older() {
    let env = Env::new();
    let agent = env.start();
    let (code, out, err) = flag_set_cli(&env, &agent, &["--hold", "1h", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let first = id_from_json(&out);
    // Re-issued with a longer hold: the second takes over the first.
    let (code, out, err) = flag_set_cli(&env, &agent, &["--hold", "2h", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let second = id_from_json(&out);
    let rec: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        rec["actions"][0]["before"]["defaultVariant"], "on",
        "inherits the original before-state"
    );
    let (_, old) = get_json(&agent, &format!("/v1/commands/{first}"));
    assert_eq!(old["state"], "superseded");
    let ids: Vec<String> = hotfixes(&agent)
        .hotfixes
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, vec![second.clone()]);
    // Reverting the older one is refused, and the refusal names the
    // command to revert instead, in words and as a field.
    let (code, out, err) = env.revert_cli(&first, "done", "alice", &agent.url, &["--json"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!(
            "was superseded by {second}; revert that one instead"
        )),
        "{err}"
    );
    let refusal: Value = serde_json::from_str(&out).expect("rejection json");
    assert_eq!(refusal["superseded_by"], second.as_str(), "{refusal}");
    let receipt = tourniquet::command::envelope::Envelope::from_json(
        &serde_json::to_vec(&refusal["receipt"]).unwrap(),
    )
    .expect("receipt envelope");
    let receipt: Value = serde_json::from_slice(&receipt.payload_bytes().unwrap()).unwrap();
    assert_eq!(receipt["superseded_by"], second.as_str(), "{receipt}");
    assert_eq!(
        env.variant("new_flow"),
        "off",
        "a refused revert changes nothing"
    );
    // Reverting the newer one restores what was there before both.
    let (code, _, err) = env.revert_cli(&second, "done", "alice", &agent.url, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(env.variant("new_flow"), "on");
}

#[test]
fn status_identity_and_metrics_answer() {
    let env = Env::new();
    let agent = env.start();
    let (code, out, err) = flag_set_cli(&env, &agent, &["--hold", "30m", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = id_from_json(&out);
    let (code, out, _) = env.cli(&["status", "--agent", &agent.url]);
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("INC-1"), "{out}");
    let (code, out, _) = env.cli(&["status", &id, "--agent", &agent.url, "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "kept");
    assert!(v["hold_left_s"].as_u64().unwrap() > 0);
    let (_, ident) = get_json(&agent, "/v1/identity");
    assert_eq!(ident["agent_id"], "test-agent");
    assert_eq!(
        ident["labels"],
        json!({"env": "test", "region": "eu-central-1"})
    );
    assert!(ident["public_key"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));
    let (_, metrics) = http_request("GET", &format!("{}/metrics", agent.url), b"").unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("tourniquet_commands_total{result=\"accepted\",reason=\"none\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tourniquet_active_hotfixes 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tourniquet_build_info"), "{metrics}");
    assert!(!metrics.contains(&id), "no command ids as labels");
    // State files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(env.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("state"), 0o700);
    assert_eq!(mode("state/agent_ed25519"), 0o600);
    assert_eq!(mode("state/audit.jsonl"), 0o600);
    assert_eq!(mode("state/journal.jsonl"), 0o600);
}

#[test]
fn the_embedded_default_runs_the_quick_start() {
    let dir = tempfile::tempdir().unwrap();
    // The quick start as documented, moved off 7370 to a free port so it
    // cannot collide with anything else on the machine.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}");
    let agent = Agent::spawn(dir.path(), &["agent", "--listen", &addr], &[]);
    assert!(agent.stdout.contains("DEV TRUST"), "{}", agent.stdout);
    assert!(
        agent.stdout.contains("manages:  demo-flags"),
        "{}",
        agent.stdout
    );
    assert!(
        agent.stdout.contains(&format!("listens:  {url}")),
        "{}",
        agent.stdout
    );
    let out = std::process::Command::new(bin())
        .args([
            "flag",
            "set",
            "demo-flags",
            "new_checkout",
            "off",
            "--reason",
            "INC-1: checkout 500s",
            "--hold",
            "10m",
            "--send",
            &url,
        ])
        .current_dir(dir.path())
        .env_remove("TOURNIQUET_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("decision:  accepted"), "{stdout}");
    assert!(stdout.contains("new_checkout: on → off"), "{stdout}");
    assert!(
        stdout.contains("probe:     self-health: before 0.00% (3/3 ok"),
        "{stdout}"
    );
    assert!(stdout.contains("hold:"), "{stdout}");
    let flags: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".tourniquet/flags.json")).unwrap())
            .unwrap();
    assert_eq!(flags["flags"]["new_checkout"]["defaultVariant"], "off");
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.path().join(".tourniquet/operator_ed25519"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
}

/// Edits the flags file behind the agent's back, putting new_flow back on.
fn edit_behind_the_agents_back(env: &Env, by_rename: bool, n: usize) {
    let text = String::from_utf8(env.flags_bytes()).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["flags"]["new_flow"]["defaultVariant"] = json!("on");
    let bytes = serde_json::to_vec_pretty(&doc).unwrap();
    if by_rename {
        let tmp = env.path(&format!(".flags.json.deploy{n}"));
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, env.path("flags.json")).unwrap();
    } else {
        std::fs::write(env.path("flags.json"), &bytes).unwrap();
    }
}

fn drift_count(env: &Env, id: &str) -> usize {
    env.audit_entries()
        .iter()
        .filter(|e| e["event"] == "drifted" && e["command"] == id)
        .count()
}

#[test]
fn drift_is_reasserted_in_place_and_across_five_renames() {
    let env = Env::new();
    let agent = env.start();
    let (code, out, err) = flag_set_cli(&env, &agent, &["--hold", "1h", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = id_from_json(&out);
    let mut expected = 0;
    for (round, by_rename) in [
        false, false, false, false, false, true, true, true, true, true,
    ]
    .into_iter()
    .enumerate()
    {
        edit_behind_the_agents_back(&env, by_rename, round);
        expected += 1;
        wait_for(
            &format!(
                "re-assertion #{} ({})",
                round + 1,
                if by_rename { "rename" } else { "in place" }
            ),
            Duration::from_secs(10),
            || {
                (drift_count(&env, &id) >= expected && env.variant("new_flow") == "off")
                    .then_some(())
            },
        );
        expected = drift_count(&env, &id);
    }
    let entry = env
        .audit_entries()
        .into_iter()
        .rfind(|e| e["event"] == "drifted")
        .unwrap();
    assert_eq!(entry["detail"]["outcome"], "reasserted");
    assert_eq!(entry["detail"]["found"]["defaultVariant"], "on");
    assert_eq!(entry["detail"]["expected"]["defaultVariant"], "off");
    let (_, metrics) = http_request("GET", &format!("{}/metrics", agent.url), b"").unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("tourniquet_drift_events_total{resource=\"checkout-flags\"}"),
        "{metrics}"
    );
    let (_, rec) = get_json(&agent, &format!("/v1/commands/{id}"));
    assert!(!rec["drifts"].as_array().unwrap().is_empty());
    // Our own revert is not drift.
    let before = drift_count(&env, &id);
    let (code, _, err) = env.revert_cli(&id, "done", "alice", &agent.url, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(env.variant("new_flow"), "on");
    assert_eq!(drift_count(&env, &id), before);
}

#[test]
fn a_report_only_resource_records_drift_and_leaves_it() {
    let env = Env::new();
    let config = env.default_config().replace(
        "[resources.checkout-flags]\n",
        "[resources.checkout-flags]\non_drift = \"report\"\n",
    );
    env.write_config(&config);
    let agent = env.start();
    let (code, out, err) = flag_set_cli(&env, &agent, &["--hold", "1h", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = id_from_json(&out);
    edit_behind_the_agents_back(&env, true, 0);
    wait_for("drift reported", Duration::from_secs(10), || {
        (drift_count(&env, &id) >= 1).then_some(())
    });
    assert_eq!(
        env.variant("new_flow"),
        "on",
        "report-only leaves the change"
    );
    let entry = env
        .audit_entries()
        .into_iter()
        .rfind(|e| e["event"] == "drifted")
        .unwrap();
    assert_eq!(entry["detail"]["outcome"], "reported");
    drop(agent);
}
