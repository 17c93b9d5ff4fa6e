//! `tourniquet audit export` over a real agent's state: kept, rolled back,
//! reverted (by its hold and by a revert command), dry-run and rejected
//! commands become one timeline with postmortem numbers; a tampered log is
//! refused.

use std::time::Duration;

use serde_json::{json, Value};
use tourniquet_e2e::*;

fn flag_set(env: &Env, agent: &Agent, flag: &str, variant: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "flag",
        "set",
        "checkout-flags",
        flag,
        variant,
        "--reason",
        "INC-9: checkout 500s, new flow",
        "--ticket",
        "INC-9",
        "--key",
        "alice_ed25519",
        "--send",
        &agent.url,
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = env.cli(&args);
    (code, format!("{out}{err}"))
}

fn id_of(out: &str) -> String {
    let start = out.find('{').unwrap_or_else(|| panic!("no JSON in {out}"));
    let v: Value = serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("not JSON: {out}"));
    v["id"].as_str().expect("id").to_string()
}

/// Splits one CSV line, honouring double quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

fn command<'a>(export: &'a Value, id: &str) -> &'a Value {
    export["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["command"] == id)
        .unwrap_or_else(|| panic!("no command {id} in {export:#}"))
}

fn non_negative(v: &Value, what: &str) -> i64 {
    let n = v
        .as_i64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(n >= 0, "{what} is {n}");
    n
}

