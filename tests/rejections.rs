//! Bad input gets a clear error and changes nothing: one hostile command per
//! rejection reason, sent to the real agent over HTTP.
//!
//! A refusal decided before any trusted signature verifies (anyone can send
//! those) is answered to its sender and costs the agent no receipt; one
//! decided after costs a signed rejection receipt and an audit entry.

use base64::Engine;
use serde_json::{json, Value};
use tourniquet::command::envelope::sha256_hex;
use tourniquet_e2e::*;

fn hours_ago(h: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - std::time::Duration::from_secs(h * 3600),
    )
    .to_string()
}
fn hours_ahead(h: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(h * 3600),
    )
    .to_string()
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    status: u16,
    reason: &'static str,
    /// A phrase the human sentence must contain, where the exact cause
    /// matters (which field, which byte).
    says: Option<&'static str>,
}

/// The envelope JSON of `body`, edited.
fn edit_envelope(body: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut e: Value = serde_json::from_slice(body).unwrap();
    edit(&mut e);
    serde_json::to_vec(&e).unwrap()
}

/// `body` with its first signature's binary SSHSIG blob edited.
fn edit_sshsig(body: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    edit_envelope(body, |e| {
        let mut blob = tourniquet::command::envelope::decode_base64(
            e["signatures"][0]["sig"].as_str().unwrap(),
        )
        .unwrap();
        edit(&mut blob);
        e["signatures"][0]["sig"] = json!(base64::engine::general_purpose::STANDARD.encode(blob));
    })
}

/// Relabels the signature inside an SSHSIG blob as `rsa-sha2-512`, keeping
/// its ed25519 bytes: the label is the second `ssh-ed25519` in the blob (the
/// first names the public key), inside the length-prefixed signature field.
fn relabel_rsa(blob: &mut Vec<u8>) {
    let label = b"ssh-ed25519";
    let at = blob
        .windows(label.len())
        .enumerate()
        .filter(|(_, w)| w == label)
        .map(|(i, _)| i)
        .nth(1)
        .expect("a signature label");
    let field = u32::from_be_bytes(blob[at - 8..at - 4].try_into().unwrap());
    blob[at - 8..at - 4].copy_from_slice(&(field + 1).to_be_bytes());
    blob[at - 4..at].copy_from_slice(&12u32.to_be_bytes());
    blob.splice(at..at + label.len(), b"rsa-sha2-512".iter().copied());
}

/// A policy with extra keys for the key-state cases.
fn table_env() -> Env {
    let mut env = Env::new();
    env.add_key("carol"); // expired validity window
    env.add_key("dave"); // role without permissions
    env.add_key("erin"); // revoked
                         // Top-level keys go before the tables.
    let mut text = format!(
        "revoked = [\"{}\"]\n{}",
        env.key("erin").fingerprint,
        env.default_policy()
    );
    text.push_str(&format!(
        r#"
[keys.carol]
public_key = "{}"
roles = ["sre"]
valid_before = "2020-01-01T00:00:00Z"

[keys.dave]
public_key = "{}"
roles = ["viewer"]

[keys.erin]
public_key = "{}"
roles = ["sre"]
"#,
        env.key("carol").public,
        env.key("dave").public,
        env.key("erin").public
    ));
    env.write_policy(&text);
    env
}

