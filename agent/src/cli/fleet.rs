//! The operator's side of a fleet: publishing commands, creating the
//! streams, listing agents, and the fleet view of one command built from
//! every agent's receipt in `TOURNIQUET_RECEIPTS`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::Context, stream::DirectGetErrorKind};
use futures_util::StreamExt;
use serde_json::{json, Value};

use clap::Subcommand;

use super::status::StatusArgs;
use super::{CliResult, Conn, Failure};
use crate::command::envelope::Envelope;
use crate::command::payload::{HumanDuration, Payload};
use crate::command::rejection::Reason;
use crate::lifecycle::receipt::{Outcome, Receipt};
use crate::transport::nats::fleet;
use crate::transport::nats::{publish_acked, receipt_payload};

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Create or update the TOURNIQUET_CMD and TOURNIQUET_RECEIPTS streams (an operator action).
    Init {
        /// The NATS server, e.g. nats://127.0.0.1:4222.
        #[arg(long)]
        nats: String,
        /// How long commands stay in the stream; must exceed the policy's max_ttl.
        #[arg(long, default_value = "24h")]
        max_age: String,
        /// How long receipts stay in the stream.
        #[arg(long, default_value = "30d")]
        receipt_max_age: String,
        /// Stream replicas (1 for a single server; 3 in a cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        #[command(flatten)]
        conn: Conn,
    },
    /// List agents seen recently (their heartbeats), with labels and active hotfixes.
    Ls {
        #[arg(long)]
        nats: String,
        /// How long to listen for heartbeats after asking every agent for one.
        #[arg(long, default_value = "2s")]
        listen: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub async fn run(cmd: FleetCommand) -> CliResult {
    match cmd {
        FleetCommand::Init {
            nats,
            max_age,
            receipt_max_age,
            replicas,
            conn,
        } => {
            let max_age = HumanDuration::parse(&max_age)
                .map_err(|e| Failure::error(format!("--max-age: {e}")))?;
            let receipt_age = HumanDuration::parse(&receipt_max_age)
                .map_err(|e| Failure::error(format!("--receipt-max-age: {e}")))?;
            let js = context(&nats, &conn).await?;
            for config in [
                fleet::command_stream_config(max_age.0, replicas),
                fleet::receipt_stream_config(receipt_age.0, replicas),
            ] {
                let name = config.name.clone();
                let subjects = config.subjects.join(",");
                let info = js
                    .create_or_update_stream(config)
                    .await
                    .map_err(|e| Failure::error(format!("stream {name}: {e}")))?;
                if conn.json {
                    println!(
                        "{}",
                        json!({"stream": name, "subjects": subjects, "messages": info.state.messages})
                    );
                } else {
                    println!(
                        "stream {name} ready on {subjects} ({} messages)",
                        info.state.messages
                    );
                }
            }
            if !conn.json {
                println!(
                    "commands are kept {max_age}; keep that longer than every policy's max_ttl"
                );
            }
            Ok(())
        }
        FleetCommand::Ls { nats, listen, conn } => {
            let listen = HumanDuration::parse(&listen)
                .map_err(|e| Failure::error(format!("--listen: {e}")))?;
            let client = connect(&nats, &conn).await?;
            let agents = heartbeats(&client, listen.0).await?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&agents)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<10} {:<9} {:<7} LABELS",
                "AGENT", "FLEET", "VERSION", "ACTIVE"
            );
            for a in agents.values() {
                let labels = a["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<10} {:<9} {:<7} {labels}",
                    a["agent"].as_str().unwrap_or("?"),
                    a["fleet"].as_str().unwrap_or("?"),
                    a["version"].as_str().unwrap_or("?"),
                    a["active"].as_array().map(|v| v.len()).unwrap_or(0),
                );
            }
            eprintln!("{} agent(s) answered within {listen}", agents.len());
            Ok(())
        }
    }
}

