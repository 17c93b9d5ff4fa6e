//! The fleet transport: NATS JetStream as the log, a core subscription for
//! live delivery, and stateless catch-up.
//!
//! Why this shape (measured at 100 to 10,000 agents on a 2.9 server): one
//! JetStream consumer per agent costs 40–50 KiB of server memory each and
//! recovers slowly after a server restart; plain core subscriptions lose
//! what is published during an outage. So each agent holds a core
//! subscription on the stream's republish subject (every message carries
//! its stream sequence and the previous sequence on the subject), keeps the
//! last sequence it handled in its state dir, and on start, on every
//! reconnect and on any gap walks the stream with Direct Get from there.
//! Direct Get keeps no server-side state per agent.
//!
//! The transport only moves bytes. Every command goes to
//! [`Lifecycle::submit`] and is verified there exactly as from the HTTP API;
//! the transport reads a verified copy ([`Lifecycle::peek`]) only to decide
//! whether the command is for this agent and, for waved rollouts, when.

pub mod fleet;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, context::Context, stream::DirectGetErrorKind};
use async_nats::{ConnectOptions, Event, HeaderMap};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};

use crate::command::envelope::{sha256_hex, Envelope};
use crate::command::payload::{Payload, Timestamp, HALT_OP};
use crate::command::rejection::{Reason, Rejection};
use crate::config::NatsSection;
use crate::lifecycle::receipt::Receipt;
use crate::lifecycle::{Lifecycle, SettledReceipt};

/// How many envelope hashes the transport remembers to drop redeliveries.
const SEEN_LIMIT: usize = 20_000;
/// Catch-up runs this often even without a trigger: a safety net for a
/// republished message lost while the subscription was being re-established.
const CATCH_UP_EVERY: Duration = Duration::from_secs(60);
/// How often a non-empty receipt spool is retried without a reconnect.
const SPOOL_RETRY: Duration = Duration::from_secs(5);