fn cases(env: &Env, agent: &Agent) -> Vec<Case> {
    let alice = env.key("alice");
    let good = |actions: Value| sign(&payload(actions), &[alice]);
    // Accepted once (a dry run), for the replay and revert cases.
    let (accepted_body, accepted_id) = agent_replay_body(env, agent);
    let out = std::cell::RefCell::new(Vec::new());
    let said = |name, body: Vec<u8>, status, reason, says| {
        out.borrow_mut().push(Case {
            name,
            body,
            status,
            reason,
            says,
        })
    };
    let case = |name, body: Vec<u8>, status, reason| said(name, body, status, reason, None);

    // bad_envelope
    case(
        "not JSON",
        b"this is not json".to_vec(),
        400,
        "bad_envelope",
    );
    case(
        "wrong payloadType",
        {
            let mut e: Value = serde_json::from_slice(&good(set_new_flow("off"))).unwrap();
            e["payloadType"] = json!("application/json");
            serde_json::to_vec(&e).unwrap()
        },
        400,
        "bad_envelope",
    );
    case(
        "unknown envelope field",
        {
            let mut e: Value = serde_json::from_slice(&good(set_new_flow("off"))).unwrap();
            e["extra"] = json!(1);
            serde_json::to_vec(&e).unwrap()
        },
        400,
        "bad_envelope",
    );
    case(
        "a 0xFF byte inside the envelope JSON",
        {
            // In the keyid, a hint nothing checks: a lossy copy would verify.
            let body = good(set_new_flow("off"));
            let at = body.windows(7).position(|w| w == b"SHA256:").unwrap();
            let mut bad = body.clone();
            bad.insert(at, 0xFF);
            bad
        },
        400,
        "bad_envelope",
    );
    case(
        "payload not base64",
        {
            let mut e: Value = serde_json::from_slice(&good(set_new_flow("off"))).unwrap();
            e["payload"] = json!("***not base64***");
            serde_json::to_vec(&e).unwrap()
        },
        400,
        "bad_envelope",
    );

    // bad_payload: signed, but not a valid payload.
    let signed_text =
        |text: String| serde_json::to_vec(&sign_bytes(text.as_bytes(), &[alice])).unwrap();
    let base = serde_json::to_string(&payload(set_new_flow("off"))).unwrap();
    case(
        "payload with an unknown field",
        signed_text(base.replacen("{", "{\"colour\":\"red\",", 1)),
        400,
        "bad_payload",
    );
    case(
        "payload with a duplicated key",
        signed_text(base.replacen("{", "{\"reason\":\"first\",", 1)),
        400,
        "bad_payload",
    );
    case(
        "payload with a float",
        signed_text(base.replace("\"variant\":\"off\"", "\"variant\":\"off\",\"weight\":0.5")),
        400,
        "bad_payload",
    );
    case(
        "payload that is not an object",
        signed_text("[1,2,3]".into()),
        400,
        "bad_payload",
    );
    case(
        "the accepted command's id in lower case, with a new body",
        {
            let mut p = payload(set_new_flow("on"));
            p["id"] = json!(accepted_id.to_lowercase());
            sign(&p, &[alice])
        },
        400,
        "bad_payload",
    );
    case(
        "a revert with an extra resource field",
        good(json!([{"op":"revert","command": accepted_id,"resource":"checkout-flags"}])),
        400,
        "bad_payload",
    );
    for (name, hold) in [
        ("a 500000000years hold", "500000000years"),
        ("an 18446744073709551615s hold", "18446744073709551615s"),
    ] {
        let mut p = payload(set_new_flow("off"));
        p["hold"] = json!(hold);
        case(name, sign(&p, &[alice]), 400, "bad_payload");
    }
    let mut p = payload(set_new_flow("off"));
    p["guard"] = json!({"probes": ["svc"], "bake": "18446744073709551615s"});
    case(
        "an overflowing bake",
        sign(&p, &[alice]),
        400,
        "bad_payload",
    );
    let mut p = payload(set_new_flow("off"));
    p["guard"] = json!({"probes": ["svc"], "bake": "2h"});
    said(
        "a bake over an hour",
        sign(&p, &[alice]),
        400,
        "bad_payload",
        Some("guard.bake is 2h; at most 1h is allowed"),
    );
    let mut p = payload(set_new_flow("off"));
    p["reason"] = json!("INC-1: checkout \u{202E}sdrawkcab");
    said(
        "a right-to-left override in reason",
        sign(&p, &[alice]),
        400,
        "bad_payload",
        Some("reason contains U+202E (right-to-left override)"),
    );
    let mut p = payload(set_new_flow("off"));
    p["reason"] = json!("INC-1: check\u{200B}out");
    said(
        "a zero-width space in reason",
        sign(&p, &[alice]),
        400,
        "bad_payload",
        Some("reason contains U+200B (zero width space)"),
    );

    // too_large
    case(
        "a 10 MiB body",
        vec![b' '; 10 * 1024 * 1024],
        413,
        "too_large",
    );

    // bad_signature
    case(
        "tampered payload",
        {
            let mut e: Value = serde_json::from_slice(&good(set_new_flow("off"))).unwrap();
            let other = serde_json::to_vec(&payload(set_new_flow("on"))).unwrap();
            e["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(other));
            serde_json::to_vec(&e).unwrap()
        },
        401,
        "bad_signature",
    );
    case(
        "no signatures",
        {
            let mut e: Value = serde_json::from_slice(&good(set_new_flow("off"))).unwrap();
            e["signatures"] = json!([]);
            serde_json::to_vec(&e).unwrap()
        },
        401,
        "bad_signature",
    );
    case(
        "garbage signature",
        {
            let mut e: Value = serde_json::from_slice(&good(set_new_flow("off"))).unwrap();
            e["signatures"][0]["sig"] = json!("AAAA");
            serde_json::to_vec(&e).unwrap()
        },
        401,
        "bad_signature",
    );
    said(
        "16 trailing bytes after the SSHSIG blob",
        edit_sshsig(&good(set_new_flow("off")), |b| {
            b.extend_from_slice(&[0; 16])
        }),
        401,
        "bad_signature",
        Some("16 byte(s) after its signature"),
    );
    said(
        "an rsa-sha2-512 label over ed25519 signature bytes",
        edit_sshsig(&good(set_new_flow("off")), relabel_rsa),
        401,
        "bad_signature",
        Some("rsa-sha2-512"),
    );
    case(
        "signature for another namespace",
        {
            let p = serde_json::to_vec(&payload(set_new_flow("off"))).unwrap();
            let msg = tourniquet::command::envelope::pae(
                tourniquet::command::envelope::COMMAND_PAYLOAD_TYPE,
                &p,
            );
            let sig = alice.signer().sign("file", &msg).unwrap();
            let mut env = tourniquet::command::envelope::Envelope::new(
                tourniquet::command::envelope::COMMAND_PAYLOAD_TYPE,
                &p,
            );
            env.add_signature(&sig).unwrap();
            serde_json::to_vec(&env).unwrap()
        },
        401,
        "bad_signature",
    );

    // signer trust
    case(
        "unknown signer",
        sign(&payload(set_new_flow("off")), &[env.key("mallory")]),
        401,
        "unknown_signer",
    );
    case(
        "revoked key",
        sign(&payload(set_new_flow("off")), &[env.key("erin")]),
        401,
        "revoked_key",
    );
    case(
        "key outside its validity window",
        sign(&payload(set_new_flow("off")), &[env.key("carol")]),
        401,
        "key_not_valid_now",
    );
    case(
        "two-person rule with one key",
        good(
            json!([{"resource":"locked-flags","op":"flag.state","flag":"new_flow","state":"DISABLED"}]),
        ),
        403,
        "quorum_not_met",
    );
    case(
        "the same signature twice against threshold 2",
        {
            let mut e: Value = serde_json::from_slice(&good(json!([{"resource":"locked-flags","op":"flag.state","flag":"new_flow","state":"DISABLED"}]))).unwrap();
            let sig = e["signatures"][0].clone();
            e["signatures"] = json!([sig.clone(), sig]);
            serde_json::to_vec(&e).unwrap()
        },
        403,
        "quorum_not_met",
    );
    case(
        "a role without permission",
        sign(&payload(set_new_flow("off")), &[env.key("dave")]),
        403,
        "not_permitted",
    );
    case(
        "an op no rule allows",
        good(json!([{"resource":"checkout-flags","op":"secret.rollback"}])),
        403,
        "not_permitted",
    );

    // times
    let mut p = payload(set_new_flow("off"));
    p["issued_at"] = json!(hours_ago(2));
    p["expires"] = json!(hours_ago(1));
    case("expired", sign(&p, &[alice]), 422, "expired");
    let mut p = payload(set_new_flow("off"));
    p["issued_at"] = json!(hours_ahead(1));
    p["expires"] = json!(humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3900)
    )
    .to_string());
    case(
        "issued in the future",
        sign(&p, &[alice]),
        422,
        "not_yet_valid",
    );
    let mut p = payload(set_new_flow("off"));
    p["not_before"] = json!(hours_ahead(1));
    case(
        "not_before in the future",
        sign(&p, &[alice]),
        422,
        "not_yet_valid",
    );
    let mut p = payload(set_new_flow("off"));
    p["expires"] = json!(hours_ahead(2));
    case(
        "ttl longer than max_ttl",
        sign(&p, &[alice]),
        422,
        "ttl_too_long",
    );
    let mut p = payload(set_new_flow("off"));
    p["hold"] = json!("8d");
    said(
        "a hold over the policy's max_hold (7d by default)",
        sign(&p, &[alice]),
        422,
        "hold_too_long",
        Some("hold is 8days; the policy allows at most 7days"),
    );

    // replay: accepted once (sent before the table), then refused.
    case("replay", accepted_body, 409, "replay");

    // targeting and resources
    let mut p = payload(set_new_flow("off"));
    p["target"] = json!({"agents": ["edge-fra-01"]});
    case(
        "targeted at another agent",
        sign(&p, &[alice]),
        422,
        "not_targeted",
    );
    let mut p = payload(set_new_flow("off"));
    p["target"] = json!({"labels": {"env": "prod"}});
    case(
        "targeted at other labels",
        sign(&p, &[alice]),
        422,
        "not_targeted",
    );
    case(
        "a resource the config does not declare",
        good(json!([{"resource":"payments-secret","op":"flag.set","flag":"x","variant":"y"}])),
        404,
        "unknown_resource",
    );
    case(
        "a path instead of a resource name",
        good(json!([{"resource":"/etc/passwd","op":"flag.set","flag":"x","variant":"y"}])),
        404,
        "unknown_resource",
    );
    case(
        "a flag the file does not have",
        good(json!([{"resource":"checkout-flags","op":"flag.set","flag":"nope","variant":"off"}])),
        422,
        "invalid_action",
    );
    case(
        "a variant the flag does not have",
        good(
            json!([{"resource":"checkout-flags","op":"flag.set","flag":"new_flow","variant":"maybe"}]),
        ),
        422,
        "invalid_action",
    );
    said(
        "an unknown provider param, named",
        good(
            json!([{"resource":"checkout-flags","op":"flag.set","flag":"new_flow","variant":"off","colour":"red"}]),
        ),
        422,
        "invalid_action",
        Some("flag.set: unknown param \"colour\"; expected flag, variant"),
    );
    case(
        "unknown action parameter",
        good(
            json!([{"resource":"checkout-flags","op":"flag.set","flag":"new_flow","variant":"off","path":"/tmp/x"}]),
        ),
        422,
        "invalid_action",
    );
    case(
        "revert of an unknown command",
        good(json!([{"op":"revert","command": ulid::Ulid::new().to_string()}])),
        422,
        "invalid_action",
    );
    out.into_inner()
}