async fn connect(url: &str, conn: &Conn) -> Result<async_nats::Client, Failure> {
    let mut opts = match &conn.nats_creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| Failure::error(format!("--nats-creds {}: {e}", path.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    let (urls, userinfo) = fleet::split_userinfo(url);
    if let Some((user, pass)) = userinfo {
        opts = opts.user_and_password(user, pass);
    }
    let client = opts
        .name("tourniquet-cli")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(urls.as_slice())
        .await
        .map_err(|e| Failure::error(format!("nats {}: {e}", fleet::redact_url(url))))?;
    Ok(client)
}

async fn context(url: &str, conn: &Conn) -> Result<Context, Failure> {
    Ok(jetstream::new(connect(url, conn).await?))
}

/// Publishes a signed envelope to a fleet; the command id is the
/// `Nats-Msg-Id`, so a retried send is stored once.
pub async fn publish(env: &Envelope, url: &str, conn: &Conn) -> CliResult {
    if !fleet::valid_token(&conn.fleet) {
        return Err(Failure::error(format!(
            "--fleet {:?} must be 1-64 of [A-Za-z0-9_-]",
            conn.fleet
        )));
    }
    let payload = env
        .payload_bytes()
        .ok()
        .and_then(|b| Payload::parse(&b).ok())
        .ok_or_else(|| Failure::error("the envelope's payload is not a valid command"))?;
    let js = context(url, conn).await?;
    let subject = fleet::command_subject(&conn.fleet);
    let body = serde_json::to_vec(env)?;
    let started = Instant::now();
    let seq = publish_acked(&js, &subject, &payload.id, body)
        .await
        .map_err(|e| {
            Failure::error(format!(
                "publishing to {subject}: {e} (are the streams there, and may these credentials publish? `tourniquet fleet init --nats {}` creates the streams)",
                fleet::redact_url(url)
            ))
        })?;
    if conn.json {
        println!(
            "{}",
            json!({"id": payload.id, "status": "published", "subject": subject, "stream_seq": seq})
        );
    } else {
        println!(
            "published {} to {subject} (stream seq {seq}, {} ms)",
            payload.id,
            started.elapsed().as_millis()
        );
        println!(
            "  follow it: tourniquet status {} --nats {} --watch",
            payload.id,
            fleet::redact_url(url)
        );
    }
    Ok(())
}

/// Asks every agent for a heartbeat and collects what arrives within `listen`.
async fn heartbeats(
    client: &async_nats::Client,
    listen: Duration,
) -> Result<BTreeMap<String, Value>, Failure> {
    let mut sub = client
        .subscribe(format!("{}.*", fleet::HEARTBEAT_PREFIX))
        .await
        .map_err(|e| Failure::error(format!("subscribing to heartbeats: {e}")))?;
    client
        .publish(fleet::PING_SUBJECT, "".into())
        .await
        .map_err(|e| Failure::error(format!("ping: {e}")))?;
    client.flush().await.ok();
    let mut agents = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + listen;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(v) = serde_json::from_slice::<Value>(&msg.payload) {
            if let Some(id) = v["agent"].as_str() {
                agents.insert(id.to_string(), v);
            }
        }
    }
    Ok(agents)
}

/// The command with this id, from the command stream.
async fn find_command(js: &Context, id: &str) -> Result<Option<Payload>, Failure> {
    let stream = js
        .get_stream_no_info(fleet::CMD_STREAM)
        .await
        .map_err(|e| Failure::error(e.to_string()))?;
    let mut seq = 1;
    loop {
        match stream
            .direct_get_next_for_subject("tourniquet.cmd.>", Some(seq))
            .await
        {
            Ok(msg) => {
                seq = msg.sequence + 1;
                let payload = Envelope::from_json(&msg.payload)
                    .ok()
                    .and_then(|e| e.payload_bytes().ok())
                    .and_then(|b| Payload::parse(&b).ok());
                if let Some(p) = payload.filter(|p| p.id == id) {
                    return Ok(Some(p));
                }
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Failure::error(format!(
                    "reading {}: {e}",
                    fleet::CMD_STREAM
                )))
            }
        }
    }
}

/// Every receipt of a command, newest per agent and receipt name.
async fn receipts(js: &Context, id: &str) -> Result<Vec<Receipt>, Failure> {
    let stream = js
        .get_stream_no_info(fleet::RECEIPT_STREAM)
        .await
        .map_err(|e| Failure::error(e.to_string()))?;
    let mut out = Vec::new();
    let mut seq = 1;
    loop {
        match stream
            .direct_get_next_for_subject(fleet::receipts_of(id), Some(seq))
            .await
        {
            Ok(msg) => {
                seq = msg.sequence + 1;
                if let Some(r) = receipt_payload(&msg.payload) {
                    out.push(r);
                }
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(Failure::error(format!(
                    "reading {}: {e}",
                    fleet::RECEIPT_STREAM
                )))
            }
        }
    }
}

