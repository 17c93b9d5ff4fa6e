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
use crate::command::payload::{HumanDuration, Payload, Timestamp};
use crate::command::rejection::Reason;
use crate::lifecycle::receipt::{Outcome, Receipt};
use crate::transport::nats::fleet;
use crate::transport::nats::{publish_acked, receipt_payload};

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Create or update the TOURNIQUET_CMD and TOURNIQUET_RECEIPTS streams (an operator action).
    #[command(
        after_help = "Example:\n  tourniquet fleet init --to nats://nats-1:4222 --replicas 3 --max-age 24h"
    )]
    Init {
        /// The NATS server, e.g. nats://127.0.0.1:4222. Default: $TOURNIQUET_TO.
        // `--nats` is the name older scripts use.
        #[arg(
            long = "to",
            alias = "nats",
            env = "TOURNIQUET_TO",
            value_name = "nats://HOST:PORT"
        )]
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
    /// List the agents that answer, with labels and active hotfixes.
    ///
    /// Asks every agent for a heartbeat and returns once the answers stop
    /// coming: after --expect N agents answered, or else 300 ms after the
    /// last answer; never later than --listen.
    #[command(
        after_help = "Example:\n  tourniquet fleet ls --to nats://nats-1:4222 --expect 40   # returns as soon as 40 agents answered"
    )]
    Ls {
        /// The NATS server, e.g. nats://127.0.0.1:4222. Default: $TOURNIQUET_TO.
        #[arg(
            long = "to",
            alias = "nats",
            env = "TOURNIQUET_TO",
            value_name = "nats://HOST:PORT"
        )]
        nats: String,
        /// Return as soon as this many agents answered (still at most --listen).
        #[arg(long, value_name = "N")]
        expect: Option<usize>,
        /// The longest to wait for answers after asking every agent for one.
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
        FleetCommand::Ls {
            nats,
            expect,
            listen,
            conn,
        } => {
            let listen = HumanDuration::parse(&listen)
                .map_err(|e| Failure::error(format!("--listen: {e}")))?;
            let client = connect(&nats, &conn).await?;
            let until = match expect {
                Some(n) => Until::Count(n),
                None => Until::Quiet(LS_QUIET),
            };
            let agents = heartbeats(&client, None, until, listen.0).await?;
            match expect {
                Some(n) if agents.len() < n => eprintln!(
                    "warning: {} of {n} expected agent(s) answered within {listen}",
                    agents.len()
                ),
                _ => {}
            }
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
            match expect {
                Some(n) if agents.len() >= n => {
                    eprintln!("{} agent(s) answered ({n} expected)", agents.len())
                }
                Some(_) => {}
                None => eprintln!(
                    "{} agent(s) answered (no more within {} ms of the last, or {listen} in all)",
                    agents.len(),
                    LS_QUIET.as_millis()
                ),
            }
            Ok(())
        }
    }
}

