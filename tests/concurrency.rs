//! One command at a time per resource, end to end.
//!
//! An incident brings several responders to the same flag at once. Fifty
//! clients, each with its own HTTP connection, send a signed `flag.set` on
//! the same flag of one agent at the same moment: alternating variants, all
//! held for 2 s, half of them guarded by a probe with a 1 s bake. The agent
//! must take them one at a time from plan to settle, each newer one
//! inheriting the true original before-state, so that when the last hold
//! runs out the flag is back where it was before the incident, and the
//! agent never mistakes its own writes for drift.
//!
//! Three rounds. After each: nothing in force, the flag at its original
//! value, the drift counter unmoved, every command settled with a receipt
//! and with the original value as its before-state.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tourniquet_e2e::store::{drift_events_total, hotfix_ids};
use tourniquet_e2e::*;

const CLIENTS: usize = 50;
const ROUNDS: usize = 3;
/// Serialised, the 25 guarded commands bake one after another (1 s each,
/// plus sampling), then the last hold runs out: well under this.
const ROUND_DEADLINE: Duration = Duration::from_secs(240);

/// Client `i`'s command: even clients turn the flag off, odd ones on; every
/// other pair carries a guard, so both variants come guarded and unguarded.
fn command(env: &Env, i: usize) -> Vec<u8> {
    let variant = if i % 2 == 0 { "off" } else { "on" };
    let mut p = payload(set_new_flow(variant));
    p["reason"] = json!(format!("INC-7: responder {i}"));
    p["hold"] = json!("2s");
    if (i / 2) % 2 == 0 {
        p["guard"] = json!({"probes": ["svc"], "bake": "1s"});
    }
    sign(&p, &[env.key("alice")])
}

/// Sends every body at once, each from its own client, after a barrier.
/// Returns (client, HTTP status, body) per client, in client order.
fn send_all(url: &str, bodies: Vec<Vec<u8>>) -> Vec<(usize, u16, Value)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(bodies.len()));
        let mut tasks = Vec::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let barrier = barrier.clone();
            let url = format!("{url}/v1/commands");
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .expect("HTTP client");
                barrier.wait().await;
                match client.post(&url).body(body).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let text = resp.bytes().await.unwrap_or_default();
                        (
                            i,
                            status,
                            serde_json::from_slice(&text).unwrap_or(Value::Null),
                        )
                    }
                    Err(e) => (
                        i,
                        0,
                        json!({"client_error": tourniquet::telemetry::error_chain(&e)}),
                    ),
                }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("client task"));
        }
        out.sort_by_key(|(i, _, _)| *i);
        out
    })
}

/// Waits until every command of the round is settled and nothing is in
/// force; on timeout, fails with what is still going on.
fn wait_round_done(env: &Env, agent: &Agent, round: usize, ids: &[String]) {
    let deadline = Instant::now() + ROUND_DEADLINE;
    let mut unsettled: BTreeSet<String> = ids.iter().cloned().collect();
    loop {
        unsettled.retain(|id| {
            let (status, rec) = get_json(agent, &format!("/v1/commands/{id}"));
            !(status == 200 && rec["settled"] == json!(true))
        });
        let in_force = hotfix_ids(agent);
        if unsettled.is_empty() && in_force.as_ref().is_some_and(Vec::is_empty) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "round {round}: after {ROUND_DEADLINE:?}, {} of {} commands are not settled and \
                 {in_force:?} are in force; new_flow is {:?}; drift events: {}",
                unsettled.len(),
                ids.len(),
                env.variant("new_flow"),
                drift_events_total(agent),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fifty_responders_on_one_flag_leave_it_where_it_was_and_cause_no_drift() {
    let env = Env::new();
    // A probe that always passes: the guard bakes for its full second.
    let svc = FlagAwareService::start(env.path("flags.json"), "new_flow", "never");
    env.write_config(&format!(
        "{}{}",
        env.default_config(),
        svc.probe_config("svc")
    ));
    let original: Value = serde_json::from_slice(&env.flags_bytes()).expect("flags json");
    assert_eq!(env.variant("new_flow"), "on");
    let agent = env.start();
    let drift_at_start = drift_events_total(&agent);
    assert_eq!(drift_at_start, 0.0, "no drift before any command");

    for round in 1..=ROUNDS {
        let bodies: Vec<Vec<u8>> = (0..CLIENTS).map(|i| command(&env, i)).collect();
        let answers = send_all(&agent.url, bodies);
        let refused: Vec<String> = answers
            .iter()
            .filter(|(_, status, _)| *status != 202)
            .map(|(i, status, body)| format!("client {i}: {status} {body}"))
            .collect();
        assert!(
            refused.is_empty(),
            "round {round}: every valid command is accepted and queued, not refused:\n{}",
            refused.join("\n")
        );
        let ids: Vec<String> = answers
            .iter()
            .map(|(i, _, body)| {
                body["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("round {round}: client {i}: no id in {body}"))
                    .to_string()
            })
            .collect();

        wait_round_done(&env, &agent, round, &ids);

        let now: Value = serde_json::from_slice(&env.flags_bytes()).expect("flags json");
        assert_eq!(
            env.variant("new_flow"),
            "on",
            "round {round}: with nothing in force, the flag is back at its original value"
        );
        assert_eq!(
            now, original,
            "round {round}: the flags file is back at its original document"
        );
        assert_eq!(
            drift_events_total(&agent),
            drift_at_start,
            "round {round}: the agent's own writes counted as drift"
        );

        let mut states = std::collections::BTreeMap::<String, usize>::new();
        for (i, id) in ids.iter().enumerate() {
            let (status, rec) = get_json(&agent, &format!("/v1/commands/{id}"));
            assert_eq!(status, 200, "round {round}: client {i}: {id}: {rec}");
            let state = rec["state"].as_str().unwrap_or("?").to_string();
            assert!(
                rec["settled"] == json!(true)
                    && matches!(
                        state.as_str(),
                        "kept" | "reverted" | "superseded" | "rolled_back" | "failed"
                    ),
                "round {round}: client {i}: {id} is {state}, neither terminal nor kept: {rec:#}"
            );
            assert!(
                rec["receipt"].is_object()
                    && rec["receipts"].as_array().is_some_and(|r| !r.is_empty()),
                "round {round}: client {i}: {id} ({state}) has no receipt: {rec:#}"
            );
            // Each took over from an older one in force or found the flag
            // untouched: either way its before-state is the original.
            assert_eq!(
                rec["actions"][0]["before"]["defaultVariant"],
                "on",
                "round {round}: client {i}: {id} captured a before-state that is not the original: {rec:#}"
            );
            *states.entry(state).or_default() += 1;
        }
        eprintln!("round {round}: {states:?}");
    }
}
