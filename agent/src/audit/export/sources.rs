//! What the export reads beyond the audit log: the agent's signed receipts
//! and the journal. Neither is believed on its own word: a receipt must
//! verify against the agent key and match its audit entry, and a journal
//! record must carry the envelope the audit log hashed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Provenance;
use crate::audit::AuditEntry;
use crate::command::envelope::Envelope;
use crate::lifecycle::receipt::verify_receipt_payload;

/// The state beyond the audit log.
#[derive(Default)]
pub struct Sources {
    state_dir: Option<PathBuf>,
    receipts_dir: Option<PathBuf>,
    /// The agent's public key (OpenSSH line), to check receipts with.
    agent_key: Option<String>,
    /// Journal lines (full records), oldest first.
    pub(super) journal: Vec<Value>,
    /// Command id → its last journal line.
    pub(super) by_id: HashMap<String, usize>,
    /// Receipt name → the last journal line listing it. Rejected
    /// submissions of identical bytes share an id, never a receipt.
    pub(super) by_receipt: HashMap<String, usize>,
}

impl Sources {
    /// Reads what there is; anything missing just leaves fields unknown.
    pub fn load(state_dir: &Path) -> Sources {
        let mut s = Sources {
            state_dir: Some(state_dir.to_path_buf()),
            receipts_dir: Some(state_dir.join("receipts")),
            agent_key: std::fs::read_to_string(state_dir.join("agent_ed25519.pub"))
                .ok()
                .map(|k| k.trim().to_string()),
            ..Sources::default()
        };
        // Read as plain JSON, not as records: a field added or changed in
        // a later version must not hide a whole command.
        if let Ok(text) = std::fs::read_to_string(state_dir.join("journal.jsonl")) {
            let mut envelopes: HashMap<String, Value> = HashMap::new();
            for line in text.lines() {
                let Ok(line) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                // Journal lines are `{"t": "put" | "step" | "settle", "rec": …}`;
                // an older journal held bare records.
                let mut rec = match line["t"].as_str() {
                    Some("put" | "step" | "settle") => line["rec"].clone(),
                    Some(_) => continue,
                    None => line.clone(),
                };
                let Some(id) = rec["id"].as_str().map(String::from) else {
                    continue;
                };
                if let Some(env) = line.get("envelope").filter(|e| e.is_string()) {
                    envelopes.insert(id.clone(), env.clone());
                }
                if rec.get("envelope").is_none() {
                    if let (Some(env), Some(o)) = (envelopes.get(&id), rec.as_object_mut()) {
                        o.insert("envelope".into(), env.clone());
                    }
                }
                let line = s.journal.len();
                for name in rec["receipts"].as_array().into_iter().flatten() {
                    if let Some(n) = name.as_str() {
                        s.by_receipt.insert(n.to_string(), line);
                    }
                }
                s.by_id.insert(id, line);
                s.journal.push(rec);
            }
        }
        s
    }

    /// A receipt's payload, if it verifies and belongs to `entry`.
    pub(super) fn receipt(
        &self,
        name: &str,
        entry: &AuditEntry,
        prov: &mut Provenance,
    ) -> Option<Value> {
        let dir = self.receipts_dir.as_ref()?;
        // The name comes from the log: never let it leave the receipts dir.
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            prov.receipts_rejected += 1;
            return None;
        }
        let stored = self
            .state_dir
            .as_deref()
            .and_then(|d| crate::lifecycle::store::read_receipt(d, name))
            .and_then(|v| serde_json::from_value::<Envelope>(v).ok());
        // An older state dir kept a file per receipt.
        let Some(env) = stored.or_else(|| {
            std::fs::read(dir.join(format!("{name}.json")))
                .ok()
                .and_then(|b| Envelope::from_json(&b).ok())
        }) else {
            prov.receipts_missing += 1;
            return None;
        };
        let verified = match &self.agent_key {
            Some(key) => {
                if verify_receipt_payload(&env, key).is_err() {
                    prov.receipts_rejected += 1;
                    return None;
                }
                true
            }
            None => false,
        };
        let Some(payload) = env
            .payload_bytes()
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            prov.receipts_rejected += 1;
            return None;
        };
        let matches = payload["outcome"].as_str() == Some(entry.event.as_str())
            && entry
                .envelope_sha256
                .as_deref()
                .is_none_or(|sha| payload["envelope_sha256"].as_str() == Some(sha));
        if !matches {
            prov.receipts_rejected += 1;
            return None;
        }
        if verified {
            prov.receipts_verified += 1;
        } else {
            prov.receipts_unverified += 1;
        }
        Some(payload)
    }
}
