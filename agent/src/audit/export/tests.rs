use std::path::Path;

use serde_json::Value;

use super::csv::csv_field;
use super::report::ms_between;
use super::*;
use crate::audit::AuditLog;
use crate::command::envelope::COMMAND_PAYLOAD_TYPE;
use crate::command::envelope::{
    self, sha256_hex, Envelope, RECEIPT_NAMESPACE, RECEIPT_PAYLOAD_TYPE,
};
use crate::trust::keys::{self, Signer};
use serde_json::json;

/// A state dir with an agent key, an audit log written through
/// [`AuditLog::append`], receipts and journal lines.
struct Fixture {
    dir: tempfile::TempDir,
    log: AuditLog,
    signer: Signer,
    journal: Vec<Value>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("receipts")).unwrap();
        let key = dir.path().join("agent_ed25519");
        keys::generate_keypair(&key, "tourniquet-agent@test").unwrap();
        let signer = Signer::load(&key).unwrap();
        let log = AuditLog::open(dir.path(), Default::default()).unwrap();
        Fixture {
            dir,
            log,
            signer,
            journal: Vec::new(),
        }
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    fn entry(&mut self, event: &str, cmd: Option<&str>, sha: &str, detail: Value) {
        self.log.append(event, cmd, Some(sha), detail).unwrap();
    }

    /// Signs `payload` with `signer` and stores it as receipt `name`.
    fn receipt_signed_by(&self, signer: &Signer, name: &str, payload: Value) {
        let bytes = serde_json::to_vec(&payload).unwrap();
        let mut env = Envelope::new(RECEIPT_PAYLOAD_TYPE, &bytes);
        let sig = signer
            .sign(
                RECEIPT_NAMESPACE,
                &envelope::pae(RECEIPT_PAYLOAD_TYPE, &bytes),
            )
            .unwrap();
        env.add_signature(&sig).unwrap();
        // The layout of an older state dir: a file per receipt.
        std::fs::write(
            self.state().join("receipts").join(format!("{name}.json")),
            serde_json::to_vec_pretty(&env).unwrap(),
        )
        .unwrap();
    }

    /// Settles like `Lifecycle::settle`: a receipt, then the entry.
    fn settle(&mut self, event: &str, cmd: Option<&str>, sha: &str, name: &str, r: Value) {
        let mut payload = json!({
            "command_id": cmd,
            "envelope_sha256": sha,
            "outcome": event,
            "decision": if event == "rejected" { "rejected" } else { "accepted" },
            "issuer": "alice@example.com",
            "command_reason": "INC-7: checkout 500s",
            "actions": [{"resource": "checkout-flags", "op": "flag.set"}],
            "timeline": [],
        });
        for (k, v) in r.as_object().unwrap() {
            payload[k] = v.clone();
        }
        self.receipt_signed_by(&self.signer, name, payload);
        self.entry(event, cmd, sha, json!({"receipt": name}));
    }

    /// Received under the envelope hash, then verified … applied.
    fn apply(&mut self, id: &str, sha: &str) {
        self.entry("received", None, sha, Value::Null);
        for st in ["verified", "planned", "journaled", "sampled", "applied"] {
            self.entry(st, Some(id), sha, Value::Null);
        }
    }

    fn write_journal(&self) {
        let text: String = self
            .journal
            .iter()
            .map(|r| format!("{}\n", serde_json::to_string(r).unwrap()))
            .collect();
        std::fs::write(self.state().join("journal.jsonl"), text).unwrap();
    }
}

/// A command envelope (unsigned: the export never re-verifies operator
/// signatures, the audit hash binds it) and its SHA-256.
fn envelope_of(id: &str, issued_at: Timestamp, reason: &str, actions: Value) -> (String, String) {
    let payload = json!({
        "id": id,
        "issuer": "alice@example.com",
        "issued_at": issued_at.to_string(),
        "expires": issued_at.plus(std::time::Duration::from_secs(600)).to_string(),
        "reason": reason,
        "ticket": "INC-7",
        "target": {},
        "actions": actions,
    });
    let env = Envelope::new(COMMAND_PAYLOAD_TYPE, &serde_json::to_vec(&payload).unwrap());
    let text = serde_json::to_string(&env).unwrap();
    let sha = sha256_hex(text.as_bytes());
    (text, sha)
}

