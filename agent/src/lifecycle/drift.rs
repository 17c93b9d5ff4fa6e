//! Drift: a hotfix in force was changed back behind the agent's back (a
//! deploy, a hand edit). Recorded, counted, and re-asserted unless the
//! resource only reports.
//!
//! The agent's own writes are never drift: drift checks take the
//! resource's lock, so they never see a change half-made, and a file whose
//! identity (inode, size, mtime) is exactly what the agent itself last
//! wrote is not even read again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::Value;

use super::execute::spec_of;
use super::Lifecycle;
use crate::lifecycle::record::{CommandRecord, DriftEvent, MAX_DRIFT_EVENTS};

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(path: &Path) -> Option<FileIdentity> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// Whether a fresh snapshot still shows what apply left. The state apply
/// returns may carry diagnostics a snapshot cannot know (an AWS call's
/// tries, an invalidation id), so only the fields the snapshot reads count.
pub(super) fn still_holds(found: &Value, expected: &Value) -> bool {
    match (found, expected) {
        (Value::Object(f), Value::Object(e)) => f.iter().all(|(k, v)| e.get(k) == Some(v)),
        _ => found == expected,
    }
}

impl Lifecycle {
    /// Notes the identity of every watched file `rec` touched, as the agent
    /// left it. Called with the resource locks held.
    pub(super) fn remember_own_writes(&self, rec: &CommandRecord) {
        let mut own = self.own_writes.lock().unwrap_or_else(|e| e.into_inner());
        for a in &rec.actions {
            let Some(path) = self
                .resources
                .get(&a.resource)
                .and_then(|r| r.provider.watched_path())
            else {
                continue;
            };
            match FileIdentity::of(path) {
                Some(id) => own.insert(a.resource.clone(), id),
                None => own.remove(&a.resource),
            };
        }
    }

    /// Compares every hotfix in force on `resource` with what the resource
    /// holds now. A difference is drift: recorded in the audit log and the
    /// metrics, and re-asserted unless the resource only reports.
    pub async fn check_drift(&self, resource: &str) {
        let Some(res) = self.resources.get(resource) else {
            return;
        };
        // Serialises with commands: our own writes are never drift.
        let _guard = self.locks.acquire(&[resource.to_string()]).await;
        if let Some(path) = res.provider.watched_path() {
            let own = self
                .own_writes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(resource)
                .copied();
            if own.is_some() && own == FileIdentity::of(path) {
                return;
            }
        }
        for mut rec in self.active() {
            let mut changed = false;
            for i in 0..rec.actions.len() {
                let a = &rec.actions[i];
                if a.resource != resource || !a.applied || a.reverted || !a.reversible {
                    continue;
                }
                let spec = spec_of(a);
                let Some(expected) = a.after.clone() else {
                    continue;
                };
                // A half-written file is not a verdict; the next event is.
                let Ok(found) = res.provider.snapshot(&spec).await else {
                    continue;
                };
                if still_holds(&found, &expected) {
                    continue;
                }
                let reassert = res.on_drift == crate::config::OnDrift::Reassert;
                // Report-only: the same drift is reported once, not on every touch.
                if !reassert
                    && rec
                        .drifts
                        .last()
                        .is_some_and(|d| d.resource == resource && d.found == found)
                {
                    continue;
                }
                self.metrics.count_drift(resource);
                tracing::warn!(command = %rec.id, resource, "drift: the resource no longer holds the hotfix");
                let outcome = if reassert {
                    match res.provider.apply(&spec).await {
                        Ok(after) => {
                            rec.actions[i].after = Some(after);
                            "reasserted".to_string()
                        }
                        Err(e) => format!("reassert failed: {e}"),
                    }
                } else {
                    "reported".to_string()
                };
                let event = DriftEvent {
                    at: self.now(),
                    resource: resource.to_string(),
                    expected,
                    found,
                    outcome,
                };
                rec.drifts.push(event.clone());
                if rec.drifts.len() > MAX_DRIFT_EVENTS {
                    rec.drifts.remove(0);
                }
                let _ = self.store.audit_command(
                    "drifted",
                    &rec,
                    serde_json::to_value(&event).unwrap_or(Value::Null),
                );
                changed = true;
            }
            if changed {
                self.remember_own_writes(&rec);
                if let Err(e) = self.store.write_record(&rec) {
                    tracing::error!(command = %rec.id, error = %e, "cannot record drift");
                }
                self.changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::still_holds;
    use serde_json::json;

    #[test]
    fn diagnostics_in_the_applied_state_are_not_drift() {
        let after =
            json!({"max": 4, "desired": 4, "tries": {"autoscaling:UpdateAutoScalingGroup": 2}});
        assert!(still_holds(&json!({"max": 4, "desired": 4}), &after));
        assert!(!still_holds(&json!({"max": 10, "desired": 4}), &after));
        assert!(!still_holds(
            &json!({"max": 4, "desired": 4, "min": 1}),
            &after
        ));
        assert!(still_holds(&json!("x"), &json!("x")));
    }
}
