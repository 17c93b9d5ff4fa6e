//! Tourniquet: signed, guarded, self-reverting config-only emergency
//! hotfixes.
//!
//! Dependencies point one way (DESIGN §2): cli → transport → lifecycle →
//! (trust, store, telemetry, providers) → command.

pub mod agent;
pub mod api;
pub mod audit;
pub mod cli;
pub mod command;
pub mod config;
pub mod defaults;
pub mod lifecycle;
pub mod state;
pub mod telemetry;
pub mod transport;
pub mod trust;
