//! Time as the lifecycle sees it.
//!
//! Holds, expiry and timelines all read the clock through this seam, so the
//! lifecycle's unit and property tests can run days of holds in
//! milliseconds against tokio's paused time.

use std::time::Duration;

use crate::command::payload::Timestamp;

/// Wall-clock time for records and holds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A wall clock that moves with tokio's clock: under
/// `tokio::time::pause()` it advances exactly as far as tokio's timers do.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_wall: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start_wall: Timestamp) -> TokioClock {
        TokioClock {
            start_wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed: Duration = tokio::time::Instant::now().duration_since(self.start);
        self.start_wall.plus(elapsed)
    }
}
