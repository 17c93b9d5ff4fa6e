//! Fleet hotfixes over a real `nats-server` with JetStream: several real
//! agent processes, commands published with the real CLI, and every
//! assertion made on what the agents wrote (flags files, cursors, spools)
//! and on the receipts the CLI reads back from the stream.

use std::time::Duration;

use serde_json::{json, Value};
use tourniquet_e2e::nats::{FleetAgent, NatsServer};
use tourniquet_e2e::{payload, sign, wait_for, Env};

const FLEET: &str = "checkout";

/// The operator side: keys alice and bob (sre), mallory (unknown).
fn operator() -> Env {
    Env::new()
}

/// alice and bob may flip flags, revert and halt; clock skew is small so
/// an expired command is expired within the test.
fn fleet_policy(op: &Env) -> String {
    format!(
        r#"version = 1
max_ttl = "30m"
clock_skew = "1s"

[keys.alice]
public_key = "{}"
roles = ["sre"]

[keys.bob]
public_key = "{}"
roles = ["sre"]

[[rules]]
ops = ["flag.*", "revert", "halt"]
resources = ["*"]
roles = ["sre"]
threshold = 1
"#,
        op.key("alice").public,
        op.key("bob").public
    )
}

fn init_streams(op: &Env, nats: &NatsServer) {
    let (code, out, err) = op.cli(&["fleet", "init", "--nats", &nats.url()]);
    assert_eq!(code, 0, "fleet init: {out}{err}");
}

/// Publishes an envelope file with `tourniquet send --to nats://`; returns
/// its stream sequence.
fn publish(op: &Env, nats: &NatsServer, envelope: &[u8]) -> u64 {
    let name = format!("cmd-{}.json", ulid::Ulid::new());
    std::fs::write(op.path(&name), envelope).expect("write envelope");
    let (code, out, err) = op.cli(&[
        "send",
        &name,
        "--to",
        &nats.url(),
        "--fleet",
        FLEET,
        "--json",
    ]);
    assert_eq!(code, 0, "send: {out}{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("send --json");
    v["stream_seq"].as_u64().expect("stream_seq")
}

/// `tourniquet status ID --nats URL --json`: exit 0, or 2 when (and only
/// when) every agent rejected the command.
fn fleet_view(op: &Env, nats: &NatsServer, id: &str) -> Value {
    let (code, out, err) = op.cli(&["status", id, "--nats", &nats.url(), "--json"]);
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("status json ({e}): {out}{err}"));
    let want = if v["all_rejected"] == true { 2 } else { 0 };
    assert_eq!(code, want, "status --nats: {out}{err}");
    v
}

/// Waits until the fleet view shows `agent` with an outcome `pred` accepts.
fn wait_outcome(
    op: &Env,
    nats: &NatsServer,
    id: &str,
    agent: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(
        &format!("{agent}'s receipt for {id}"),
        Duration::from_secs(30),
        || {
            let v = fleet_view(op, nats, id);
            pred(&v["agents"][agent]).then_some(v)
        },
    )
}

fn command(target: Value, actions: Value) -> Value {
    let mut p = payload(actions);
    p["target"] = target;
    p
}

fn set_new_flow(variant: &str) -> Value {
    json!([{"resource": "checkout-flags", "op": "flag.set", "flag": "new_flow", "variant": variant}])
}

