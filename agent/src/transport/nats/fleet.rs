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

use crate::command::payload::{Payload, Timestamp};
use crate::command::rejection::Reason;
use crate::lifecycle::receipt::Outcome;

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

/// A server URL list for logs and banners: user:password@ becomes ***@.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}***{}", &u[..scheme + 3], &u[at..])
                }
                _ => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits `user:password@` out of server URLs (the NATS client takes them
/// as options, not from the URL). Returns the bare URLs and the first
/// user/password pair found.
pub fn split_userinfo(urls: &str) -> (Vec<String>, Option<(String, String)>) {
    let mut auth = None;
    let bare = urls
        .split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let info = &u[scheme + 3..at];
                    if auth.is_none() {
                        let (user, pass) = info.split_once(':').unwrap_or((info, ""));
                        auth = Some((percent_decode(user), percent_decode(pass)));
                    }
                    format!("{}{}", &u[..scheme + 3], &u[at + 1..])
                }
                _ => u.to_string(),
            }
        })
        .collect();
    (bare, auth)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    // Bytes, never string slices: a `%` before a multi-byte character
    // must not split it.
    let hex = |at: usize| bytes.get(at).and_then(|&b| char::from(b).to_digit(16));
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// Receipts that count against a rollout: the change failed, was rolled
/// back by its guard, or could not work on that agent at all (its resource
/// lacks what the command names). Refusals about trust (signatures,
/// permissions, expiry) do not: they say nothing about the change.
pub fn counts_as_failure(outcome: Outcome, reason_code: Option<Reason>) -> bool {
    matches!(outcome, Outcome::Failed | Outcome::RolledBack)
        || (outcome == Outcome::Rejected
            && matches!(
                reason_code,
                Some(Reason::InvalidAction | Reason::UnknownResource)
            ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_split_out_of_urls() {
        let (bare, auth) = split_userinfo("nats://agent:p%40ss@10.0.0.1:4222,nats://10.0.0.2:4222");
        assert_eq!(bare, ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]);
        assert_eq!(auth, Some(("agent".into(), "p@ss".into())));
        assert_eq!(split_userinfo("nats://h:1").1, None);
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("nats://agent:s3cret@10.0.0.1:4222, nats://10.0.0.2:4222"),
            "nats://***@10.0.0.1:4222,nats://10.0.0.2:4222"
        );
    }

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