fn record(id: &str, sha: &str, envelope: &str, extra: Value) -> Value {
    let mut r = json!({"id": id, "state": "kept", "envelope": envelope, "envelope_sha256": sha});
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn flag_set() -> Value {
    json!([{"resource": "checkout-flags", "op": "flag.set", "flag": "new_flow", "variant": "off"}])
}

fn far_past() -> Timestamp {
    Timestamp(SystemTime::UNIX_EPOCH)
}

fn cmd<'a>(x: &'a Export, id: &str) -> &'a CommandReport {
    x.commands
        .iter()
        .find(|c| c.command.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no command {id}"))
}

/// Kept, rolled back, reverted by hold, reverted by a revert command,
/// the revert command, and three rejections (one a replay of a kept
/// command's envelope, one whose receipt is gone).
fn incident() -> Fixture {
    let mut fx = Fixture::new();
    let issued = Timestamp(SystemTime::now() - std::time::Duration::from_secs(5));
    fx.log
        .append("agent_started", None, None, json!({"agent": "a"}))
        .unwrap();

    // K: kept.
    let (k_env, k_sha) = envelope_of("K", issued, "INC-7: checkout 500s, off", flag_set());
    fx.apply("K", &k_sha);
    fx.settle("kept", Some("K"), &k_sha, "K.1.kept", json!({}));
    fx.journal.push(record("K", &k_sha, &k_env, json!({})));

    // R: rolled back by its guard. Its journal envelope was edited.
    let (_, r_sha) = envelope_of("R", issued, "INC-7", flag_set());
    fx.apply("R", &r_sha);
    fx.entry("baking", Some("R"), &r_sha, Value::Null);
    fx.settle(
        "rolled_back",
        Some("R"),
        &r_sha,
        "R.1.rolled_back",
        json!({}),
    );
    let (edited, _) = envelope_of("R", issued, "INC-8", flag_set());
    fx.journal.push(record(
        "R",
        &r_sha,
        &edited,
        json!({"state": "rolled_back"}),
    ));

    // H: kept with a hold, reverted when it ran out.
    let (h_env, h_sha) = envelope_of("H", issued, "INC-7", flag_set());
    fx.apply("H", &h_sha);
    fx.settle("kept", Some("H"), &h_sha, "H.1.kept", json!({}));
    fx.settle(
        "reverted",
        Some("H"),
        &h_sha,
        "H.2.reverted",
        json!({"timeline": [{"state": "reverted", "at": "2026-01-01T00:00:00Z", "note": "hold ran out"}]}),
    );
    fx.journal
        .push(record("H", &h_sha, &h_env, json!({"state": "reverted"})));

    // D: kept, then undone by revert command V. No journal record: its
    // cause comes from the receipt alone.
    let (_, d_sha) = envelope_of("D", issued, "INC-7", flag_set());
    fx.apply("D", &d_sha);
    fx.settle("kept", Some("D"), &d_sha, "D.1.kept", json!({}));
    let revert = json!([{"op": "revert", "command": "D"}]);
    let (v_env, v_sha) = envelope_of("V", issued, "INC-7 resolved", revert.clone());
    fx.entry("received", None, &v_sha, Value::Null);
    for st in ["verified", "planned", "journaled", "sampled"] {
        fx.entry(st, Some("V"), &v_sha, Value::Null);
    }
    fx.settle(
        "reverted",
        Some("D"),
        &d_sha,
        "D.2.reverted",
        json!({"timeline": [{"state": "reverted", "at": "2026-01-01T00:00:00Z", "note": "reverted by command V"}]}),
    );
    fx.entry("applied", Some("V"), &v_sha, Value::Null);
    fx.settle(
        "kept",
        Some("V"),
        &v_sha,
        "V.1.kept",
        json!({"actions": [{"resource": "checkout-flags", "op": "revert"}]}),
    );
    fx.journal.push(record("V", &v_sha, &v_env, json!({})));

    // M: an unknown signer, refused before it had an id.
    let m_sha = "m".repeat(64);
    fx.entry("received", None, &m_sha, Value::Null);
    fx.settle(
        "rejected",
        None,
        &m_sha,
        "rejected-mmmm.1",
        json!({"command_id": null, "reason_code": "unknown_signer", "actions": [], "issuer": null}),
    );

    // A replay of K's exact envelope.
    fx.entry("received", None, &k_sha, Value::Null);
    fx.settle(
        "rejected",
        None,
        &k_sha,
        "rejected-kkkk.2",
        json!({"command_id": "K", "reason_code": "replay", "actions": []}),
    );

    // X: not targeted; its receipt is gone, the journal still says why.
    let (x_env, x_sha) = envelope_of("X", issued, "INC-7", flag_set());
    fx.entry("received", None, &x_sha, Value::Null);
    fx.entry(
        "rejected",
        None,
        &x_sha,
        json!({"receipt": "rejected-xxxx.3"}),
    );
    fx.journal.push(record(
        &format!("sha256:{x_sha}"),
        &x_sha,
        &x_env,
        json!({"state": "rejected", "reason": "not_targeted", "receipts": ["rejected-xxxx.3"]}),
    ));
    fx.write_journal();
    fx.log.sync().unwrap();
    fx
}