async fn connect(url: &str, conn: &Conn) -> Result<async_nats::Client, Failure> {
    if !matches!(super::Destination::parse(url)?, super::Destination::Nats(_)) {
        return Err(Failure::usage(format!(
            "--to {}: fleet commands talk to a NATS server, nats://HOST:PORT",
            fleet::redact_url(url)
        )));
    }
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
        .map_err(|e| super::client::nats_unreachable(url, &conn.fleet, &e))?;
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
    let client = connect(url, conn).await?;
    // A command for a fleet no agent answers for is kept in the stream
    // and applied by agents that join later, so this warns and goes on:
    // a misspelt --fleet is the usual cause, and it is cheap to see.
    let answering = heartbeats(
        &client,
        Some(&conn.fleet),
        Until::Count(1),
        PUBLISH_HEARTBEAT_WAIT,
    )
    .await?;
    if answering.is_empty() {
        eprintln!(
            "warning: no agent of fleet '{}' sent a heartbeat when asked; is the fleet name right? (tourniquet fleet ls --to {} lists the agents that answer)",
            conn.fleet,
            fleet::redact_url(url)
        );
    }
    let js = jetstream::new(client);
    let subject = fleet::command_subject(&conn.fleet);
    let body = serde_json::to_vec(env)?;
    let started = Instant::now();
    let seq = publish_acked(&js, &subject, &payload.id, body)
        .await
        .map_err(|e| {
            Failure::error(format!(
                "publishing to {subject}: {e} (are the streams there, and may these credentials publish? `tourniquet fleet init --to {}` creates the streams)",
                fleet::redact_url(url)
            ))
        })?;
    let halts = payload.actions.iter().find_map(|a| a.halt_target());
    if conn.json {
        let mut out =
            json!({"id": payload.id, "status": "published", "subject": subject, "stream_seq": seq});
        if let Some(target) = halts {
            out["halts"] = json!(target);
        }
        println!("{out}");
        return Ok(());
    }
    println!(
        "published {} to {subject} (stream seq {seq}, {} ms)",
        payload.id,
        started.elapsed().as_millis()
    );
    match halts {
        // A halt has no receipts of its own to follow: what it changes is
        // the rollout it halts, which ends without more waves.
        Some(target) => println!(
            "  rollout {target} is halted: waves that have not started will not start, and their agents report `halted` when their wave would have started\n  see it: tourniquet status {target} --to {}",
            fleet::redact_url(url)
        ),
        None => println!(
            "  follow it: tourniquet status {} --to {} --watch",
            payload.id,
            fleet::redact_url(url)
        ),
    }
    Ok(())
}

/// How long `send` waits for one heartbeat of the fleet before it warns.
/// Agents answer a ping at once; this is only paid when none does.
const PUBLISH_HEARTBEAT_WAIT: Duration = Duration::from_secs(1);

/// How long `fleet ls` waits after the last answer for another: agents
/// answer a ping at once, so a pause this long means the answers are in.
const LS_QUIET: Duration = Duration::from_millis(300);

/// When to stop collecting heartbeats, short of the overall limit.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// Once this many agents answered.
    Count(usize),
    /// Once no answer came for this long after the last one. Before the
    /// first answer, only the overall limit applies.
    Quiet(Duration),
}

/// Asks every agent for a heartbeat and collects the answers (of one
/// fleet, when `fleet` is given) until `until` or `limit`, whichever
/// comes first.
async fn heartbeats(
    client: &async_nats::Client,
    fleet: Option<&str>,
    until: Until,
    limit: Duration,
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
    let deadline = tokio::time::Instant::now() + limit;
    let mut wait_until = deadline;
    loop {
        if let Until::Count(n) = until {
            if agents.len() >= n {
                break;
            }
        }
        let Ok(Some(msg)) = tokio::time::timeout_at(wait_until, sub.next()).await else {
            break;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&msg.payload) else {
            continue;
        };
        if fleet.is_some_and(|f| v["fleet"].as_str() != Some(f)) {
            continue;
        }
        if let Some(id) = v["agent"].as_str() {
            agents.insert(id.to_string(), v);
            if let Until::Quiet(quiet) = until {
                wait_until = deadline.min(tokio::time::Instant::now() + quiet);
            }
        }
    }
    Ok(agents)
}

/// What the command stream says about one command: the command itself,
/// the fleet it was published to, and the halts sent for it. Read from
/// where the last read stopped, so `status --watch` sees a halt sent
/// while it watches without reading the stream again.
#[derive(Default)]
struct CommandLog {
    next_seq: u64,
    command: Option<Payload>,
    fleet: Option<String>,
    halts: Vec<Payload>,
}