#[test]
fn targeting_is_honoured_and_forged_commands_are_refused_everywhere() {
    let op = operator();
    let nats = NatsServer::start();
    init_streams(&op, &nats);
    let policy = fleet_policy(&op);
    let mut agents = vec![
        FleetAgent::new(
            "edge-eu-1",
            r#"env = "prod", region = "eu-central-1""#,
            &policy,
            &nats.url(),
            FLEET,
        ),
        FleetAgent::new(
            "edge-us-1",
            r#"env = "prod", region = "us-east-1""#,
            &policy,
            &nats.url(),
            FLEET,
        ),
        FleetAgent::new(
            "edge-stg-1",
            r#"env = "staging", region = "eu-central-1""#,
            &policy,
            &nats.url(),
            FLEET,
        ),
    ];
    for a in agents.iter_mut() {
        a.start();
    }

    // Every agent answers a ping with its heartbeat.
    let (code, out, err) = op.cli(&["fleet", "ls", "--nats", &nats.url(), "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let seen: Value = serde_json::from_str(&out).expect("fleet ls json");
    for a in &agents {
        assert!(seen[&a.id]["labels"]["env"].is_string(), "{out}");
    }

    let p = command(json!({"labels": {"env": "prod"}}), set_new_flow("off"));
    let id = p["id"].as_str().unwrap().to_string();
    let seq = publish(&op, &nats, &sign(&p, &[op.key("alice")]));
    for a in &agents[..2] {
        wait_outcome(&op, &nats, &id, &a.id, |o| o["outcome"] == "kept");
        assert_eq!(a.variant("new_flow"), "off", "{} applies", a.id);
    }
    // The staging agent read the command and stayed silent.
    agents[2].wait_cursor(seq);
    assert_eq!(agents[2].variant("new_flow"), "on");
    let view = fleet_view(&op, &nats, &id);
    assert_eq!(view["answered"], 2, "{view}");
    assert_eq!(view["by_outcome"]["kept"], 2, "{view}");
    assert!(view["agents"].get("edge-stg-1").is_none(), "{view}");
    assert_eq!(
        view["expected"], 2,
        "expected comes from heartbeats: {view}"
    );
    assert_eq!(view["silent"], json!([]), "{view}");

    // A command signed by a key no policy trusts, and one with no
    // signature at all, published straight onto the subject. No agent
    // signs a receipt for either (refusing them must cost nothing); each
    // reads past them, counts them, and notes them in its audit log.
    let forged = command(json!({}), set_new_flow("on"));
    let forged_seq = publish(&op, &nats, &sign(&forged, &[op.key("mallory")]));
    let unsigned = command(json!({}), set_new_flow("on"));
    let mut bare: Value = serde_json::from_slice(&sign(&unsigned, &[op.key("alice")])).unwrap();
    bare["signatures"] = json!([]);
    let unsigned_seq = publish(&op, &nats, &serde_json::to_vec(&bare).unwrap());
    assert!(unsigned_seq > forged_seq);
    for a in &agents {
        a.wait_cursor(unsigned_seq);
        let reasons = wait_for(
            &format!("{} to note both refusals in its audit log", a.id),
            Duration::from_secs(10),
            || {
                let log = std::fs::read_to_string(a.path("state/audit.jsonl")).ok()?;
                let reasons: Vec<String> = log
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|e| e["event"] == "rejected_unverified")
                    .filter_map(|e| e["detail"]["reason_code"].as_str().map(String::from))
                    .collect();
                (reasons.len() >= 2).then_some(reasons)
            },
        );
        assert!(
            reasons.contains(&"unknown_signer".to_string()),
            "{}: {reasons:?}",
            a.id
        );
        assert!(
            reasons
                .iter()
                .any(|c| c == "bad_envelope" || c == "bad_signature"),
            "{}: {reasons:?}",
            a.id
        );
    }
    assert_eq!(agents[0].variant("new_flow"), "off");
    assert_eq!(agents[1].variant("new_flow"), "off");
    assert_eq!(agents[2].variant("new_flow"), "on");

    // `tourniquet revert ID --send nats://` undoes it wherever it applied;
    // the agent that never had it stays silent.
    let (code, out, err) = op.cli(&[
        "revert",
        &id,
        "--reason",
        "INC-3: fixed upstream",
        "--key",
        "alice_ed25519",
        "--send",
        &nats.url(),
        "--fleet",
        FLEET,
        "--json",
    ]);
    assert_eq!(code, 0, "revert: {out}{err}");
    let sent: Value = serde_json::from_str(out.trim()).expect("revert --json");
    let revert_id = sent["id"].as_str().expect("id").to_string();
    for a in &agents[..2] {
        wait_outcome(&op, &nats, &id, &a.id, |o| o["outcome"] == "reverted");
        assert_eq!(a.variant("new_flow"), "on", "{} reverted", a.id);
    }
    wait_for(
        "both receipts of the revert",
        Duration::from_secs(30),
        || (fleet_view(&op, &nats, &revert_id)["answered"] == 2).then_some(()),
    );
    agents[2].wait_cursor(sent["stream_seq"].as_u64().expect("stream_seq"));
    let view = fleet_view(&op, &nats, &revert_id);
    assert_eq!(
        view["answered"], 2,
        "the staging agent stays silent: {view}"
    );
}

#[test]
fn an_offline_agent_catches_up_and_an_expired_command_applies_nothing() {
    let op = operator();
    let nats = NatsServer::start();
    init_streams(&op, &nats);
    let mut agent = FleetAgent::new(
        "edge-1",
        r#"env = "prod""#,
        &fleet_policy(&op),
        &nats.url(),
        FLEET,
    );
    agent.start();
    agent.stop();

    // Published while the agent is down: applied when it comes back.
    let p = command(json!({}), set_new_flow("off"));
    let id = p["id"].as_str().unwrap().to_string();
    let seq = publish(&op, &nats, &sign(&p, &[op.key("alice")]));
    agent.start();
    wait_outcome(&op, &nats, &id, "edge-1", |o| o["outcome"] == "kept");
    assert_eq!(agent.variant("new_flow"), "off");
    agent.wait_cursor(seq);
    agent.stop();

    // Published while it is down and expired before it comes back.
    let mut p = command(json!({}), set_new_flow("on"));
    let now = std::time::SystemTime::now();
    p["expires"] =
        json!(humantime::format_rfc3339_seconds(now + Duration::from_secs(1)).to_string());
    let expired_id = p["id"].as_str().unwrap().to_string();
    let deadline = now + Duration::from_secs(1 + 1); // expires + clock_skew
    publish(&op, &nats, &sign(&p, &[op.key("alice")]));
    wait_for(
        "the command to expire, skew included",
        Duration::from_secs(10),
        || (std::time::SystemTime::now() > deadline + Duration::from_secs(1)).then_some(()),
    );
    agent.start();
    let v = wait_outcome(&op, &nats, &expired_id, "edge-1", |o| {
        o["outcome"] == "rejected"
    });
    assert_eq!(v["agents"]["edge-1"]["reason_code"], "expired", "{v}");
    assert_eq!(v["by_outcome"]["expired"], 1, "{v}");
    assert_eq!(
        agent.variant("new_flow"),
        "off",
        "an expired command applies nothing"
    );
}

/// Picks a command id whose cohorts put some agents in wave 0 and some in
/// wave 1 of `waves`.
fn split_into_waves(agents: &[&str], first_wave: u8) -> (String, Vec<String>, Vec<String>) {
    loop {
        let id = ulid::Ulid::new().to_string();
        let (early, late): (Vec<&str>, Vec<&str>) = agents
            .iter()
            .partition(|a| tourniquet::transport::nats::fleet::cohort(&id, a) < first_wave);
        if !early.is_empty() && !late.is_empty() {
            return (
                id,
                early.iter().map(|s| s.to_string()).collect(),
                late.iter().map(|s| s.to_string()).collect(),
            );
        }
    }
}

#[test]
fn a_failing_first_wave_halts_the_later_waves() {
    let op = operator();
    let nats = NatsServer::start();
    init_streams(&op, &nats);
    let names = ["w-a", "w-b", "w-c", "w-d"];
    let (id, early, late) = split_into_waves(&names, 50);
    let policy = fleet_policy(&op);
    let mut agents: Vec<FleetAgent> = names
        .iter()
        .map(|n| FleetAgent::new(n, r#"env = "prod""#, &policy, &nats.url(), FLEET))
        .collect();
    // Wave 0's flags files lack the flag: the command cannot work there.
    for a in agents.iter().filter(|a| early.contains(&a.id)) {
        std::fs::write(
            a.path("flags.json"),
            r#"{"flags":{"other":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}}}"#,
        )
        .unwrap();
    }
    for a in agents.iter_mut() {
        a.start();
    }
    let mut p = command(json!({}), set_new_flow("off"));
    p["id"] = json!(id);
    p["rollout"] = json!({"waves": [50, 100], "wave_bake": "3s", "max_failures": 1});
    publish(&op, &nats, &sign(&p, &[op.key("alice")]));
    for a in &early {
        let v = wait_outcome(&op, &nats, &id, a, |o| o["outcome"] == "rejected");
        assert_eq!(v["agents"][a]["reason_code"], "invalid_action", "{v}");
    }
    for a in &late {
        let v = wait_outcome(&op, &nats, &id, a, |o| o["outcome"] == "rejected");
        assert_eq!(v["agents"][a]["reason_code"], "halted", "{v}");
    }
    for a in agents.iter().filter(|a| late.contains(&a.id)) {
        assert_eq!(
            a.variant("new_flow"),
            "on",
            "{}: halted applies nothing",
            a.id
        );
    }
    let view = fleet_view(&op, &nats, &id);
    assert_eq!(view["by_wave"]["1"]["halted"], late.len(), "{view}");
    assert_eq!(view["by_outcome"]["halted"], late.len(), "{view}");
    // Every agent refused it: `status` says so and exits 2 (rejected).
    assert_eq!(view["all_rejected"], true, "{view}");
    let (code, out, err) = op.cli(&["status", &id, "--nats", &nats.url()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains(&format!("every agent ({}) rejected it", names.len())),
        "{out}"
    );
    assert!(err.contains("rejected"), "{err}");
}

#[test]
fn a_signed_halt_stops_waves_that_have_not_started() {
    let op = operator();
    let nats = NatsServer::start();
    init_streams(&op, &nats);
    let names = ["h-a", "h-b", "h-c", "h-d"];
    let (id, early, late) = split_into_waves(&names, 50);
    let policy = fleet_policy(&op);
    let mut agents: Vec<FleetAgent> = names
        .iter()
        .map(|n| FleetAgent::new(n, r#"env = "prod""#, &policy, &nats.url(), FLEET))
        .collect();
    for a in agents.iter_mut() {
        a.start();
    }
    let mut p = command(json!({}), set_new_flow("off"));
    p["id"] = json!(id);
    // Long enough that the halt lands before wave 1 on a slow machine.
    p["rollout"] = json!({"waves": [50, 100], "wave_bake": "20s"});
    publish(&op, &nats, &sign(&p, &[op.key("alice")]));
    for a in &early {
        wait_outcome(&op, &nats, &id, a, |o| o["outcome"] == "kept");
    }
    let (code, out, err) = op.cli(&[
        "halt",
        &id,
        "--reason",
        "INC-7: wave 0 looks wrong",
        "--key",
        "alice_ed25519",
        "--send",
        &nats.url(),
        "--fleet",
        FLEET,
    ]);
    assert_eq!(code, 0, "halt: {out}{err}");
    for a in &late {
        let v = wait_outcome(&op, &nats, &id, a, |o| o["outcome"] == "rejected");
        assert_eq!(v["agents"][a]["reason_code"], "halted", "{v}");
    }
    for a in &agents {
        let want = if early.contains(&a.id) { "off" } else { "on" };
        assert_eq!(a.variant("new_flow"), want, "{}", a.id);
    }
    let audit = std::fs::read_to_string(agents[0].path("state/audit.jsonl")).unwrap();
    assert!(audit.contains("\"halt\""), "the halt is in the audit log");
}

#[test]
fn agents_reconnect_after_a_server_restart_and_spooled_receipts_arrive() {
    let op = operator();
    let mut nats = NatsServer::start();
    init_streams(&op, &nats);
    let policy = fleet_policy(&op);
    let mut agents: Vec<FleetAgent> = ["r-a", "r-b", "r-c"]
        .iter()
        .map(|n| FleetAgent::new(n, r#"env = "prod""#, &policy, &nats.url(), FLEET))
        .collect();
    for a in agents.iter_mut() {
        a.start();
    }
    // A hotfix whose hold runs out while NATS is down: its `reverted`
    // receipt must wait in the spool and arrive after the restart.
    let mut p = command(json!({}), set_new_flow("off"));
    p["hold"] = json!("3s");
    let held = p["id"].as_str().unwrap().to_string();
    publish(&op, &nats, &sign(&p, &[op.key("alice")]));
    for a in &agents {
        wait_outcome(&op, &nats, &held, &a.id, |o| o["outcome"] == "kept");
    }
    nats.kill();
    for a in &agents {
        wait_for(
            &format!("{} to revert during the outage", a.id),
            Duration::from_secs(20),
            || (a.variant("new_flow") == "on" && a.spooled() > 0).then_some(()),
        );
    }
    nats.restart();
    // Published the moment the server is back, before the agents'
    // reconnect backoff has run out.
    let p = command(json!({}), set_new_flow("off"));
    let after = p["id"].as_str().unwrap().to_string();
    publish(&op, &nats, &sign(&p, &[op.key("alice")]));
    for a in &agents {
        wait_outcome(&op, &nats, &after, &a.id, |o| o["outcome"] == "kept");
        assert_eq!(a.variant("new_flow"), "off");
        wait_outcome(&op, &nats, &held, &a.id, |o| o["outcome"] == "reverted");
        wait_for(
            &format!("{}'s spool to drain", a.id),
            Duration::from_secs(20),
            || (a.spooled() == 0).then_some(()),
        );
    }
}

#[test]
fn least_privilege_credentials_from_infra_are_enough_and_agents_cannot_publish_commands() {
    let op = operator();
    let perms = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/nats/tourniquet-permissions.conf");
    let nats = NatsServer::start_with_config(
        "include ./tourniquet-permissions.conf\n",
        &[&perms],
        &[
            ("TOURNIQUET_AGENT_PASSWORD", "agent-pw-1"),
            ("TOURNIQUET_OPERATOR_PASSWORD", "operator-pw-1"),
        ],
    );
    let operator_url = nats.url_as("tourniquet-operator", "operator-pw-1");
    let agent_url = nats.url_as("tourniquet-agent", "agent-pw-1");
    let (code, out, err) = op.cli(&["fleet", "init", "--nats", &operator_url]);
    assert_eq!(code, 0, "fleet init as operator: {out}{err}");
    let mut agent = FleetAgent::new(
        "lp-1",
        r#"env = "prod""#,
        &fleet_policy(&op),
        &agent_url,
        FLEET,
    );
    let banner = agent.start().stdout.clone();
    assert!(
        !banner.contains("agent-pw-1"),
        "the password never reaches the banner: {banner}"
    );

    let p = command(json!({}), set_new_flow("off"));
    let id = p["id"].as_str().unwrap().to_string();
    std::fs::write(op.path("lp.json"), sign(&p, &[op.key("alice")])).unwrap();
    let (code, out, err) = op.cli(&["send", "lp.json", "--to", &operator_url, "--fleet", FLEET]);
    assert_eq!(code, 0, "send as operator: {out}{err}");
    let (code, out, err) = op.cli(&["status", &id, "--nats", &operator_url, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the agent's receipt", Duration::from_secs(30), || {
        let (_, out, _) = op.cli(&["status", &id, "--nats", &operator_url, "--json"]);
        let v: Value = serde_json::from_str(out.trim()).ok()?;
        (v["agents"]["lp-1"]["outcome"] == "kept").then_some(())
    });
    assert_eq!(agent.variant("new_flow"), "off");

    // The agent's credentials cannot put a command on the stream.
    let p = command(json!({}), set_new_flow("on"));
    std::fs::write(op.path("sneaky.json"), sign(&p, &[op.key("alice")])).unwrap();
    let (code, out, err) = op.cli(&["send", "sneaky.json", "--to", &agent_url, "--fleet", FLEET]);
    assert_ne!(code, 0, "an agent may not publish commands: {out}{err}");
    assert!(!err.contains("agent-pw-1"), "no password in errors: {err}");
    let logs = agent.agent.as_mut().unwrap().logs();
    assert!(!logs.contains("agent-pw-1"), "no password in logs");
}

/// Runs the CLI and fails the test unless it exits within `limit`: for a
/// command that must end on its own long before the limit it was given.
fn cli_ends_within(op: &Env, args: &[&str], limit: Duration) -> (i32, String, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(tourniquet_e2e::bin())
        .args(args)
        .current_dir(op.path(""))
        .env_remove("TOURNIQUET_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tourniquet");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`tourniquet {}` did not end within {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out).expect("stdout");
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).expect("stderr");
    }
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn agents_waiting_for_their_wave_show_as_waiting_and_a_halt_ends_the_follow_up() {
    let op = operator();
    let nats = NatsServer::start();
    init_streams(&op, &nats);
    let names = ["s-a", "s-b", "s-c", "s-d"];
    let (id, early, late) = split_into_waves(&names, 50);
    let policy = fleet_policy(&op);
    let mut agents: Vec<FleetAgent> = names
        .iter()
        .map(|n| FleetAgent::new(n, r#"env = "prod""#, &policy, &nats.url(), FLEET))
        .collect();
    for a in agents.iter_mut() {
        a.start();
    }

    // `fleet ls --expect 4` ends once the four have answered, long before
    // its ten-minute limit.
    let (code, out, err) = cli_ends_within(
        &op,
        &[
            "fleet",
            "ls",
            "--nats",
            &nats.url(),
            "--expect",
            "4",
            "--listen",
            "10m",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    let seen: Value = serde_json::from_str(&out).expect("fleet ls json");
    for n in names {
        assert_eq!(seen[n]["fleet"], FLEET, "{out}");
    }

    // Wave 1 starts a minute after wave 0: long after these checks.
    let mut p = command(json!({}), set_new_flow("off"));
    p["id"] = json!(id);
    p["rollout"] = json!({"waves": [50, 100], "wave_bake": "60s"});
    std::fs::write(op.path("waved.json"), sign(&p, &[op.key("alice")])).unwrap();
    let (code, out, err) = op.cli(&["send", "waved.json", "--to", &nats.url(), "--fleet", FLEET]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("warning"),
        "agents of the fleet answer, so no warning: {err}"
    );
    for a in &early {
        wait_outcome(&op, &nats, &id, a, |o| o["outcome"] == "kept");
    }
    let view = fleet_view(&op, &nats, &id);
    assert_eq!(view["silent"], json!([]), "waiting is not silent: {view}");
    let mut waiting: Vec<String> = view["waiting"]
        .as_array()
        .expect("waiting")
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    waiting.sort();
    assert_eq!(waiting, late, "{view}");
    for p in view["pending"].as_array().unwrap() {
        assert_eq!(p["state"], "waiting_for_wave", "{view}");
        assert_eq!(p["wave"], 1, "{view}");
        let secs = p["starts_in_s"].as_u64().expect("starts_in_s");
        assert!(secs > 0 && secs <= 60, "{view}");
    }
    assert_eq!(view["next_wave"]["wave"], 1, "{view}");
    let (code, out, err) = op.cli(&["status", &id, "--nats", &nats.url()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("waiting for wave 1 (starts in "), "{out}");
    assert!(!out.contains("silent"), "{out}");

    // After a halt, `halt` points at the halted rollout rather than at a
    // halt that has no receipts to follow, and the view says it is halted.
    let (code, out, err) = op.cli(&[
        "halt",
        &id,
        "--reason",
        "INC-8: wave 0 looks wrong",
        "--key",
        "alice_ed25519",
        "--send",
        &nats.url(),
        "--fleet",
        FLEET,
    ]);
    assert_eq!(code, 0, "halt: {out}{err}");
    assert!(out.contains(&format!("rollout {id} is halted")), "{out}");
    assert!(!out.contains("--watch"), "{out}");
    let view = fleet_view(&op, &nats, &id);
    assert!(view["halted"]["by"].is_string(), "{view}");
    assert!(view["next_wave"].is_null(), "{view}");
    for p in view["pending"].as_array().unwrap() {
        assert_eq!(p["state"], "will_report_halted", "{view}");
    }
    // `--watch` has nothing left to follow and ends, well before --wait.
    let (code, out, err) = cli_ends_within(
        &op,
        &[
            "status",
            &id,
            "--nats",
            &nats.url(),
            "--watch",
            "--wait",
            "600",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("halted:   by "), "{out}");
    assert!(!out.contains("waiting for wave"), "{out}");
    assert!(!out.contains("next:"), "{out}");
}

#[test]
fn a_send_to_a_fleet_no_agent_answers_for_warns_and_still_publishes() {
    let op = operator();
    let nats = NatsServer::start();
    init_streams(&op, &nats);
    let mut agent = FleetAgent::new(
        "nb-1",
        r#"env = "prod""#,
        &fleet_policy(&op),
        &nats.url(),
        FLEET,
    );
    agent.start();
    let p = command(json!({}), set_new_flow("off"));
    std::fs::write(op.path("typo.json"), sign(&p, &[op.key("alice")])).unwrap();
    let (code, out, err) = op.cli(&[
        "send",
        "typo.json",
        "--to",
        &nats.url(),
        "--fleet",
        "chekout",
        "--json",
    ]);
    assert_eq!(code, 0, "a warning, not a refusal: {out}{err}");
    assert!(
        err.contains("warning: no agent of fleet 'chekout'") && err.contains("fleet ls"),
        "{err}"
    );
    let sent: Value = serde_json::from_str(out.trim()).expect("send --json");
    assert!(sent["stream_seq"].as_u64().is_some(), "published: {sent}");
    assert_eq!(agent.variant("new_flow"), "on");
}
