//! One command at a time per resource (DESIGN §5).
//!
//! A command holds the locks of every resource it touches from planning
//! until it settles, bake included, so a second command on the same flag
//! plans against the true state and inherits the true original
//! before-state. Locks are taken in name order, so two commands on the
//! same pair of resources cannot deadlock; tokio's mutex is fair, so
//! commands on one resource run in the order they queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// The per-resource locks.
#[derive(Default)]
pub struct ResourceLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held locks; released on drop.
pub struct ResourceGuard {
    _held: Vec<OwnedMutexGuard<()>>,
    names: Vec<String>,
}

impl ResourceGuard {
    /// The resources this guard holds, in lock order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

fn ordered(names: &[String]) -> Vec<String> {
    let mut v = names.to_vec();
    v.sort();
    v.dedup();
    v
}

impl ResourceLocks {
    fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// Takes every lock now, or none.
    pub fn try_acquire(&self, names: &[String]) -> Option<ResourceGuard> {
        let names = ordered(names);
        let mut held = Vec::with_capacity(names.len());
        for n in &names {
            held.push(self.lock_of(n).try_lock_owned().ok()?);
        }
        Some(ResourceGuard { _held: held, names })
    }

    /// Waits for every lock, in name order.
    pub async fn acquire(&self, names: &[String]) -> ResourceGuard {
        let names = ordered(names);
        let mut held = Vec::with_capacity(names.len());
        for n in &names {
            held.push(self.lock_of(n).lock_owned().await);
        }
        ResourceGuard { _held: held, names }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlapping_sets_exclude_each_other_and_disjoint_ones_do_not() {
        let locks = ResourceLocks::default();
        let a = locks.try_acquire(&["x".into(), "y".into()]).unwrap();
        assert!(locks.try_acquire(&["y".into()]).is_none());
        assert!(locks.try_acquire(&["z".into()]).is_some());
        drop(a);
        assert!(locks.try_acquire(&["y".into(), "x".into()]).is_some());
    }
}