impl CommandLog {
    async fn refresh(&mut self, js: &Context, id: &str) -> Result<(), Failure> {
        let stream = js
            .get_stream_no_info(fleet::CMD_STREAM)
            .await
            .map_err(|e| Failure::error(e.to_string()))?;
        loop {
            let from = self.next_seq.max(1);
            let msg = match stream
                .direct_get_next_for_subject("tourniquet.cmd.>", Some(from))
                .await
            {
                Ok(msg) => msg,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    return Err(Failure::error(format!(
                        "reading {}: {e}",
                        fleet::CMD_STREAM
                    )))
                }
            };
            self.next_seq = msg.sequence.saturating_add(1);
            let Some(p) = Envelope::from_json(&msg.payload)
                .ok()
                .and_then(|e| e.payload_bytes().ok())
                .and_then(|b| Payload::parse(&b).ok())
            else {
                continue;
            };
            if p.id == id && self.command.is_none() {
                self.fleet = msg
                    .subject
                    .as_str()
                    .strip_prefix("tourniquet.cmd.")
                    .map(String::from);
                self.command = Some(p);
            } else if p
                .actions
                .iter()
                .any(|a| a.halt_target().is_some_and(|t| t.eq_ignore_ascii_case(id)))
            {
                self.halts.push(p);
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

/// Where an expected agent without a receipt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Its wave starts later; it says nothing until then.
    WaitingForWave,
    /// Its wave starts later, but the rollout is halted: it will report
    /// `halted` then.
    WillReportHalted,
    /// It should have answered by now: no rollout, or its wave started.
    NoReceipt,
}

impl Pending {
    fn as_str(self) -> &'static str {
        match self {
            Pending::WaitingForWave => "waiting_for_wave",
            Pending::WillReportHalted => "will_report_halted",
            Pending::NoReceipt => "no_receipt",
        }
    }
}

/// The fleet view of one command: counts by outcome and wave, the slowest
/// agents, failures, telemetry across agents, and where each expected
/// agent without a receipt stands.
///
/// Waves are computed here exactly as each agent computes its own
/// ([`fleet::wave_of`], [`fleet::wave_start`]), so an agent waiting for
/// its wave is shown as waiting, with the time its wave starts, not as
/// silent. `halts` are the signed halts of this command seen on the stream.
pub fn fleet_view(
    id: &str,
    command: Option<&Payload>,
    halts: &[Payload],
    receipts: &[Receipt],
    seen_agents: &BTreeMap<String, Value>,
    now: Timestamp,
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
    // Halted: a signed halt is on the stream, or an agent already said so
    // (its wave found too many failures before it).
    let reported_halted = by_outcome.get("halted").copied().unwrap_or(0);
    let halt = halts.iter().min_by_key(|h| h.issued_at);
    let halted = halt.is_some() || reported_halted > 0;
    let mut pending = Vec::new();
    for agent in expected_ids.iter().filter(|a| !latest.contains_key(*a)) {
        let wave = command.and_then(|p| {
            let w = fleet::wave_of(p, agent)?;
            Some((w, fleet::wave_start(p, w)))
        });
        let state = match wave {
            Some((_, start)) if now < start && halted => Pending::WillReportHalted,
            Some((_, start)) if now < start => Pending::WaitingForWave,
            _ => Pending::NoReceipt,
        };
        pending.push(json!({
            "agent": agent,
            "state": state.as_str(),
            "wave": wave.map(|(w, _)| w),
            "wave_starts_at": wave.map(|(_, t)| t),
            "starts_in_s": wave.filter(|(_, t)| now < *t).map(|(_, t)| whole_seconds(now.until(t))),
            "started_s_ago": wave.filter(|(_, t)| now >= *t).map(|(_, t)| t.until(now).as_secs()),
        }));
    }
    let ids_in = |state: Pending| -> Vec<Value> {
        pending
            .iter()
            .filter(|p| p["state"] == state.as_str())
            .map(|p| p["agent"].clone())
            .collect()
    };
    let silent = ids_in(Pending::NoReceipt);
    let mut waiting = ids_in(Pending::WaitingForWave);
    waiting.extend(ids_in(Pending::WillReportHalted));
    // The next wave that will start, while the rollout goes on.
    let next_wave = pending
        .iter()
        .filter(|p| p["state"] == Pending::WaitingForWave.as_str())
        .min_by_key(|p| p["wave"].as_u64())
        .map(|first| {
            let wave = first["wave"].clone();
            let agents = pending.iter().filter(|p| p["wave"] == wave).count();
            json!({
                "wave": wave,
                "starts_at": first["wave_starts_at"],
                "starts_in_s": first["starts_in_s"],
                "agents": agents,
            })
        });
    let halted_view = halted.then(|| {
        json!({
            "by": halt.map(|h| h.id.clone()),
            "issuer": halt.map(|h| h.issuer.clone()),
            "reason": halt.map(|h| h.reason.clone()),
            "issued_at": halt.map(|h| h.issued_at),
            "agents_reported": reported_halted,
        })
    });
    let rejected = latest
        .values()
        .filter(|r| r.outcome == Outcome::Rejected)
        .count();
    // Every agent rejected it: all answered, none is still to answer, and
    // every answer is a refusal.
    let all_rejected = rejected > 0 && rejected == latest.len() && pending.is_empty();
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
        "waiting": waiting,
        "pending": pending,
        "next_wave": next_wave,
        "halted": halted_view,
        "rejected": rejected,
        "all_rejected": all_rejected,
        "agents": latest.iter().map(|(a, r)| {
            let wave = command.and_then(|p| fleet::wave_of(p, a));
            (a.clone(), json!({"outcome": r.outcome, "reason_code": r.reason_code, "wave": wave}))
        }).collect::<BTreeMap<_, _>>(),
    })
}