#[test]
fn an_incident_becomes_commands_rates_and_durations() {
    let fx = incident();
    let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
    let s = &x.summary;
    assert_eq!(x.chain.entries as usize, x.timeline.len());
    assert_eq!(s.entries, x.timeline.len());
    assert_eq!(s.commands, 8, "{:#?}", x.commands);
    assert_eq!(s.applied, 4, "K, R, H and D; V is a revert command");
    assert_eq!(s.hotfix_frequency, 4);
    assert_eq!(s.revert_commands, 1);
    assert_eq!(s.rollbacks, 1);
    assert_eq!(s.regression_rate, Some(0.25));
    assert_eq!(s.succeeded, 2, "K kept and H reverted by its hold");
    assert_eq!(s.success_rate, Some(0.5));
    assert_eq!((s.reverted.by_hold, s.reverted.by_command), (1, 1));
    assert_eq!(s.rejected, 3);
    assert_eq!(
        s.rejections_by_reason,
        BTreeMap::from([
            ("not_targeted".to_string(), 1),
            ("replay".to_string(), 1),
            ("unknown_signer".to_string(), 1),
        ])
    );
    assert_eq!(s.by_outcome["kept"], 2);
    assert_eq!(s.by_outcome["reverted"], 2);
    assert_eq!(s.by_outcome["rolled_back"], 1);
    assert_eq!(s.time_to_apply_ms.count, 4);
    assert!(s.time_to_apply_ms.p50.unwrap() >= 0);
    assert!(s.time_to_apply_ms.p90 >= s.time_to_apply_ms.p50);
    // R's journal envelope does not hash to the audited one and D has
    // no journal record: only K and H have an issued_at.
    assert_eq!(s.issue_to_apply_ms.count, 2);
    assert!(s.issue_to_apply_ms.p50.unwrap() >= 5000);
    assert_eq!(s.provenance.journal_mismatches, 1);
    assert_eq!(s.provenance.receipts_missing, 1);
    assert_eq!(s.provenance.receipts_rejected, 0);
    assert!(s.provenance.receipts_verified >= 9);

    let k = cmd(&x, "K");
    assert_eq!(
        k.outcome.as_deref(),
        Some("kept"),
        "the replay is not merged into K"
    );
    assert_eq!(k.kind.as_deref(), Some("hotfix"));
    assert!(k.issue_to_apply_ms.unwrap() >= 5000);
    assert!(k.time_to_apply_ms.unwrap() >= 0);
    assert_eq!(
        k.first_seen,
        x.timeline
            .iter()
            .find(|e| e.event == "received")
            .map(|e| e.at)
    );
    assert_eq!(k.issuer.as_deref(), Some("alice@example.com"));
    assert_eq!(k.reason.as_deref(), Some("INC-7: checkout 500s, off"));
    assert_eq!(k.ticket.as_deref(), Some("INC-7"));
    assert_eq!(k.sources, vec!["audit", "receipt", "journal"]);
    let r = cmd(&x, "R");
    assert_eq!(r.outcome.as_deref(), Some("rolled_back"));
    assert_eq!(r.issued_at, None);
    assert_eq!(r.sources, vec!["audit", "receipt"]);
    assert_eq!(cmd(&x, "H").reverted_by.as_deref(), Some("hold"));
    let d = cmd(&x, "D");
    assert_eq!(d.reverted_by.as_deref(), Some("command"));
    assert_eq!(d.reverted_by_command.as_deref(), Some("V"));
    assert_eq!(d.receipts, vec!["D.1.kept", "D.2.reverted"]);
    assert_eq!(cmd(&x, "V").kind.as_deref(), Some("revert"));

    let rejected: Vec<&CommandReport> = x
        .commands
        .iter()
        .filter(|c| c.outcome.as_deref() == Some("rejected"))
        .collect();
    assert!(rejected.iter().all(|c| c.command.is_none()));
    let replay = rejected
        .iter()
        .find(|c| c.reason_code.as_deref() == Some("replay"))
        .unwrap();
    assert_eq!(replay.claimed_command.as_deref(), Some("K"));
    assert_eq!(replay.envelope_sha256, k.envelope_sha256);
    let x_rej = rejected
        .iter()
        .find(|c| c.reason_code.as_deref() == Some("not_targeted"))
        .unwrap();
    assert_eq!(x_rej.sources, vec!["audit", "journal"]);
    assert_eq!(x_rej.claimed_command.as_deref(), Some("X"));
    // Never verified: the envelope's claims are not reported as facts.
    assert_eq!((&x_rej.issuer, x_rej.issued_at), (&None, None));
    assert_eq!(x_rej.kind, None);
}

