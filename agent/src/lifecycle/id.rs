//! The key a command's record is stored under.
//!
//! Before its signatures verify, an envelope has no id anyone vouches for:
//! its record is keyed by the envelope's SHA-256. Once verified, it is keyed
//! by the payload's ULID, compared as the decoded 128-bit value so that two
//! spellings of one id can never be two commands (issue: replay by case).

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A record key: a verified command's id, or an unverified envelope's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordId {
    /// The payload's ULID.
    Command(ulid::Ulid),
    /// SHA-256 of the envelope bytes.
    Envelope([u8; 32]),
}

/// Why a text is not a record id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a command id (a 26-character ULID) or sha256:<64 hex>")]
pub struct BadRecordId {
    pub text: String,
}

impl RecordId {
    /// The command id, if this record has one.
    pub fn command(&self) -> Option<ulid::Ulid> {
        match self {
            RecordId::Command(u) => Some(*u),
            RecordId::Envelope(_) => None,
        }
    }

    /// Keys an envelope by its lowercase-hex SHA-256.
    pub fn from_sha256_hex(hex: &str) -> Option<RecordId> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(RecordId::Envelope(out))
    }

    pub fn is_command(&self) -> bool {
        matches!(self, RecordId::Command(_))
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordId::Command(u) => write!(f, "{u}"),
            RecordId::Envelope(h) => {
                f.write_str("sha256:")?;
                for b in h {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for RecordId {
    type Err = BadRecordId;

    /// Accepts only canonical spellings: an upper-case ULID, or
    /// `sha256:` and 64 lowercase hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRecordId {
            text: s.chars().take(80).collect(),
        };
        if let Some(hex) = s.strip_prefix("sha256:") {
            if hex.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(bad());
            }
            return RecordId::from_sha256_hex(hex).ok_or_else(bad);
        }
        let u = ulid::Ulid::from_string(s).map_err(|_| bad())?;
        if u.to_string() != s {
            return Err(bad());
        }
        Ok(RecordId::Command(u))
    }
}

impl Serialize for RecordId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_only_canonical_spellings_parse() {
        let u = ulid::Ulid::from_string("01JD3Z8K6Q0V6N9W2X4Y5Z7A8B").unwrap();
        let id = RecordId::Command(u);
        assert_eq!(id.to_string().parse::<RecordId>().unwrap(), id);
        assert!("01jd3z8k6q0v6n9w2x4y5z7a8b".parse::<RecordId>().is_err());
        let h = RecordId::Envelope([0xab; 32]);
        assert_eq!(h.to_string(), format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(h.to_string().parse::<RecordId>().unwrap(), h);
        assert!(format!("sha256:{}", "AB".repeat(32))
            .parse::<RecordId>()
            .is_err());
        assert!("sha256:abc".parse::<RecordId>().is_err());
    }
}