/// Seconds, rounded up: "starts in 1 s" until it has started.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The nearest-rank median, as every percentile in Tourniquet is.
fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    crate::telemetry::percentile(&s, 50)
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
    let halted = &v["halted"];
    if !halted.is_null() {
        match halted["by"].as_str() {
            Some(by) => out.push_str(&format!(
                "  halted:   by {by} ({}: {}); waves that had not started will not start\n",
                halted["issuer"].as_str().unwrap_or("?"),
                halted["reason"].as_str().unwrap_or("")
            )),
            None => out.push_str(&format!(
                "  halted:   {} agent(s) reported `halted` (failures in earlier waves); later waves will not start\n",
                halted["agents_reported"]
            )),
        }
    }
    for line in pending_lines(v["pending"].as_array().map(Vec::as_slice).unwrap_or(&[])) {
        out.push_str(&line);
    }
    let rejected = v["rejected"].as_u64().unwrap_or(0);
    if v["all_rejected"] == true {
        out.push_str(&format!(
            "  rejected: every agent ({rejected}) rejected it\n"
        ));
    } else if rejected > 0 {
        out.push_str(&format!(
            "  rejected: {rejected} of {answered} agent(s) that answered rejected it (see failures)\n"
        ));
    }
    if let Some(next) = v["next_wave"].as_object() {
        out.push_str(&format!(
            "  next:     wave {} starts in {} ({} agent(s)); --watch follows it\n",
            next["wave"],
            fmt_secs(next["starts_in_s"].as_u64().unwrap_or(0)),
            next["agents"]
        ));
    }
    out
}

/// One line per group of expected agents without a receipt, grouped by
/// where they stand and their wave, in the order the groups come.
fn pending_lines(pending: &[Value]) -> Vec<String> {
    let mut groups: Vec<(&Value, Vec<&str>)> = Vec::new();
    for p in pending {
        match groups
            .iter_mut()
            .find(|(first, _)| first["state"] == p["state"] && first["wave"] == p["wave"])
        {
            Some((_, names)) => names.push(p["agent"].as_str().unwrap_or("?")),
            None => groups.push((p, vec![p["agent"].as_str().unwrap_or("?")])),
        }
    }
    groups
        .into_iter()
        .map(|(first, names)| {
            let names = name_list(&names);
            let wave = &first["wave"];
            let secs = |k: &str| fmt_secs(first[k].as_u64().unwrap_or(0));
            match first["state"].as_str() {
                Some("waiting_for_wave") => format!(
                    "  waiting:  {names}: waiting for wave {wave} (starts in {})\n",
                    secs("starts_in_s")
                ),
                Some("will_report_halted") => format!(
                    "  waiting:  {names}: wave {wave} will not start (halted); they report `halted` when it would have (in {})\n",
                    secs("starts_in_s")
                ),
                _ if wave.is_null() => {
                    format!("  silent:   {names} (expected, no receipt yet)\n")
                }
                _ => format!(
                    "  silent:   {names}: wave {wave} started {} ago, no receipt yet\n",
                    secs("started_s_ago")
                ),
            }
        })
        .collect()
}

/// Agent names for one line: the first few, then how many more.
fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 10;
    if names.len() <= SHOWN {
        return names.join(", ");
    }
    format!(
        "{} and {} more",
        names[..SHOWN].join(", "),
        names.len() - SHOWN
    )
}