#[test]
fn json_has_the_documented_shape() {
    let fx = incident();
    let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
    let v: Value = serde_json::from_str(&x.render(Format::Json)).unwrap();
    for key in ["since", "until", "chain", "summary", "commands", "timeline"] {
        assert!(!v[key].is_null(), "{key}");
    }
    assert_eq!(v["summary"]["regression_rate"], json!(0.25));
    assert_eq!(v["timeline"][0]["event"], "agent_started");
    assert_eq!(v["commands"].as_array().unwrap().len(), 8);
}

#[test]
fn csv_has_a_header_and_a_row_per_command() {
    let fx = incident();
    let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
    let csv = x.render(Format::Csv);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], CSV_HEADER);
    assert_eq!(lines.len(), 1 + 8);
    let k = lines.iter().find(|l| l.starts_with("K,")).unwrap();
    // The reason has a comma: quoted, so the row keeps its columns.
    assert!(k.contains("\"INC-7: checkout 500s, off\""), "{k}");
    assert!(k.contains(",hotfix,kept,kept,"), "{k}");
    assert_eq!(csv_field("say \"no\""), "\"say \"\"no\"\"\"");
    assert_eq!(csv_field("a\nb"), "\"a\nb\"");
}

#[test]
fn a_tampered_log_is_refused() {
    let fx = incident();
    let path = fx.state().join("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("rolled_back", "kept", 1)).unwrap();
    let err = export(fx.state(), far_past(), Timestamp::now()).unwrap_err();
    assert!(err.is_broken(), "{err}");
    assert!(err.to_string().contains("refusing to export"), "{err}");

    // Dropping a line breaks it too; a missing log is an error, not
    // a broken chain.
    let lines: Vec<&str> = text.lines().collect();
    let cut = [&lines[..3], &lines[4..]].concat().join("\n") + "\n";
    std::fs::write(&path, cut).unwrap();
    assert!(export(fx.state(), far_past(), Timestamp::now())
        .unwrap_err()
        .is_broken());
    std::fs::remove_file(&path).unwrap();
    let err = export(fx.state(), far_past(), Timestamp::now()).unwrap_err();
    assert!(!err.is_broken(), "{err}");
}

#[test]
fn a_forged_receipt_is_not_believed() {
    let mut fx = Fixture::new();
    let other = fx.state().join("other_ed25519");
    keys::generate_keypair(&other, "forger").unwrap();
    let forger = Signer::load(&other).unwrap();
    let sha = "f".repeat(64);
    fx.entry("received", None, &sha, Value::Null);
    fx.receipt_signed_by(
        &forger,
        "rejected-ffff.1",
        json!({"envelope_sha256": sha, "outcome": "rejected", "reason_code": "replay"}),
    );
    fx.entry(
        "rejected",
        None,
        &sha,
        json!({"receipt": "rejected-ffff.1"}),
    );
    // A receipt name that would leave the receipts dir is not opened.
    let sha2 = "e".repeat(64);
    fx.entry(
        "rejected",
        None,
        &sha2,
        json!({"receipt": "../agent_ed25519"}),
    );
    fx.log.sync().unwrap();
    let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
    assert_eq!(x.summary.provenance.receipts_rejected, 2);
    assert_eq!(x.summary.rejections_by_reason["unknown"], 2);
    assert_eq!(x.summary.regression_rate, None, "nothing applied");
}

#[test]
fn since_limits_the_window() {
    let fx = incident();
    let all = export(fx.state(), far_past(), Timestamp::now()).unwrap();
    let later = Timestamp::now().plus(std::time::Duration::from_secs(3600));
    let x = export(fx.state(), later, later).unwrap();
    assert_eq!(x.summary.entries, 0);
    assert!(x.commands.is_empty() && x.timeline.is_empty());
    assert_eq!((x.summary.applied, x.summary.success_rate), (0, None));
    assert_eq!(x.summary.time_to_apply_ms, Stats::default());
    assert_eq!(
        x.chain.entries, all.chain.entries,
        "the whole chain is verified"
    );
    assert!(export_state(fx.state(), "24h").unwrap().summary.commands == 8);
    assert!(matches!(
        export_state(fx.state(), "yesterday"),
        Err(ExportError::Since(_))
    ));
}

#[test]
fn a_command_settled_inside_the_window_keeps_its_earlier_start() {
    let mut fx = Fixture::new();
    let sha = "a".repeat(64);
    fx.apply("A", &sha);
    fx.settle("kept", Some("A"), &sha, "A.1.kept", json!({}));
    std::thread::sleep(std::time::Duration::from_millis(20));
    // The log keeps milliseconds: a window starts on one.
    let since = Timestamp::parse(&Timestamp::now().to_string()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    fx.settle(
        "reverted",
        Some("A"),
        &sha,
        "A.2.reverted",
        json!({"timeline": [{"state": "reverted", "note": "hold ran out"}]}),
    );
    fx.log.sync().unwrap();
    let x = export(fx.state(), since, Timestamp::now()).unwrap();
    assert_eq!(x.timeline.len(), 1, "{x:#?}");
    let a = cmd(&x, "A");
    assert_eq!(a.outcome.as_deref(), Some("reverted"));
    assert!(a.time_to_apply_ms.is_some() && a.first_seen < Some(since));
    // Applied before the window: not a hotfix of this window.
    assert_eq!(x.summary.applied, 0);
    assert_eq!(x.summary.reverted.by_hold, 1);
}

#[test]
fn identical_rejections_oversize_and_recovery_stay_apart() {
    let mut fx = Fixture::new();
    let issued = Timestamp::now();
    // The same bytes refused twice, for different reasons; the receipts
    // are gone, each journal line still names its own.
    let (z_env, z) = envelope_of("Z", issued, "INC-7", flag_set());
    for (n, reason) in [(1, "not_yet_valid"), (2, "expired")] {
        let name = format!("rejected-zzzz.{n}");
        fx.entry("received", None, &z, Value::Null);
        fx.entry("rejected", None, &z, json!({"receipt": name}));
        fx.journal.push(record(
            &format!("sha256:{z}"),
            &z,
            &z_env,
            json!({"state": "rejected", "reason": reason, "receipts": [name]}),
        ));
    }
    // Too large: refused before `received`, journaled without its bytes.
    let big = "b".repeat(64);
    fx.entry(
        "rejected",
        None,
        &big,
        json!({"receipt": "rejected-bbbb.1"}),
    );
    fx.journal.push(record(
        &format!("sha256:{big}"),
        &big,
        "",
        json!({"state": "rejected", "reason": "too_large", "receipts": ["rejected-bbbb.1"]}),
    ));
    // A crash after `verified`: recovered, verified again, then kept.
    let (c_env, c) = envelope_of("C", issued, "INC-7", flag_set());
    fx.entry("received", None, &c, Value::Null);
    fx.entry("verified", Some("C"), &c, Value::Null);
    fx.entry("recovered", Some("C"), &c, json!({"found": "verified"}));
    for st in ["verified", "planned", "journaled", "sampled", "applied"] {
        fx.entry(st, Some("C"), &c, Value::Null);
    }
    fx.settle("kept", Some("C"), &c, "C.1.kept", json!({}));
    fx.entry(
        "drifted",
        Some("C"),
        &c,
        json!({"resource": "checkout-flags", "outcome": "reasserted"}),
    );
    fx.journal.push(record("C", &c, &c_env, json!({})));
    fx.write_journal();
    fx.log.sync().unwrap();

    let x = export(fx.state(), far_past(), Timestamp::now()).unwrap();
    assert_eq!(x.summary.commands, 4, "{:#?}", x.commands);
    assert_eq!(
        x.summary.rejections_by_reason,
        BTreeMap::from([
            ("expired".to_string(), 1),
            ("not_yet_valid".to_string(), 1),
            ("too_large".to_string(), 1),
        ])
    );
    assert_eq!(x.summary.provenance.journal_mismatches, 0);
    let c = cmd(&x, "C");
    assert!(c.recovered);
    assert_eq!((c.drifts, x.summary.drifts), (1, 1));
    assert_eq!(c.last_state, "kept", "drift changes no state");
    assert_eq!(c.outcome.as_deref(), Some("kept"));
    assert!(c.issue_to_apply_ms.unwrap() >= 0);
    assert_eq!(x.summary.applied, 1);
    assert_eq!(x.summary.success_rate, Some(1.0));
}

/// Percentiles themselves are tested with `crate::telemetry::percentile`.
#[test]
fn durations_are_signed_milliseconds() {
    assert_eq!(
        ms_between(
            far_past(),
            Timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500))
        ),
        1500
    );
    assert_eq!(
        ms_between(
            Timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500)),
            far_past()
        ),
        -1500
    );
}