/// Connects (in the background: the agent starts even when NATS is down)
/// and spawns the transport's tasks.
pub async fn start(lc: Arc<Lifecycle>, cfg: NatsSection, state_dir: &Path) -> Result<(), String> {
    let dir = state_dir.join("nats");
    for d in [dir.clone(), dir.join("spool"), dir.join("pending")] {
        crate::state::create_private_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let agent_id = lc.identity().id.clone();
    if !fleet::valid_token(&agent_id) {
        return Err(format!(
            "agent id {agent_id:?} cannot join a fleet: it must be 1-64 of [A-Za-z0-9_-]"
        ));
    }
    let (reconnected_tx, reconnected) = watch::channel(0u64);
    let client = connect(&cfg, &agent_id, reconnected_tx).await?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(cfg.request_timeout.0);
    if cfg.create_streams {
        ensure_streams(&js, Duration::from_secs(24 * 3600), 1).await?;
    }
    let cmd_stream = js
        .get_stream_no_info(fleet::CMD_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let receipt_stream = js
        .get_stream_no_info(fleet::RECEIPT_STREAM)
        .await
        .map_err(|e| e.to_string())?;

    let shared = Arc::new(Shared {
        lc: lc.clone(),
        dir: dir.clone(),
        subject: fleet::command_subject(&cfg.fleet),
        agent_id: agent_id.clone(),
        claimed: Mutex::new(HashMap::new()),
        halted: Mutex::new(load_halted(&dir)),
        js: js.clone(),
        cmd_stream,
        receipt_stream,
        spool_limit: cfg.spool_limit,
        spool_kick: Notify::new(),
        spooled: AtomicUsize::new(list_json(&dir.join("spool")).len()),
        client: client.clone(),
    });

    // Receipts: lifecycle → spool → stream.
    let (tx, rx) = mpsc::unbounded_channel();
    lc.set_receipt_sink(tx);
    tokio::spawn(spool_receipts(shared.clone(), rx));
    tokio::spawn(drain_spool(shared.clone(), reconnected.clone()));

    // Commands: live subscription plus catch-up, handled one at a time.
    let live = client
        .subscribe(fleet::live_subject(&cfg.fleet))
        .await
        .map_err(|e| format!("subscribing to {}: {e}", fleet::live_subject(&cfg.fleet)))?;
    tokio::spawn(receive_commands(shared.clone(), live, reconnected.clone()));
    for pending in list_json(&dir.join("pending")) {
        if let Ok(bytes) = std::fs::read(&pending) {
            let shared = shared.clone();
            tokio::spawn(async move { shared.clone().run_waved(bytes).await });
        }
    }

    tokio::spawn(heartbeat(
        shared.clone(),
        client,
        cfg.fleet.clone(),
        cfg.heartbeat.0,
        reconnected,
    ));
    tracing::info!(fleet = %cfg.fleet, url = %fleet::redact_url(&cfg.url), "fleet transport started");
    Ok(())
}

/// Creates or updates both streams: `tourniquet fleet init`, or an agent
/// with `create_streams = true`.
pub async fn ensure_streams(
    js: &Context,
    max_age: Duration,
    replicas: usize,
) -> Result<(), String> {
    for config in [
        fleet::command_stream_config(max_age, replicas),
        fleet::receipt_stream_config(max_age.max(Duration::from_secs(7 * 24 * 3600)), replicas),
    ] {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|e| format!("stream {name}: {e}"))?;
    }
    Ok(())
}

/// A client that never gives up reconnecting, backs off with jitter up to
/// the configured bound (10,000 agents must not reconnect in lockstep), and
/// counts every (re)connect in `connections`, so each task can catch up,
/// flush its spool or announce itself, even one that was busy at the time.
pub async fn connect(
    cfg: &NatsSection,
    name: &str,
    connections: watch::Sender<u64>,
) -> Result<async_nats::Client, String> {
    let connections = Arc::new(connections);
    let mut opts = match &cfg.credentials {
        Some(path) => {
            check_private(path)?;
            ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| format!("nats.credentials {}: {e}", path.display()))?
        }
        None => ConnectOptions::new(),
    };
    let max = cfg.max_reconnect_delay.0;
    opts = opts
        .name(format!("tourniquet-agent {name}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .request_timeout(Some(cfg.request_timeout.0))
        .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max))
        .event_callback(move |event| {
            let connections = connections.clone();
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!("nats: connected");
                        connections.send_modify(|n| *n += 1);
                    }
                    Event::Disconnected => tracing::warn!("nats: disconnected; reconnecting"),
                    other => tracing::info!(event = %other, "nats"),
                }
            }
        });
    let (urls, userinfo) = fleet::split_userinfo(&cfg.url);
    if let Some((user, pass)) = userinfo {
        opts = opts.user_and_password(user, pass);
    }
    opts.connect(urls.as_slice())
        .await
        .map_err(|e| format!("nats {}: {e}", fleet::redact_url(&cfg.url)))
}

/// Exponential from 100 ms, capped at `max`, with the upper half jittered.
pub fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let exp = Duration::from_millis(100).saturating_mul(1u32 << attempts.min(16));
    let ceiling = exp.min(max);
    let mut b = [0u8; 4];
    let _ = rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut b);
    let frac = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
    ceiling.mul_f64(0.5 + 0.5 * frac)
}

fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: NATS credentials are readable by others; chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}

struct Shared {
    lc: Arc<Lifecycle>,
    dir: PathBuf,
    subject: String,
    agent_id: String,
    /// Envelope sha256 → the command id it claims, for routing the receipt
    /// of a command rejected before its id could be trusted.
    claimed: Mutex<HashMap<String, String>>,
    /// Commands stopped by a signed `halt`.
    halted: Mutex<HashSet<String>>,
    js: Context,
    cmd_stream: jetstream::stream::Stream<()>,
    receipt_stream: jetstream::stream::Stream<()>,
    spool_limit: usize,
    spool_kick: Notify,
    /// Receipts in the spool, kept in memory so the hot path lists no
    /// directory.
    spooled: AtomicUsize,
    client: async_nats::Client,
}