/// How the fleet view names an agent's outcome: a refusal because the
/// command expired or its rollout halted is its own count, not a failure.
fn fleet_outcome(r: &Receipt) -> &'static str {
    match (r.outcome, r.reason_code) {
        (Outcome::Rejected, Some(Reason::Expired)) => "expired",
        (Outcome::Rejected, Some(Reason::Halted)) => "halted",
        (outcome, _) => outcome.as_str(),
    }
}

/// The fleet view of one command: counts by outcome and wave, the slowest
/// agents, failures, telemetry across agents, and who is silent.
pub fn fleet_view(
    id: &str,
    command: Option<&Payload>,
    receipts: &[Receipt],
    seen_agents: &BTreeMap<String, Value>,
) -> Value {
    // The latest receipt per agent decides its outcome.
    let mut latest: BTreeMap<String, &Receipt> = BTreeMap::new();
    for r in receipts {
        let keep = match latest.get(&r.agent.id) {
            Some(prev) => r.issued_at >= prev.issued_at,
            None => true,
        };
        if keep {
            latest.insert(r.agent.id.clone(), r);
        }
    }
    let mut by_outcome: BTreeMap<String, u32> = BTreeMap::new();
    let mut by_wave: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut timings = Vec::new();
    let mut checks: BTreeMap<String, (String, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (agent, r) in &latest {
        let outcome = fleet_outcome(r);
        *by_outcome.entry(outcome.to_string()).or_default() += 1;
        if let Some(p) = command.filter(|p| p.rollout.is_some()) {
            let wave = fleet::wave_of(p, agent)
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into());
            *by_wave
                .entry(wave)
                .or_default()
                .entry(outcome.to_string())
                .or_default() += 1;
        }
        let failed = matches!(r.outcome, Outcome::Failed | Outcome::RolledBack)
            || (r.outcome == Outcome::Rejected && !matches!(outcome, "expired" | "halted"));
        if failed {
            failures.push(json!({
                "agent": agent,
                "outcome": outcome,
                "reason_code": r.reason_code,
                "message": r.message.clone().or_else(|| r.actions.iter().find_map(|a| a.error.clone())),
            }));
        }
        // Time from the command's issue to this agent's first receipt.
        let first = receipts
            .iter()
            .filter(|x| &x.agent.id == agent)
            .map(|x| x.issued_at)
            .min()
            .unwrap_or(r.issued_at);
        if let Some(p) = command {
            timings.push((agent.clone(), p.issued_at.until(first).as_millis() as u64));
        }
        if let Some(t) = &r.telemetry {
            for c in &t.checks {
                let e = checks
                    .entry(c.probe.clone() + " " + &c.check)
                    .or_insert_with(|| (c.threshold.clone(), Vec::new(), Vec::new()));
                if let Some(b) = c.before {
                    e.1.push(b);
                }
                if let Some(a) = c.after {
                    e.2.push(a);
                }
            }
        }
    }
    timings.sort_by_key(|t| std::cmp::Reverse(t.1));
    let expected_ids: Vec<String> = match command {
        Some(p) if !p.target.agents.is_empty() => p.target.agents.clone(),
        Some(p) => seen_agents
            .iter()
            .filter(|(_, hb)| {
                p.target.labels.iter().all(|(k, pat)| {
                    hb["labels"][k]
                        .as_str()
                        .is_some_and(|v| crate::trust::glob::glob_match(pat, v))
                })
            })
            .map(|(id, _)| id.clone())
            .collect(),
        None => Vec::new(),
    };
    let silent: Vec<&String> = expected_ids
        .iter()
        .filter(|a| !latest.contains_key(*a))
        .collect();
    let telemetry: Vec<Value> = checks
        .into_iter()
        .map(|(name, (threshold, before, after))| {
            json!({
                "check": name,
                "threshold": threshold,
                "agents": after.len(),
                "before_median": median(&before),
                "after_median": median(&after),
                "after_worst": after.iter().cloned().fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
            })
        })
        .collect();
    let expected = command
        .and_then(|p| p.expect)
        .map(u64::from)
        .or_else(|| (!expected_ids.is_empty()).then_some(expected_ids.len() as u64));
    json!({
        "id": id,
        "found_command": command.is_some(),
        "reason": command.map(|p| p.reason.clone()),
        "issued_at": command.map(|p| p.issued_at),
        "expires": command.map(|p| p.expires),
        "rollout": command.and_then(|p| p.rollout.clone()),
        "answered": latest.len(),
        "expected": expected,
        // Every receipt reports a settled outcome (a kept hotfix with a
        // hold still sends `reverted` later).
        "settled": latest.len(),
        "by_outcome": by_outcome,
        "by_wave": by_wave,
        "slowest": timings.iter().take(5).map(|(a, ms)| json!({"agent": a, "ms_to_receipt": ms})).collect::<Vec<_>>(),
        "failures": failures,
        "telemetry": telemetry,
        "silent": silent,
        "agents": latest.iter().map(|(a, r)| (a.clone(), json!({"outcome": r.outcome, "reason_code": r.reason_code}))).collect::<BTreeMap<_, _>>(),
    })
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Some(s[s.len() / 2])
}