/// Sends a good dry-run command once (accepted), and returns its bytes and
/// id for the replay cases.
fn agent_replay_body(env: &Env, agent: &Agent) -> (Vec<u8>, String) {
    let mut p = payload(set_new_flow("off"));
    p["dry_run"] = json!(true);
    let body = sign(&p, &[env.key("alice")]);
    let (status, v) = post_command(agent, &body);
    assert_eq!(
        status, 202,
        "the original of the replay case must be accepted: {v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    wait_settled(agent, &id);
    (body, id)
}

/// Receipts the agent has stored: settle lines in its journal, plus those
/// compaction moved into the receipt archive's segments.
fn receipt_files(env: &Env) -> usize {
    let lines = |p: std::path::PathBuf| {
        std::fs::read_to_string(p)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains("\"t\":\"settle\"") || l.starts_with("{\"name\""))
                    .count()
            })
            .unwrap_or(0)
    };
    let archived: usize = std::fs::read_dir(env.path("state/receipts"))
        .map(|d| d.flatten().map(|e| lines(e.path())).sum())
        .unwrap_or(0);
    lines(env.path("state/journal.jsonl")) + archived
}

/// Checks one row's answer; returns what is wrong, if anything.
fn check_case(env: &Env, agent: &Agent, c: &Case) -> Result<(), String> {
    let reason = tourniquet::command::rejection::Reason::ALL
        .into_iter()
        .find(|r| r.code() == c.reason)
        .ok_or_else(|| format!("{} is not a reason code", c.reason))?;
    let receipts_before = receipt_files(env);
    let flags_before = env.flags_bytes();
    let (status, body) = post_command(agent, &c.body);
    let fail = |what: String| Err(format!("{}: {what} (body {body})", c.name));
    if (status, body["reason"].as_str()) != (c.status, Some(c.reason)) {
        return fail(format!(
            "expected {} {}, got {status} {}",
            c.status, c.reason, body["reason"]
        ));
    }
    let message = body["message"].as_str().unwrap_or_default();
    if message.is_empty() {
        return fail("a human sentence is required".into());
    }
    if let Some(says) = c.says {
        if !message.contains(says) {
            return fail(format!("the message must say {says:?}"));
        }
    }
    if env.flags_bytes() != flags_before {
        return fail("the flags file must be byte-identical".into());
    }
    if http_get_status(&format!("{}/healthz", agent.url)) != Some(200) {
        return fail("the agent must still answer /healthz with 200".into());
    }
    if reason.before_trust() {
        // Nothing a stranger sends may cost the agent a receipt.
        if !body["receipt"].is_null() {
            return fail("a refusal before trust must carry no receipt".into());
        }
        if receipt_files(env) != receipts_before {
            return fail("a refusal before trust must store no receipt file".into());
        }
        return Ok(());
    }
    // A signed rejection receipt comes back and is stored.
    let receipt = &body["receipt"];
    if receipt["payloadType"] != "application/vnd.tourniquet.receipt.v1+json" {
        return fail("a signed rejection receipt is required".into());
    }
    let receipt_payload: Value = serde_json::from_slice(
        &tourniquet::command::envelope::decode_base64(
            receipt["payload"].as_str().unwrap_or_default(),
        )
        .unwrap_or_default(),
    )
    .unwrap_or_default();
    if receipt_payload["reason_code"] != c.reason || receipt_payload["decision"] != "rejected" {
        return fail(format!("receipt says {receipt_payload}"));
    }
    if receipt_files(env) <= receipts_before {
        return fail("the receipt must be stored".into());
    }
    // An audit entry names the envelope by its hash.
    let sha = sha256_hex(&c.body);
    if !env
        .audit_entries()
        .iter()
        .any(|e| e["event"] == "rejected" && e["envelope_sha256"] == sha.as_str())
    {
        return fail("no audit entry for the rejection".into());
    }
    Ok(())
}

