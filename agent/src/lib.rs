//! Tourniquet: signed, guarded, self-reverting config-only emergency
//! hotfixes.
//!
//! Dependencies point one way: cli → transport → lifecycle → (policy,
//! receipt, journal, telemetry, providers) → (envelope, payload).

pub mod agent;
pub mod audit;
pub mod audit_export;
pub mod cli;
pub mod config;
pub mod defaults;
pub mod envelope;
pub mod fleet;
pub mod glob;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod payload;
pub mod policy;
pub mod receipt;
pub mod record;
pub mod rejection;
pub mod state;
pub mod telemetry;
pub mod transport;