/// "40 s" up to two minutes, then "5m 3s".
fn fmt_secs(secs: u64) -> String {
    if secs < 120 {
        format!("{secs} s")
    } else {
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    }
}

/// `tourniquet status ID --nats URL [--watch] [--json]`.
pub async fn status(args: &StatusArgs, url: &str) -> CliResult {
    let id = args.id.clone().unwrap_or_default();
    let client = connect(url, &args.conn).await?;
    let js = jetstream::new(client.clone());
    let mut log = CommandLog::default();
    let started = Instant::now();
    loop {
        log.refresh(&js, &id).await?;
        // Only the command's own fleet is expected to answer it.
        let seen = heartbeats(
            &client,
            log.fleet.as_deref(),
            Until::Quiet(LS_QUIET),
            STATUS_HEARTBEAT_LIMIT,
        )
        .await?;
        let all = receipts(&js, &id).await?;
        let view = fleet_view(
            &id,
            log.command.as_ref(),
            &log.halts,
            &all,
            &seen,
            Timestamp::now(),
        );
        let settled = view["settled"].as_u64().unwrap_or(0);
        let all_in = view["expected"].as_u64().is_some_and(|e| settled >= e);
        // Once halted, the agents still to answer only report `halted`
        // when their wave would have started: nothing is left to follow.
        let halted_out = !view["halted"].is_null()
            && view["pending"].as_array().is_some_and(|p| {
                p.iter()
                    .all(|x| x["state"] == Pending::WillReportHalted.as_str())
            });
        let done = all_in || halted_out;
        if args.conn.json {
            println!("{}", serde_json::to_string(&view)?);
        } else {
            if args.watch {
                println!("— {} s —", started.elapsed().as_secs());
            }
            print!("{}", render_view(&view));
        }
        if !args.watch || done || started.elapsed() > Duration::from_secs(args.conn.wait) {
            if view["all_rejected"] == true {
                return Err(Failure {
                    code: super::exit::REJECTED,
                    message: format!(
                        "every agent ({}) rejected {id}; see the failures",
                        view["rejected"]
                    ),
                });
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The longest `status` waits for heartbeats on each refresh.
const STATUS_HEARTBEAT_LIMIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01JD3Z8K6Q0V6N9W2X4Y5Z7A8B";

    fn command(rollout: &str) -> Payload {
        let text = format!(
            r#"{{"id":"{ID}","issuer":"a","issued_at":"2026-12-01T18:00:00Z","expires":"2026-12-01T18:15:00Z","reason":"r","target":{{}},"actions":[{{"resource":"f","op":"flag.set","flag":"x","variant":"off"}}]{rollout}}}"#
        );
        Payload::parse(text.as_bytes()).expect("payload")
    }

    fn receipt(agent: &str, outcome: &str, reason_code: Option<&str>) -> Receipt {
        serde_json::from_value(json!({
            "command_id": ID, "envelope_sha256": "00",
            "agent": {"id": agent, "labels": {}, "key": "k"},
            "signers": [], "decision": "x", "reason_code": reason_code,
            "outcome": outcome, "dry_run": false, "actions": [],
            "timeline": [], "issued_at": "2026-12-01T18:00:01Z",
        }))
        .expect("receipt")
    }

    fn heartbeats_of(agents: &[&str]) -> BTreeMap<String, Value> {
        agents
            .iter()
            .map(|a| (a.to_string(), json!({"agent": a, "labels": {}})))
            .collect()
    }

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).expect("time")
    }

    /// Agents split over the two waves of `p`: (wave 0, wave 1).
    fn split(p: &Payload) -> (Vec<String>, Vec<String>) {
        (0..40)
            .map(|i| format!("a{i}"))
            .partition(|a| fleet::wave_of(p, a) == Some(0))
    }

    #[test]
    fn agents_of_a_later_wave_wait_with_the_time_their_wave_starts() {
        let p = command(r#","rollout":{"waves":[50,100],"wave_bake":"60s"}"#);
        let (early, late) = split(&p);
        let all: Vec<&str> = early.iter().chain(&late).map(String::as_str).collect();
        let receipts: Vec<Receipt> = early.iter().map(|a| receipt(a, "kept", None)).collect();
        let now = at("2026-12-01T18:00:20Z");
        let v = fleet_view(ID, Some(&p), &[], &receipts, &heartbeats_of(&all), now);
        assert_eq!(v["silent"], json!([]), "{v}");
        assert_eq!(v["waiting"].as_array().unwrap().len(), late.len(), "{v}");
        assert_eq!(v["pending"][0]["state"], "waiting_for_wave");
        assert_eq!(v["pending"][0]["starts_in_s"], 40);
        assert_eq!(v["next_wave"]["wave"], 1);
        let text = render_view(&v);
        assert!(
            text.contains("waiting for wave 1 (starts in 40 s)"),
            "{text}"
        );
        assert!(text.contains("next:     wave 1 starts in 40 s"), "{text}");

        // Once the wave started, an agent without a receipt is silent.
        let v = fleet_view(
            ID,
            Some(&p),
            &[],
            &receipts,
            &heartbeats_of(&all),
            at("2026-12-01T18:01:20Z"),
        );
        assert_eq!(v["waiting"], json!([]), "{v}");
        let text = render_view(&v);
        assert!(
            text.contains("wave 1 started 20 s ago, no receipt yet"),
            "{text}"
        );
        assert_eq!(v["all_rejected"], false);
    }

    #[test]
    fn a_halted_rollout_says_so_and_suggests_no_next_wave() {
        let p = command(r#","rollout":{"waves":[50,100],"wave_bake":"60s"}"#);
        let (early, late) = split(&p);
        let all: Vec<&str> = early.iter().chain(&late).map(String::as_str).collect();
        let receipts: Vec<Receipt> = early.iter().map(|a| receipt(a, "kept", None)).collect();
        let halt_text = r#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8C","issuer":"alice","issued_at":"2026-12-01T18:00:10Z","expires":"2026-12-01T18:15:00Z","reason":"INC-7","target":{},"actions":[{"op":"halt","command":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8B"}]}"#;
        let halt = Payload::parse(halt_text.as_bytes()).expect("halt");
        let now = at("2026-12-01T18:00:20Z");
        let v = fleet_view(ID, Some(&p), &[halt], &receipts, &heartbeats_of(&all), now);
        assert_eq!(v["halted"]["by"], "01JD3Z8K6Q0V6N9W2X4Y5Z7A8C", "{v}");
        assert!(v["next_wave"].is_null(), "{v}");
        assert_eq!(v["pending"][0]["state"], "will_report_halted");
        let text = render_view(&v);
        assert!(
            text.contains("halted:   by 01JD3Z8K6Q0V6N9W2X4Y5Z7A8C (alice: INC-7)"),
            "{text}"
        );
        assert!(!text.contains("waiting for wave"), "{text}");
        assert!(!text.contains("next:"), "{text}");
    }

    #[test]
    fn rejections_are_counted_and_all_of_them_is_said() {
        let p = command("");
        let seen = heartbeats_of(&["a", "b"]);
        let now = at("2026-12-01T18:00:20Z");
        let some = [
            receipt("a", "rejected", Some("invalid_action")),
            receipt("b", "kept", None),
        ];
        let v = fleet_view(ID, Some(&p), &[], &some, &seen, now);
        assert_eq!(
            (v["rejected"].clone(), v["all_rejected"].clone()),
            (json!(1), json!(false))
        );
        assert!(render_view(&v).contains("1 of 2 agent(s) that answered rejected it"));

        let all = [
            receipt("a", "rejected", Some("invalid_action")),
            receipt("b", "rejected", Some("expired")),
        ];
        let v = fleet_view(ID, Some(&p), &[], &all, &seen, now);
        assert_eq!(v["all_rejected"], true, "{v}");
        assert!(render_view(&v).contains("every agent (2) rejected it"));

        // One still to answer: not every agent has rejected it yet.
        let seen = heartbeats_of(&["a", "b", "c"]);
        let v = fleet_view(ID, Some(&p), &[], &all, &seen, now);
        assert_eq!(v["all_rejected"], false, "{v}");
        assert_eq!(v["silent"], json!(["c"]), "{v}");
    }
}