#[test]
fn every_rejection_reason_changes_nothing_and_leaves_a_receipt() {
    let env = table_env();
    let agent = env.start();
    let cases = cases(&env, &agent);
    let flags_before = env.flags_bytes();
    let mut covered = std::collections::BTreeSet::new();
    // Every row runs; the failures are reported together.
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            covered.insert(c.reason);
            check_case(&env, &agent, c).err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        env.flags_bytes(),
        flags_before,
        "the flags file must be byte-identical after the whole table"
    );
    // Every reason but policy_expired (its own test: it needs an expired
    // policy), halted (a fleet rollout's; tests/fleet.rs covers it) and
    // storage_unavailable (a state dir that cannot be written; tests/storage.rs).
    for r in tourniquet::command::rejection::Reason::ALL {
        if !matches!(
            r.code(),
            "policy_expired" | "halted" | "storage_unavailable"
        ) {
            assert!(covered.contains(r.code()), "no hostile case for {r}");
        }
    }
    let (code, out, err) = env.cli(&["audit", "verify", "--state", "state"]);
    assert_eq!(code, 0, "audit chain must verify: {out}{err}");
}

#[test]
fn an_expired_policy_refuses_everything() {
    let env = Env::new();
    let policy = format!(
        "expires = \"2020-01-01T00:00:00Z\"\n{}",
        env.default_policy()
    );
    env.write_policy(&policy);
    let agent = env.start();
    let (status, body) = post_command(
        &agent,
        &sign(&payload(set_new_flow("off")), &[env.key("alice")]),
    );
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("policy_expired")),
        "{body}"
    );
    assert_eq!(env.variant("new_flow"), "on");
}

