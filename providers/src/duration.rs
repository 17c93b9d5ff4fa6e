//! Human-readable durations (`"10s"`, `"1m30s"`) in provider configs.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserialises a humantime string such as `"10s"` into a [`Duration`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration: {e}")))
}