#[test]
fn an_incident_exports_as_a_timeline_with_postmortem_numbers() {
    let env = Env::new();
    // The service fails while new_flow is off: turning it off is a regression.
    let svc = FlagAwareService::start(env.path("flags.json"), "new_flow", "off");
    env.write_config(&format!(
        "{}{}",
        env.default_config(),
        svc.probe_config("svc")
    ));
    let mut agent = env.start();

    // Kept, and still in force.
    let (code, out) = flag_set(&env, &agent, "dark_mode", "on", &[]);
    assert_eq!(code, 0, "{out}");
    let kept = id_of(&out);

    // Rolled back by its guard.
    let (code, out) = flag_set(
        &env,
        &agent,
        "new_flow",
        "off",
        &["--guard", "svc", "--bake", "100ms"],
    );
    assert_eq!(code, 4, "{out}");
    let rolled_back = id_of(&out);

    // Kept with a hold, reverted when it runs out.
    let (code, out) = flag_set(&env, &agent, "new_flow", "off", &["--hold", "1s"]);
    assert_eq!(code, 0, "{out}");
    let held = id_of(&out);
    wait_state(&agent, &held, |r| r["state"] == "reverted");

    // Kept, then undone by a revert command.
    let (code, out) = flag_set(&env, &agent, "new_flow", "off", &["--hold", "1h"]);
    assert_eq!(code, 0, "{out}");
    let undone = id_of(&out);
    let (code, out, err) =
        env.revert_cli(&undone, "INC-9 resolved", "bob", &agent.url, &["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let revert = id_of(&out);

    // A dry run, then a replay of its exact envelope.
    let mut p = payload(set_new_flow("off"));
    p["dry_run"] = json!(true);
    let dry = p["id"].as_str().unwrap().to_string();
    let body = sign(&p, &[env.key("alice")]);
    let (status, v) = post_command(&agent, &body);
    assert!(status < 300, "{status} {v}");
    wait_settled(&agent, &dry);
    let (status, v) = post_command(&agent, &body);
    assert_eq!((status, v["reason"].as_str()), (409, Some("replay")), "{v}");

    // Two more rejections: a signer the policy does not know, and a
    // resource the agent does not declare.
    let (code, out, err) = env.cli(&[
        "flag",
        "set",
        "checkout-flags",
        "new_flow",
        "off",
        "--reason",
        "INC-9",
        "--key",
        "mallory_ed25519",
        "--send",
        &agent.url,
    ]);
    assert_eq!(code, 2, "{out}{err}");
    let (code, out, err) = env.cli(&[
        "flag",
        "set",
        "nope-flags",
        "new_flow",
        "off",
        "--reason",
        "INC-9",
        "--key",
        "alice_ed25519",
        "--send",
        &agent.url,
    ]);
    assert_eq!(code, 2, "{out}{err}");

    // JSON, while the agent runs.
    let (code, out, err) = env.cli(&["audit", "export", "--state", "state", "--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let x: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    for key in ["since", "until", "summary", "commands", "timeline"] {
        assert!(!x[key].is_null(), "{key} missing: {x:#}");
    }
    let s = &x["summary"];
    // kept, rolled back, held, undone, revert, dry run, replay, nope.
    // Mallory's envelope was refused before any trusted signature counted:
    // it is no command, only a rate-limited `rejected_unverified` entry.
    assert_eq!(s["commands"], 8, "{x:#}");
    assert_eq!(x["commands"].as_array().unwrap().len(), 8);
    assert_eq!(s["applied"], 4, "the revert command is not a hotfix: {s:#}");
    assert_eq!(s["hotfix_frequency"], 4);
    assert_eq!(s["revert_commands"], 1);
    assert_eq!(s["rollbacks"], 1);
    assert_eq!(s["regression_rate"], json!(0.25));
    assert_eq!(s["succeeded"], 2, "kept, and reverted by its hold: {s:#}");
    assert_eq!(s["success_rate"], json!(0.5));
    assert_eq!(s["reverted"]["by_hold"], 1);
    assert_eq!(s["reverted"]["by_command"], 1);
    assert_eq!(s["rejected"], 2);
    assert_eq!(
        s["rejections_by_reason"],
        json!({"replay": 1, "unknown_resource": 1})
    );
    assert_eq!(
        s["by_outcome"],
        json!({"kept": 2, "planned": 1, "rejected": 2, "reverted": 2, "rolled_back": 1})
    );
    for d in ["time_to_apply_ms", "issue_to_apply_ms"] {
        assert_eq!(s[d]["count"], 4, "{d}: {s:#}");
        let p50 = non_negative(&s[d]["p50"], d);
        assert!(non_negative(&s[d]["p90"], d) >= p50, "{d}");
    }
    assert_eq!(s["provenance"]["receipts_rejected"], 0, "{s:#}");
    assert_eq!(s["provenance"]["receipts_missing"], 0, "{s:#}");
    assert_eq!(s["provenance"]["receipts_unverified"], 0, "{s:#}");

    for (id, outcome) in [
        (&kept, "kept"),
        (&rolled_back, "rolled_back"),
        (&held, "reverted"),
        (&undone, "reverted"),
    ] {
        let c = command(&x, id);
        assert_eq!(c["outcome"], outcome, "{c:#}");
        assert_eq!(c["kind"], "hotfix", "{c:#}");
        assert!(c["issuer"].as_str().is_some_and(|i| !i.is_empty()), "{c:#}");
        assert_eq!(c["reason"], "INC-9: checkout 500s, new flow", "{c:#}");
        assert_eq!(c["ticket"], "INC-9");
        non_negative(&c["time_to_apply_ms"], "time_to_apply_ms");
        non_negative(&c["issue_to_apply_ms"], "issue_to_apply_ms");
        for t in ["first_seen", "issued_at", "applied_at", "settled_at"] {
            assert!(c[t].is_string(), "{t}: {c:#}");
        }
    }
    assert_eq!(command(&x, &held)["reverted_by"], "hold");
    assert_eq!(command(&x, &undone)["reverted_by"], "command");
    assert_eq!(command(&x, &undone)["reverted_by_command"], revert.as_str());
    assert_eq!(command(&x, &revert)["kind"], "revert");
    assert_eq!(command(&x, &dry)["outcome"], "planned");
    assert!(command(&x, &dry)["applied_at"].is_null());
    let replay = x["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["reason_code"] == "replay")
        .expect("the replay");
    assert!(replay["command"].is_null(), "{replay:#}");
    assert_eq!(replay["claimed_command"], dry.as_str());
    // Refused before its signature counted: its claims are not facts, and
    // no command of the export; the log notes the refusal by hash only.
    assert!(x["commands"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["reason_code"] != "unknown_signer"));
    assert!(env
        .audit_entries()
        .iter()
        .any(|e| e["event"] == "rejected_unverified"
            && e["detail"]["reason_code"] == "unknown_signer"
            && e["command"].is_null()));
    // The timeline is the audit log itself.
    let audit = env.audit_entries();
    assert_eq!(x["timeline"].as_array().unwrap().len(), audit.len());
    assert_eq!(x["timeline"][0], audit[0]);

    // CSV: a header and one row per command; the reason's comma is quoted.
    let (code, csv, err) = env.cli(&["audit", "export", "--state", "state", "--format", "csv"]);
    assert_eq!(code, 0, "{csv}{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("command,"), "{csv}");
    assert_eq!(lines.len(), 1 + 8, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rb = lines
        .iter()
        .find(|l| l.starts_with(&format!("{rolled_back},")))
        .expect("rolled-back row");
    assert!(rb.contains("\"INC-9: checkout 500s, new flow\""), "{rb}");
    let fields = csv_fields(rb);
    assert_eq!(fields.len(), header.len(), "{rb}");
    assert_eq!(fields[col("reason")], "INC-9: checkout 500s, new flow");
    assert_eq!(fields[col("outcome")], "rolled_back");
    assert!(fields[col("time_to_apply_ms")].parse::<i64>().unwrap() >= 0);
    assert!(fields[col("issue_to_apply_ms")].parse::<i64>().unwrap() >= 0);

    // -o FILE, and a window that holds nothing.
    let (code, out, err) = env.cli(&["audit", "export", "--state", "state", "-o", "export.json"]);
    assert_eq!(code, 0, "{out}{err}");
    let file: Value =
        serde_json::from_slice(&std::fs::read(env.path("export.json")).unwrap()).unwrap();
    assert_eq!(file["summary"]["applied"], 4);
    // Wait until the newest audit entry is more than a second old.
    let newest = env
        .audit_entries()
        .last()
        .and_then(|e| {
            e["at"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
        })
        .expect("an audit entry");
    wait_for(
        "the log's newest entry to age past 1s",
        Duration::from_secs(10),
        || (std::time::SystemTime::now() > newest + Duration::from_millis(1100)).then_some(()),
    );
    let (code, out, err) = env.cli(&["audit", "export", "--state", "state", "--since", "1s"]);
    assert_eq!(code, 0, "{out}{err}");
    let empty: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(empty["summary"]["applied"], 0, "{empty:#}");
    assert!(empty["summary"]["regression_rate"].is_null());
    let (code, _, err) = env.cli(&["audit", "export", "--state", "state", "--since", "soon"]);
    assert_eq!(code, 1, "{err}");

    // An edited log is refused with exit 5.
    agent.stop();
    let path = env.path("state/audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("rolled_back", "kept", 1)).unwrap();
    let (code, out, err) = env.cli(&["audit", "export", "--state", "state"]);
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("refusing to export"), "{err}");
}
