//! How commands arrive. Transports only move bytes: every envelope goes to
//! [`crate::lifecycle::Lifecycle::submit`] unverified, and is verified there
//! the same way whichever door it came through.

pub mod http;
pub mod inbox;
pub mod nats;
pub mod watch;