/// The cursor and the redelivery filter; owned by the receiving task.
struct Cursor {
    path: PathBuf,
    last: u64,
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Cursor {
    fn load(dir: &Path) -> Cursor {
        let path = dir.join("cursor.json");
        let last = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["last_seq"].as_u64())
            .unwrap_or(0);
        Cursor {
            path,
            last,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn advance(&mut self, seq: u64) {
        if seq > self.last {
            self.last = seq;
            let body = json!({"stream": fleet::CMD_STREAM, "last_seq": seq}).to_string();
            // Not synced: after a crash the stream is read again from an
            // older cursor, and the replay set refuses what was handled.
            if let Err(e) =
                tourniquet_providers::replace_file(&self.path, body.as_bytes(), 0o600, false)
            {
                tracing::error!(error = %e, "cannot store the fleet cursor");
            }
        }
    }

    /// True the first time an envelope is seen.
    fn first_sight(&mut self, sha: &str) -> bool {
        if !self.seen.insert(sha.to_string()) {
            return false;
        }
        self.order.push_back(sha.to_string());
        if self.order.len() > SEEN_LIMIT {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

async fn receive_commands(
    shared: Arc<Shared>,
    mut live: async_nats::Subscriber,
    mut reconnected: watch::Receiver<u64>,
) {
    let mut cursor = Cursor::load(&shared.dir);
    shared.catch_up(&mut cursor).await;
    let mut tick = tokio::time::interval(CATCH_UP_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = live.next() => {
                let Some(msg) = msg else {
                    tracing::error!("nats: live subscription ended");
                    return;
                };
                let seq = header_u64(msg.headers.as_ref(), "Nats-Sequence");
                let prev = header_u64(msg.headers.as_ref(), "Nats-Last-Sequence");
                match seq {
                    Some(seq) if prev.is_some_and(|p| p > cursor.last) => {
                        // Something on our subject came before this that we
                        // never handled: walk the stream, which covers both.
                        tracing::info!(last = cursor.last, seq, "fleet: gap; catching up");
                        shared.catch_up(&mut cursor).await;
                    }
                    Some(seq) if seq <= cursor.last => {
                        let sha = sha256_hex(&msg.payload);
                        if cursor.seen.contains(&sha) {
                            continue;
                        }
                        // The stream was recreated and numbers restarted.
                        tracing::warn!(seq, last = cursor.last, "fleet: stream sequence went backwards; re-reading the stream");
                        cursor.last = 0;
                        shared.catch_up(&mut cursor).await;
                    }
                    Some(seq) => {
                        shared.handle(&mut cursor, &msg.payload).await;
                        cursor.advance(seq);
                    }
                    None => tracing::warn!("fleet: live message without stream headers ignored"),
                }
            }
            _ = reconnected.changed() => shared.catch_up(&mut cursor).await,
            _ = tick.tick() => shared.catch_up(&mut cursor).await,
        }
    }
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

impl Shared {
    /// Direct Get from the cursor until the stream has nothing newer.
    async fn catch_up(self: &Arc<Self>, cursor: &mut Cursor) {
        loop {
            let from = cursor.last + 1;
            match self
                .cmd_stream
                .direct_get_next_for_subject(self.subject.clone(), Some(from))
                .await
            {
                Ok(msg) => {
                    self.handle(cursor, &msg.payload).await;
                    cursor.advance(msg.sequence);
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return,
                Err(e) => {
                    tracing::warn!(error = %e, from, "fleet: catch-up paused");
                    return;
                }
            }
        }
    }

    /// One command from the stream, live or caught up.
    async fn handle(self: &Arc<Self>, cursor: &mut Cursor, bytes: &[u8]) {
        let sha = sha256_hex(bytes);
        if !cursor.first_sight(&sha) {
            return;
        }
        if self.lc.knows_envelope(&sha) {
            return;
        }
        let peeked = match self.lc.peek(bytes) {
            Ok(v) => v,
            Err(_) => {
                // Rejected: the lifecycle records why and signs a receipt,
                // published under the id the command claims, if any.
                if let Some(id) = claimed_id(bytes) {
                    self.remember_claim(&sha, id);
                }
                self.lc.submit(bytes, "nats").await;
                return;
            }
        };
        let p = peeked.verified.payload.clone();
        if self.lc.record(&p.id).is_some() {
            return;
        }
        if self.lc.check_target(&p.target).is_err() {
            tracing::debug!(command = %p.id, "fleet: not targeted; staying silent");
            return;
        }
        // A fleet-wide revert concerns only the agents that hold the
        // command; the others were never part of it and stay silent.
        if let Some(target) = p.actions.iter().find_map(|a| a.revert_target()) {
            if self.lc.record(target).is_none() {
                tracing::debug!(command = %p.id, reverts = target, "fleet: revert of a command this agent never had; staying silent");
                return;
            }
        }
        self.remember_claim(&sha, p.id.clone());
        if let Some(target) = p.actions.iter().find_map(|a| a.halt_target()) {
            self.halt(&p, target, &peeked.verified.signers);
            return;
        }
        if p.rollout.is_some() {
            let pending = self.dir.join("pending").join(format!("{}.json", p.id));
            if pending.exists() {
                // Already waiting for its wave (scheduled again at start).
                return;
            }
            if let Err(e) = tourniquet_providers::write_atomically(&pending, bytes, 0o600) {
                tracing::error!(command = %p.id, error = %e, "cannot keep a waved command");
            }
            let this = self.clone();
            let bytes = bytes.to_vec();
            tokio::spawn(async move { this.run_waved(bytes).await });
            return;
        }
        self.lc
            .submit_gated(bytes, "nats", None, Some(peeked))
            .await;
    }

    fn remember_claim(&self, sha: &str, id: String) {
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        if claimed.len() > SEEN_LIMIT {
            claimed.clear();
        }
        claimed.insert(sha.to_string(), id);
    }

    /// A signed `halt`: later waves of `target` will not start here.
    fn halt(&self, p: &Payload, target: &str, signers: &[crate::trust::policy::TrustedSigner]) {
        if let Err(rej) = self.lc.policy().authorize(HALT_OP, "*", signers) {
            tracing::warn!(command = %p.id, reason = rej.reason.code(), "fleet: halt refused");
            self.lc.audit_event(
                "halt_rejected",
                json!({"command": p.id, "halts": target, "reason_code": rej.reason.code(), "message": rej.message}),
            );
            return;
        }
        let newly = self
            .halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.to_string());
        if newly {
            self.store_halted();
        }
        tracing::warn!(command = %p.id, halts = target, "fleet: rollout halted by a signed halt");
        self.lc.audit_event(
            "halt",
            json!({
                "command": p.id,
                "halts": target,
                "issuer": p.issuer,
                "reason": p.reason,
                "signers": signers.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            }),
        );
    }

    fn store_halted(&self) {
        let list: Vec<String> = self
            .halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let body = serde_json::to_vec(&list).unwrap_or_default();
        if let Err(e) =
            tourniquet_providers::write_atomically(&self.dir.join("halted.json"), &body, 0o600)
        {
            tracing::error!(error = %e, "cannot store the halted set");
        }
    }

    /// Waits for this agent's wave, then applies, or reports `halted`.
    async fn run_waved(self: Arc<Self>, bytes: Vec<u8>) {
        let Ok(peeked) = self.lc.peek(&bytes) else {
            // Expired while waiting, or the policy changed: the lifecycle
            // says which in a signed rejection.
            self.finish_waved(&bytes, None).await;
            return;
        };
        let p = peeked.verified.payload.clone();
        let Some(wave) = fleet::wave_of(&p, &self.agent_id) else {
            self.finish_waved(&bytes, None).await;
            return;
        };
        let start = fleet::wave_start(&p, wave);
        let wait = Timestamp::now().until(start);
        if !wait.is_zero() {
            tracing::info!(command = %p.id, wave, wait_ms = wait.as_millis() as u64, "fleet: waiting for this agent's wave");
            tokio::time::sleep(wait).await;
        }
        let hold_back = if self
            .halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&p.id)
        {
            Some(Rejection::new(
                Reason::Halted,
                format!("rollout halted by a signed halt before wave {wave} started"),
            ))
        } else if wave > 0 {
            let limit = p
                .rollout
                .as_ref()
                .map(|r| r.max_failures.max(1))
                .unwrap_or(1);
            match self.earlier_failures(&p, wave, limit).await {
                Ok(n) if n >= limit => Some(Rejection::new(
                    Reason::Halted,
                    format!(
                        "rollout halted before wave {wave}: {n} failure or rollback receipt(s) in earlier waves (limit {limit})"
                    ),
                )),
                Ok(_) => None,
                Err(e) => Some(Rejection::new(
                    Reason::Halted,
                    format!("rollout halted before wave {wave}: cannot read earlier waves' receipts ({e})"),
                )),
            }
        } else {
            None
        };
        self.finish_waved(&bytes, hold_back).await;
    }

    async fn finish_waved(&self, bytes: &[u8], hold_back: Option<Rejection>) {
        // Re-verified at submit: time has passed since the peek.
        self.lc.submit_gated(bytes, "nats", hold_back, None).await;
        if let Some(id) = claimed_id(bytes) {
            let _ = std::fs::remove_file(self.dir.join("pending").join(format!("{id}.json")));
        }
    }

    /// Failure and rollback receipts of agents in waves before `wave`,
    /// counted once per agent, stopping at `limit`.
    async fn earlier_failures(&self, p: &Payload, wave: usize, limit: u32) -> Result<u32, String> {
        let subject = fleet::receipts_of(&p.id);
        let mut failed = HashSet::new();
        let mut seq = 1;
        loop {
            let msg = match self
                .receipt_stream
                .direct_get_next_for_subject(subject.clone(), Some(seq))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(e.to_string()),
            };
            seq = msg.sequence + 1;
            let Some(r) = receipt_payload(&msg.payload) else {
                continue;
            };
            let earlier = fleet::wave_of(p, &r.agent.id).is_some_and(|w| w < wave);
            if earlier && fleet::counts_as_failure(r.outcome, r.reason_code) {
                failed.insert(r.agent.id);
                if failed.len() as u32 >= limit {
                    break;
                }
            }
        }
        Ok(failed.len() as u32)
    }

    fn spool_dir(&self) -> PathBuf {
        self.dir.join("spool")
    }
}

/// The receipt inside a receipt envelope. Not verified: the fleet view and
/// the wave check read outcomes, and a forged failure can only stop a
/// rollout, never start one.
pub fn receipt_payload(bytes: &[u8]) -> Option<Receipt> {
    let env = Envelope::from_json(bytes).ok()?;
    serde_json::from_slice(&env.payload_bytes().ok()?).ok()
}

/// The command id an envelope claims, unverified: only for routing the
/// receipt of its rejection.
fn claimed_id(bytes: &[u8]) -> Option<String> {
    let env = Envelope::from_json(bytes).ok()?;
    let v: Value = serde_json::from_slice(&env.payload_bytes().ok()?).ok()?;
    let id = v.get("id")?.as_str()?;
    ulid::Ulid::from_string(id).ok().map(|_| id.to_string())
}

fn load_halted(dir: &Path) -> HashSet<String> {
    std::fs::read(dir.join("halted.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn list_json(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every receipt of a fleet command goes to the spool first, so a receipt
/// settled while NATS is down (or just before a crash) is still sent.
/// Not-targeted rejections never get here: the transport stays silent.
async fn spool_receipts(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<SettledReceipt>) {
    while let Some(r) = rx.recv().await {
        if r.transport != "nats" || r.reason_code == Some(Reason::NotTargeted) {
            continue;
        }
        let sha = envelope_sha_of(&r.envelope);
        let command = r
            .command_id
            .clone()
            .filter(|c| !c.starts_with("sha256:"))
            .or_else(|| {
                sha.as_ref().and_then(|s| {
                    shared
                        .claimed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(s)
                        .cloned()
                })
            })
            .unwrap_or_else(|| "unverified".into());
        let subject = fleet::receipt_subject(&command, &shared.agent_id);
        let msg_id = format!("{}.{}", shared.agent_id, r.name);
        // Straight to the stream while connected and nothing older waits;
        // the spool is for when that fails.
        if shared.spooled.load(Ordering::Relaxed) == 0
            && shared.client.connection_state() == async_nats::connection::State::Connected
        {
            match publish_acked(&shared.js, &subject, &msg_id, r.envelope.clone()).await {
                Ok(_) => continue,
                Err(e) => tracing::warn!(error = %e, "receipt not acknowledged; spooling it"),
            }
        }
        let entry = json!({
            "subject": subject,
            "msg_id": msg_id,
            "receipt": String::from_utf8_lossy(&r.envelope),
        });
        let spool = shared.spool_dir();
        if shared.spooled.load(Ordering::Relaxed) >= shared.spool_limit {
            if let Some(oldest) = list_json(&spool).first() {
                tracing::warn!(file = %oldest.display(), limit = shared.spool_limit, "receipt spool full; dropping the oldest (it stays in the receipts dir)");
                if std::fs::remove_file(oldest).is_ok() {
                    shared.spooled.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        // Sortable by time of settling, then unique by receipt name.
        let file = spool.join(format!("{}-{}.json", ulid::Ulid::new(), r.name));
        if let Err(e) =
            tourniquet_providers::replace_file(&file, entry.to_string().as_bytes(), 0o600, false)
        {
            tracing::error!(error = %e, "cannot spool a receipt");
        } else {
            shared.spooled.fetch_add(1, Ordering::Relaxed);
        }
        shared.spool_kick.notify_one();
    }
}

fn envelope_sha_of(receipt_env: &[u8]) -> Option<String> {
    receipt_payload(receipt_env).map(|r| r.envelope_sha256)
}

/// Publishes spooled receipts in order, deleting each once JetStream has
/// acknowledged it; stops at the first failure until the next reconnect.
async fn drain_spool(shared: Arc<Shared>, mut reconnected: watch::Receiver<u64>) {
    loop {
        for file in list_json(&shared.spool_dir()) {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<Value>(&bytes) else {
                let _ = std::fs::remove_file(&file);
                continue;
            };
            let (Some(subject), Some(msg_id), Some(receipt)) = (
                entry["subject"].as_str(),
                entry["msg_id"].as_str(),
                entry["receipt"].as_str(),
            ) else {
                let _ = std::fs::remove_file(&file);
                continue;
            };
            match publish_acked(&shared.js, subject, msg_id, receipt.as_bytes().to_vec()).await {
                Ok(_) => {
                    if std::fs::remove_file(&file).is_ok() {
                        shared.spooled.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receipt kept in the spool until NATS answers");
                    break;
                }
            }
        }
        let left = list_json(&shared.spool_dir()).len();
        shared.spooled.store(left, Ordering::Relaxed);
        let idle = left == 0;
        tokio::select! {
            _ = shared.spool_kick.notified() => {}
            _ = reconnected.changed() => {}
            _ = tokio::time::sleep(SPOOL_RETRY), if !idle => {}
        }
    }
}

/// A JetStream publish that waits for the stream's ack; `msg_id` makes a
/// retried publish a no-op inside the duplicate window.
pub async fn publish_acked(
    js: &Context,
    subject: &str,
    msg_id: &str,
    body: Vec<u8>,
) -> Result<u64, String> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let ack = js
        .publish_with_headers(subject.to_string(), headers, body.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

/// The agent's heartbeat: who it is, what it runs, what is in force.
fn heartbeat_body(lc: &Lifecycle, fleet_name: &str) -> Vec<u8> {
    let id = lc.identity();
    let active: Vec<Value> = lc
        .active()
        .iter()
        .map(|r| json!({"id": r.id, "state": r.state.as_str(), "hold_until": r.hold_until}))
        .collect();
    json!({
        "agent": id.id,
        "labels": id.labels,
        "fleet": fleet_name,
        "version": env!("CARGO_PKG_VERSION"),
        "key": lc.agent_ref().key,
        "active": active,
        "at": Timestamp::now(),
    })
    .to_string()
    .into_bytes()
}

async fn heartbeat(
    shared: Arc<Shared>,
    client: async_nats::Client,
    fleet_name: String,
    every: Duration,
    mut reconnected: watch::Receiver<u64>,
) {
    let subject = format!("{}.{}", fleet::HEARTBEAT_PREFIX, shared.agent_id);
    let mut pings = match client.subscribe(fleet::PING_SUBJECT).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "fleet: cannot answer pings");
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = reconnected.changed() => {}
            Some(_) = async { match pings.as_mut() { Some(p) => p.next().await, None => None } } => {}
        }
        let body = heartbeat_body(&shared.lc, &fleet_name);
        if let Err(e) = client.publish(subject.clone(), body.into()).await {
            tracing::debug!(error = %e, "fleet: heartbeat not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_grows_is_capped_and_jittered() {
        let max = Duration::from_secs(30);
        assert_eq!(reconnect_delay(0, max), Duration::ZERO);
        let first = reconnect_delay(1, max);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let samples: Vec<Duration> = (0..50).map(|_| reconnect_delay(40, max)).collect();
        assert!(
            samples.iter().all(|d| *d >= max / 2 && *d <= max),
            "{samples:?}"
        );
        let distinct: HashSet<u128> = samples.iter().map(|d| d.as_micros()).collect();
        assert!(distinct.len() > 10, "agents must not reconnect in lockstep");
    }
}