#[test]
fn url_safe_base64_payload_is_accepted() {
    let env = Env::new();
    let agent = env.start();
    let mut p = payload(set_new_flow("off"));
    // Characters whose standard base64 has '+' and '/'.
    p["reason"] = json!("INC-7 ??? >>> ~~~ checkout");
    let bytes = serde_json::to_vec(&p).unwrap();
    let mut env_json: Value =
        serde_json::to_value(sign_bytes(&bytes, &[env.key("alice")])).unwrap();
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
    assert!(
        url_safe.contains('-') || url_safe.contains('_'),
        "the case must exercise the URL-safe alphabet"
    );
    env_json["payload"] = json!(url_safe);
    let (status, body) = post_command(&agent, &serde_json::to_vec(&env_json).unwrap());
    assert_eq!(status, 202, "{body}");
    let rec = wait_settled(&agent, body["id"].as_str().unwrap());
    assert_eq!(rec["state"], "kept");
    assert_eq!(env.variant("new_flow"), "off");
}

#[test]
fn a_broken_config_fails_at_start_naming_file_line_and_field() {
    let env = Env::new();
    let broken = env
        .default_config()
        .replace("[inbox]\n", "[inbox]\ncolour = \"red\"\n");
    env.write_config(&broken);
    let (code, _out, err) = env.cli(&["agent", "--config", "agent.toml"]);
    assert_ne!(code, 0);
    let line = broken
        .lines()
        .position(|l| l.starts_with("colour"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("agent.toml:{line}:")),
        "file and line: {err}"
    );
    assert!(err.contains("colour"), "field: {err}");
    // --check reports the same without starting.
    let (code, _, err2) = env.cli(&["agent", "--config", "agent.toml", "--check"]);
    assert_ne!(code, 0);
    assert!(err2.contains("colour"), "{err2}");
}

#[test]
fn a_missing_policy_refuses_to_start() {
    let env = Env::new();
    std::fs::remove_file(env.path("policy.toml")).unwrap();
    let (code, _out, err) = env.cli(&["agent", "--config", "agent.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("policy.toml"), "{err}");
}

#[test]
fn a_broken_policy_names_the_field() {
    let env = Env::new();
    env.write_policy(
        &env.default_policy()
            .replace("threshold = 2", "threshold = \"two\""),
    );
    let (code, _out, err) = env.cli(&["agent", "--config", "agent.toml", "--check"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("policy.toml:") && err.contains("threshold"),
        "{err}"
    );
}