fn render_view(v: &Value) -> String {
    let mut out = String::new();
    let answered = v["answered"].as_u64().unwrap_or(0);
    let of = v["expected"]
        .as_u64()
        .map(|e| format!(" of {e} expected"))
        .unwrap_or_default();
    out.push_str(&format!(
        "fleet view of {}: {answered}{of} agent(s) answered\n",
        v["id"].as_str().unwrap_or("")
    ));
    if let Some(r) = v["reason"].as_str() {
        out.push_str(&format!("  reason:   {r}\n"));
    }
    if v["found_command"] == false {
        out.push_str("  (the command is not in TOURNIQUET_CMD: expired from the stream, or never published)\n");
    }
    let outcomes = v["by_outcome"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    out.push_str(&format!("  outcomes: {outcomes}\n"));
    if let Some(waves) = v["by_wave"].as_object().filter(|w| !w.is_empty()) {
        for (w, counts) in waves {
            let c = counts
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            out.push_str(&format!("  wave {w}:   {c}\n"));
        }
    }
    if let Some(f) = v["failures"].as_array().filter(|f| !f.is_empty()) {
        out.push_str("  failures:\n");
        for x in f {
            out.push_str(&format!(
                "    {:<20} {:<12} {} {}\n",
                x["agent"].as_str().unwrap_or(""),
                x["outcome"].as_str().unwrap_or(""),
                x["reason_code"].as_str().unwrap_or(""),
                x["message"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(s) = v["slowest"].as_array().filter(|s| !s.is_empty()) {
        let list: Vec<String> = s
            .iter()
            .map(|x| {
                format!(
                    "{} {} ms",
                    x["agent"].as_str().unwrap_or(""),
                    x["ms_to_receipt"]
                )
            })
            .collect();
        out.push_str(&format!("  slowest:  {}\n", list.join(", ")));
    }
    if let Some(t) = v["telemetry"].as_array().filter(|t| !t.is_empty()) {
        out.push_str(&format!(
            "  {:<28} {:>10} {:>12} {:>12} {:>12}\n",
            "CHECK", "THRESHOLD", "BEFORE p50", "AFTER p50", "AFTER worst"
        ));
        for c in t {
            let f = |x: &Value| x.as_f64().map(|v| format!("{v:.4}")).unwrap_or("-".into());
            out.push_str(&format!(
                "  {:<28} {:>10} {:>12} {:>12} {:>12}\n",
                c["check"].as_str().unwrap_or(""),
                c["threshold"].as_str().unwrap_or(""),
                f(&c["before_median"]),
                f(&c["after_median"]),
                f(&c["after_worst"])
            ));
        }
    }
    if let Some(s) = v["silent"].as_array().filter(|s| !s.is_empty()) {
        let names: Vec<&str> = s.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!(
            "  silent:   {} (expected, no receipt yet)\n",
            names.join(", ")
        ));
    }
    out
}

/// `tourniquet status ID --nats URL [--watch] [--json]`.
pub async fn status(args: &StatusArgs, url: &str) -> CliResult {
    let id = args.id.clone().unwrap_or_default();
    let client = connect(url, &args.conn).await?;
    let js = jetstream::new(client.clone());
    let command = find_command(&js, &id).await?;
    let started = Instant::now();
    loop {
        let seen = heartbeats(&client, Duration::from_millis(500)).await?;
        let all = receipts(&js, &id).await?;
        let view = fleet_view(&id, command.as_ref(), &all, &seen);
        let done = view["expected"]
            .as_u64()
            .is_some_and(|e| view["settled"].as_u64().unwrap_or(0) >= e);
        if args.conn.json {
            println!("{}", serde_json::to_string(&view)?);
        } else {
            if args.watch {
                println!("— {} s —", started.elapsed().as_secs());
            }
            print!("{}", render_view(&view));
        }
        if !args.watch || done || started.elapsed() > Duration::from_secs(args.conn.wait) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
