//! What the agent and the operator CLI must agree on for fleets over NATS
//! JetStream: subjects, stream shapes, and the deterministic wave a command
//! puts an agent in.
//!
//! The rollout model needs no controller: every agent computes its own wave
//! from the signed payload and its own id, and decides whether to go ahead
//! by reading the receipts earlier waves left in `TOURNIQUET_RECEIPTS`.
//! Keeping these rules in one module is what keeps the agent's decision and
//! the operator's fleet view the same.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, Republish, StorageType};
use sha2::{Digest, Sha256};

use crate::payload::{Payload, Timestamp};

/// The stream that is the log of fleet commands.
pub const CMD_STREAM: &str = "TOURNIQUET_CMD";
/// The stream that collects every agent's receipts.
pub const RECEIPT_STREAM: &str = "TOURNIQUET_RECEIPTS";
/// Heartbeats (core NATS, not stored): `tourniquet.hb.<agent-id>`.
pub const HEARTBEAT_PREFIX: &str = "tourniquet.hb";
/// Asking every agent for a heartbeat now (what `fleet ls` sends).
pub const PING_SUBJECT: &str = "tourniquet.ping";
/// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 60);
/// Default wave spacing when a rollout names none.
pub const DEFAULT_WAVE_BAKE: Duration = Duration::from_secs(60);

/// Where a fleet's commands are published and stored.
pub fn command_subject(fleet: &str) -> String {
    format!("tourniquet.cmd.{fleet}")
}

/// Where the command stream republishes what it stored, with its sequence
/// numbers in headers: what agents hold a core subscription on.
pub fn live_subject(fleet: &str) -> String {
    format!("tourniquet.live.cmd.{fleet}")
}

/// Where an agent publishes its receipts for a command.
pub fn receipt_subject(command_id: &str, agent_id: &str) -> String {
    format!("tourniquet.receipt.{command_id}.{agent_id}")
}

/// Every receipt of one command, from all agents.
pub fn receipts_of(command_id: &str) -> String {
    format!("tourniquet.receipt.{command_id}.*")
}

/// Fleet names and agent ids become subject tokens: no dots, spaces or
/// wildcards.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// `TOURNIQUET_CMD`: file storage, dedupe on the command id, direct get for
/// stateless catch-up, and a republish that gives live subscribers the
/// stream sequence (and the previous one on the subject) of every command.
pub fn command_stream_config(max_age: Duration, replicas: usize) -> Config {
    Config {
        name: CMD_STREAM.into(),
        subjects: vec!["tourniquet.cmd.>".into()],
        storage: StorageType::File,
        max_age,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        num_replicas: replicas,
        discard: DiscardPolicy::Old,
        // An envelope is at most 64 KiB; a little over for headers.
        max_message_size: 80 * 1024,
        republish: Some(Republish {
            source: "tourniquet.cmd.>".into(),
            destination: "tourniquet.live.cmd.>".into(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// `TOURNIQUET_RECEIPTS`: one message per receipt, deduped on its name.
pub fn receipt_stream_config(max_age: Duration, replicas: usize) -> Config {
    Config {
        name: RECEIPT_STREAM.into(),
        subjects: vec!["tourniquet.receipt.>".into()],
        storage: StorageType::File,
        max_age,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        num_replicas: replicas,
        discard: DiscardPolicy::Old,
        max_message_size: 256 * 1024,
        ..Default::default()
    }
}

/// 0..100, the same on every machine: the first 8 bytes of
/// SHA-256(command id, NUL, agent id).
pub fn cohort(command_id: &str, agent_id: &str) -> u8 {
    let mut h = Sha256::new();
    h.update(command_id.as_bytes());
    h.update([0u8]);
    h.update(agent_id.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// The wave (from 0) an agent is in for a command: the first `w` with
/// `cohort < w`. `None` for a command with no rollout.
pub fn wave_of(payload: &Payload, agent_id: &str) -> Option<usize> {
    let r = payload.rollout.as_ref()?;
    let c = u32::from(cohort(&payload.id, agent_id));
    // Waves end at 100 (the payload check insists), so some wave matches.
    r.waves
        .iter()
        .position(|&w| c < w)
        .or(Some(r.waves.len() - 1))
}

/// When wave `k` of a command starts: `not_before` (or `issued_at`) plus
/// `k × wave_bake`.
pub fn wave_start(payload: &Payload, wave: usize) -> Timestamp {
    let base = payload.not_before.unwrap_or(payload.issued_at);
    let bake = payload
        .rollout
        .as_ref()
        .and_then(|r| r.wave_bake)
        .map(|d| d.0)
        .unwrap_or(DEFAULT_WAVE_BAKE);
    base.plus(bake * wave as u32)
}

/// Receipt outcomes that count against a rollout.
pub fn counts_as_failure(outcome: &str) -> bool {
    matches!(outcome, "failed" | "rolled_back")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohorts_spread_evenly_and_deterministically() {
        let id = "01JD3Z8K6Q0V6N9W2X4Y5Z7A8B";
        assert_eq!(cohort(id, "edge-1"), cohort(id, "edge-1"));
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            buckets[usize::from(cohort(id, &format!("agent-{i}")) / 10)] += 1;
        }
        // 1,000 expected per decile; a uniform hash stays well inside ±15%.
        for (i, n) in buckets.iter().enumerate() {
            assert!((850..1150).contains(n), "decile {i} got {n}");
        }
    }

    #[test]
    fn waves_follow_the_cumulative_percentages() {
        let text = r#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8B","issuer":"a","issued_at":"2026-12-01T18:00:00Z","expires":"2026-12-01T18:15:00Z","reason":"r","target":{},"actions":[{"resource":"f","op":"flag.set","flag":"x","variant":"off"}],"rollout":{"waves":[10,50,100],"wave_bake":"30s"}}"#;
        let p = Payload::parse(text.as_bytes()).unwrap();
        let mut counts = [0u32; 3];
        for i in 0..1000 {
            let agent = format!("a{i}");
            let w = wave_of(&p, &agent).unwrap();
            let c = u32::from(cohort(&p.id, &agent));
            assert!(c < p.rollout.as_ref().unwrap().waves[w]);
            counts[w] += 1;
        }
        assert!(counts[0] > 50 && counts[0] < 150, "{counts:?}");
        assert_eq!(
            wave_start(&p, 2),
            Timestamp::parse("2026-12-01T18:01:00Z").unwrap()
        );
    }
}
