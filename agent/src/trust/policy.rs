//! The trust policy: who may do what, to which resources, with how many
//! signatures.
//!
//! The schema (`PolicyFile`) is kept apart from evaluation (`Policy`), so the
//! operator-facing format can be documented and checked field by field
//! while the verification logic stays small enough to read in one sitting.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use ssh_key::public::KeyData;
use ssh_key::PublicKey;

use crate::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use crate::command::payload::{HumanDuration, Payload, Timestamp};
use crate::command::rejection::{Reason, Rejection};
use crate::config::toml_error;
use crate::trust::glob::glob_match;

/// Largest envelope accepted, in bytes. Real commands are a few KiB.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// Most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 8;

/// `policy.toml`, as written by operators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Schema version; must be 1.
    pub version: u32,
    /// After this instant the agent refuses every command (`policy_expired`),
    /// so a forgotten agent does not trust stale keys forever.
    #[serde(default)]
    pub expires: Option<Timestamp>,
    /// Cap on `expires - issued_at` of a command.
    pub max_ttl: HumanDuration,
    /// Cap on a command's `hold`: how long a hotfix may stay in force
    /// before it reverts itself. Default 7 days.
    #[serde(default = "default_max_hold")]
    pub max_hold: HumanDuration,
    /// Tolerance for clock differences between operator and agent.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: HumanDuration,
    /// Fingerprints (`SHA256:…`) of keys that must never be honoured.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Named operator keys.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyEntry>,
    /// Ordered rules; the first whose ops and resources match decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_clock_skew() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}

/// Default `max_hold`: a week.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(7 * 24 * 3600);

fn default_max_hold() -> HumanDuration {
    HumanDuration(DEFAULT_MAX_HOLD)
}

/// One operator key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// An OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
    /// Roles this key holds.
    pub roles: Vec<String>,
    /// The key is honoured from this instant (agent clock).
    #[serde(default)]
    pub valid_after: Option<Timestamp>,
    /// The key is honoured until this instant (agent clock).
    #[serde(default)]
    pub valid_before: Option<Timestamp>,
}

/// One permission rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Op globs, e.g. `flag.*`.
    pub ops: Vec<String>,
    /// Resource-name globs; default every resource.
    #[serde(default = "match_all")]
    pub resources: Vec<String>,
    /// Roles whose keys count towards the threshold.
    pub roles: Vec<String>,
    /// Distinct keys required.
    #[serde(default = "one")]
    pub threshold: u32,
}

fn match_all() -> Vec<String> {
    vec!["*".into()]
}
fn one() -> u32 {
    1
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `rendered` is `FILE:LINE:COL: message (in `line`)`; `source` is the
    /// parser's own error.
    #[error("{rendered}")]
    Parse {
        rendered: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: keys.{name}.public_key: not an OpenSSH public key: {source}")]
    PublicKey {
        path: String,
        name: String,
        #[source]
        source: ssh_key::Error,
    },
    #[error("{path}: {field}: {why}")]
    Invalid {
        path: String,
        field: String,
        why: String,
    },
}

/// A checked, ready-to-evaluate policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub file: PolicyFile,
    keys_by_data: HashMap<KeyData, String>,
    revoked: HashSet<String>,
}

/// A key whose signature verified and that the policy trusts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrustedSigner {
    /// The key's name in the policy.
    pub name: String,
    pub fingerprint: String,
    pub roles: Vec<String>,
}

/// A command whose signatures verified and whose payload parsed.
#[derive(Debug, Clone)]
pub struct VerifiedCommand {
    pub payload: Payload,
    pub signers: Vec<TrustedSigner>,
    pub envelope_sha256: String,
}

impl Policy {
    /// Loads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks policy text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|source| PolicyError::Parse {
            rendered: toml_error(origin, text, &source),
            source,
        })?;
        Policy::from_file(file, origin)
    }

    pub fn from_file(file: PolicyFile, origin: &str) -> Result<Policy, PolicyError> {
        let invalid = |field: String, why: String| PolicyError::Invalid {
            path: origin.to_string(),
            field,
            why,
        };
        if file.version != 1 {
            return Err(invalid(
                "version".into(),
                format!("{} is not supported; use 1", file.version),
            ));
        }
        if file.max_ttl.0.is_zero() {
            return Err(invalid("max_ttl".into(), "must be more than zero".into()));
        }
        if file.max_hold.0.is_zero() {
            return Err(invalid("max_hold".into(), "must be more than zero".into()));
        }
        let mut keys_by_data = HashMap::new();
        for (name, key) in &file.keys {
            let public = PublicKey::from_openssh(key.public_key.trim()).map_err(|source| {
                PolicyError::PublicKey {
                    path: origin.to_string(),
                    name: name.clone(),
                    source,
                }
            })?;
            if public.key_data().ed25519().is_none() {
                return Err(invalid(
                    format!("keys.{name}.public_key"),
                    format!(
                        "{} keys are not accepted; use ssh-ed25519",
                        public.algorithm()
                    ),
                ));
            }
            if key.roles.is_empty() {
                return Err(invalid(
                    format!("keys.{name}.roles"),
                    "must name at least one role".into(),
                ));
            }
            if let Some(other) = keys_by_data.insert(public.key_data().clone(), name.clone()) {
                return Err(invalid(
                    format!("keys.{name}.public_key"),
                    format!("the same key is already declared as {other:?}; a key counts once"),
                ));
            }
        }
        for (i, rule) in file.rules.iter().enumerate() {
            if rule.ops.is_empty() || rule.roles.is_empty() || rule.resources.is_empty() {
                return Err(invalid(
                    format!("rules[{i}]"),
                    "ops, resources and roles must not be empty".into(),
                ));
            }
            if rule.threshold == 0 {
                return Err(invalid(
                    format!("rules[{i}].threshold"),
                    "must be at least 1".into(),
                ));
            }
        }
        let revoked = file.revoked.iter().cloned().collect();
        Ok(Policy {
            file,
            keys_by_data,
            revoked,
        })
    }

    pub fn clock_skew(&self) -> Duration {
        self.file.clock_skew.0
    }

    /// Verifies a command envelope end to end: size, shape, policy validity,
    /// every signature, the payload (parsed from the verified bytes), its
    /// times and its hold. Permission per action is checked by
    /// [`Policy::authorize`].
    ///
    /// `bytes` must be the body exactly as received: it is checked as UTF-8
    /// (anything else is `bad_envelope`), parsed, and hashed as it is, never
    /// through a repaired copy.
    pub fn verify_envelope(
        &self,
        bytes: &[u8],
        now: Timestamp,
    ) -> Result<VerifiedCommand, Rejection> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Rejection::new(
                Reason::TooLarge,
                format!(
                    "envelope is {} bytes; the limit is {MAX_ENVELOPE_BYTES}",
                    bytes.len()
                ),
            ));
        }
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(Rejection::new(
                Reason::BadEnvelope,
                format!(
                    "the envelope is not UTF-8 JSON: invalid byte at offset {}",
                    e.valid_up_to()
                ),
            ));
        }
        let env = Envelope::from_json(bytes)
            .map_err(|e| Rejection::new(Reason::BadEnvelope, e.to_string()))?;
        if env.payload_type != COMMAND_PAYLOAD_TYPE {
            return Err(Rejection::new(
                Reason::BadEnvelope,
                format!(
                    "payloadType {:?} is not {COMMAND_PAYLOAD_TYPE}",
                    env.payload_type
                ),
            ));
        }
        let payload_bytes = env
            .payload_bytes()
            .map_err(|e| Rejection::new(Reason::BadEnvelope, e.to_string()))?;
        if env.signatures.is_empty() {
            return Err(Rejection::new(
                Reason::BadSignature,
                "the envelope is not signed",
            ));
        }
        if env.signatures.len() > MAX_SIGNATURES {
            return Err(Rejection::new(
                Reason::BadEnvelope,
                format!("at most {MAX_SIGNATURES} signatures per envelope"),
            ));
        }
        if let Some(exp) = self.file.expires {
            if now > exp {
                return Err(Rejection::new(
                    Reason::PolicyExpired,
                    format!("the trust policy expired at {exp}; install a current policy"),
                ));
            }
        }
        let signers = self.verify_signatures(&env, &payload_bytes, now)?;
        let payload =
            Payload::parse(&payload_bytes).map_err(|e| Rejection::new(Reason::BadPayload, e))?;
        self.check_times(&payload, now)?;
        self.check_hold(&payload)?;
        Ok(VerifiedCommand {
            payload,
            signers,
            envelope_sha256: envelope::sha256_hex(bytes),
        })
    }

    /// Every signature must verify and come from a trusted, current,
    /// unrevoked key. Returns the distinct signers.
    fn verify_signatures(
        &self,
        env: &Envelope,
        payload: &[u8],
        now: Timestamp,
    ) -> Result<Vec<TrustedSigner>, Rejection> {
        let message = envelope::pae(&env.payload_type, payload);
        let mut signers: Vec<TrustedSigner> = Vec::new();
        for (i, s) in env.signatures.iter().enumerate() {
            let sig = envelope::decode_signature(&s.sig).map_err(|why| {
                Rejection::new(Reason::BadSignature, format!("signature {i}: {why}"))
            })?;
            let fingerprint = envelope::fingerprint(sig.public_key());
            if self.revoked.contains(&fingerprint) {
                return Err(Rejection::new(
                    Reason::RevokedKey,
                    format!("signature {i} is by revoked key {fingerprint}"),
                ));
            }
            let Some(name) = self.keys_by_data.get(sig.public_key()) else {
                return Err(Rejection::new(
                    Reason::UnknownSigner,
                    format!(
                        "signature {i} is by key {fingerprint}, which the policy does not list"
                    ),
                ));
            };
            envelope::verify_sshsig(COMMAND_NAMESPACE, &message, &sig).map_err(|why| {
                Rejection::new(
                    Reason::BadSignature,
                    format!("signature {i} ({name}): {why}"),
                )
            })?;
            let entry = &self.file.keys[name];
            if entry.valid_after.is_some_and(|t| now < t)
                || entry.valid_before.is_some_and(|t| now >= t)
            {
                return Err(Rejection::new(
                    Reason::KeyNotValidNow,
                    format!("key {name:?} is not valid at {now} by this agent's clock"),
                ));
            }
            if !signers.iter().any(|t| &t.name == name) {
                signers.push(TrustedSigner {
                    name: name.clone(),
                    fingerprint,
                    roles: entry.roles.clone(),
                });
            }
        }
        Ok(signers)
    }

    fn check_times(&self, p: &Payload, now: Timestamp) -> Result<(), Rejection> {
        let skew = self.clock_skew();
        if p.issued_at > now.plus(skew) {
            return Err(Rejection::new(
                Reason::NotYetValid,
                format!(
                    "issued_at {} is in the future by this agent's clock ({now})",
                    p.issued_at
                ),
            ));
        }
        if let Some(nb) = p.not_before {
            if nb > now.plus(skew) {
                return Err(Rejection::new(
                    Reason::NotYetValid,
                    format!("not valid before {nb}; it is {now}"),
                ));
            }
        }
        if p.expires.plus(skew) < now {
            return Err(Rejection::new(
                Reason::Expired,
                format!("expired at {}; it is {now}", p.expires),
            ));
        }
        let ttl = p.issued_at.until(p.expires);
        if ttl > self.file.max_ttl.0 {
            return Err(Rejection::new(
                Reason::TtlTooLong,
                format!(
                    "expires - issued_at is {}; the policy allows at most {}",
                    humantime::format_duration(ttl),
                    self.file.max_ttl
                ),
            ));
        }
        Ok(())
    }

    fn check_hold(&self, p: &Payload) -> Result<(), Rejection> {
        match p.hold {
            Some(hold) if hold > self.file.max_hold => Err(Rejection::new(
                Reason::HoldTooLong,
                format!(
                    "hold is {hold}; the policy allows at most {}",
                    self.file.max_hold
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether `signers` may run `op` on `resource`: the first rule whose
    /// ops and resources match decides, and it needs `threshold` distinct
    /// keys holding one of its roles.
    pub fn authorize(
        &self,
        op: &str,
        resource: &str,
        signers: &[TrustedSigner],
    ) -> Result<(), Rejection> {
        let Some(rule) = self.file.rules.iter().find(|r| {
            r.ops.iter().any(|g| glob_match(g, op))
                && r.resources.iter().any(|g| glob_match(g, resource))
        }) else {
            return Err(Rejection::new(
                Reason::NotPermitted,
                format!("no policy rule allows {op} on {resource}"),
            ));
        };
        let counted: BTreeSet<&str> = signers
            .iter()
            .filter(|s| s.roles.iter().any(|r| rule.roles.contains(r)))
            .map(|s| s.fingerprint.as_str())
            .collect();
        if counted.is_empty() {
            return Err(Rejection::new(
                Reason::NotPermitted,
                format!(
                    "{op} on {resource} needs a key with role {}",
                    rule.roles.join(" or ")
                ),
            ));
        }
        if (counted.len() as u32) < rule.threshold {
            return Err(Rejection::new(
                Reason::QuorumNotMet,
                format!(
                    "{op} on {resource} needs {} distinct keys with role {}; got {}",
                    rule.threshold,
                    rule.roles.join(" or "),
                    counted.len()
                ),
            ));
        }
        Ok(())
    }

    /// A short human summary for the agent's start banner.
    pub fn summary(&self) -> String {
        let keys: Vec<String> = self
            .file
            .keys
            .iter()
            .map(|(n, k)| format!("{n} ({})", k.roles.join(",")))
            .collect();
        format!(
            "{} key(s) [{}], {} rule(s), max_ttl {}, {} revoked",
            self.file.keys.len(),
            keys.join(", "),
            self.file.rules.len(),
            self.file.max_ttl,
            self.revoked.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::envelope::COMMAND_PAYLOAD_TYPE;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use rand_core::OsRng;
    use serde_json::{json, Value};
    use ssh_encoding::Encode;
    use ssh_key::{Algorithm, HashAlg, PrivateKey};

    struct Fixture {
        key: PrivateKey,
        policy: Policy,
    }

    fn fixture(extra: &str) -> Fixture {
        let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let text = format!(
            "version = 1\nmax_ttl = \"30m\"\n{extra}\n[keys.alice]\npublic_key = \"{}\"\nroles = [\"sre\"]\n\n[[rules]]\nops = [\"flag.*\", \"revert\"]\nroles = [\"sre\"]\n",
            key.public_key().to_openssh().unwrap()
        );
        let policy = Policy::from_toml(&text, "policy.toml").unwrap();
        Fixture { key, policy }
    }

    fn payload() -> Value {
        let now = std::time::SystemTime::now();
        json!({
            "id": ulid::Ulid::new().to_string(),
            "issuer": "alice@example.com",
            "issued_at": humantime::format_rfc3339_seconds(now).to_string(),
            "expires": humantime::format_rfc3339_seconds(now + Duration::from_secs(600)).to_string(),
            "reason": "INC-1",
            "target": {},
            "actions": [{"resource": "checkout-flags", "op": "flag.set", "flag": "f", "variant": "off"}],
        })
    }

    fn envelope(f: &Fixture, payload: &Value) -> Envelope {
        let bytes = serde_json::to_vec(payload).unwrap();
        let mut env = Envelope::new(COMMAND_PAYLOAD_TYPE, &bytes);
        let sig = f
            .key
            .sign(
                COMMAND_NAMESPACE,
                HashAlg::Sha512,
                &envelope::pae(COMMAND_PAYLOAD_TYPE, &bytes),
            )
            .unwrap();
        env.add_signature(&sig).unwrap();
        env
    }

    fn verify(f: &Fixture, bytes: &[u8]) -> Result<VerifiedCommand, Rejection> {
        f.policy.verify_envelope(bytes, Timestamp::now())
    }

    fn reason(f: &Fixture, bytes: &[u8]) -> Reason {
        verify(f, bytes).map(|_| ()).unwrap_err().reason
    }

    #[test]
    fn a_good_envelope_verifies() {
        let f = fixture("");
        let bytes = serde_json::to_vec(&envelope(&f, &payload())).unwrap();
        let v = verify(&f, &bytes).unwrap();
        assert_eq!(v.signers[0].name, "alice");
        assert_eq!(v.envelope_sha256, envelope::sha256_hex(&bytes));
    }

    #[test]
    fn invalid_utf8_anywhere_in_the_envelope_is_bad_envelope() {
        let f = fixture("");
        let bytes = serde_json::to_vec(&envelope(&f, &payload())).unwrap();
        // Inside the keyid, a hint nothing checks: a lossy copy of these
        // bytes would verify.
        let at = bytes.windows(7).position(|w| w == b"SHA256:").unwrap();
        let mut bad = bytes.clone();
        bad.insert(at, 0xFF);
        let lossy = String::from_utf8_lossy(&bad).into_owned();
        assert!(
            verify(&f, lossy.as_bytes()).is_ok(),
            "the lossy copy verifies"
        );
        let rej = verify(&f, &bad).map(|_| ()).unwrap_err();
        assert_eq!(rej.reason, Reason::BadEnvelope);
        assert!(rej.message.contains("not UTF-8"), "{}", rej.message);
        // Outside any string, and as a lone continuation byte.
        for (at, byte) in [(0, 0xFF), (bytes.len() - 1, 0x80)] {
            let mut bad = bytes.clone();
            bad.insert(at, byte);
            assert_eq!(reason(&f, &bad), Reason::BadEnvelope);
        }
    }

    /// Re-encodes the first signature's blob with `edit` applied.
    fn with_blob(env: &Envelope, edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let sig = envelope::decode_signature(&env.signatures[0].sig).unwrap();
        let mut blob = Vec::new();
        sig.encode(&mut blob).unwrap();
        edit(&mut blob);
        let mut env = env.clone();
        env.signatures[0].sig = STANDARD.encode(blob);
        serde_json::to_vec(&env).unwrap()
    }

    #[test]
    fn lenient_sshsig_encodings_are_bad_signature() {
        let f = fixture("");
        let env = envelope(&f, &payload());
        let trailing = with_blob(&env, |b| b.extend_from_slice(&[0u8; 16]));
        let rej = verify(&f, &trailing).map(|_| ()).unwrap_err();
        assert_eq!(rej.reason, Reason::BadSignature);
        assert!(rej.message.contains("16 byte(s)"), "{}", rej.message);
        // The signature's algorithm label, `ssh-ed25519` (11 bytes), is the
        // second of its kind in the blob (after the public key's); the same
        // bytes labelled `rsa-sha2-512` must not verify.
        let relabelled = with_blob(&env, |b| {
            let label = b"ssh-ed25519";
            let at = b
                .windows(label.len())
                .enumerate()
                .filter(|(_, w)| w == label)
                .nth(1)
                .map(|(i, _)| i)
                .unwrap();
            let sig_len = u32::from_be_bytes(b[at - 8..at - 4].try_into().unwrap()) + 1;
            b[at - 8..at - 4].copy_from_slice(&sig_len.to_be_bytes());
            b[at - 4..at].copy_from_slice(&12u32.to_be_bytes());
            b.splice(at..at + label.len(), b"rsa-sha2-512".iter().copied());
        });
        let rej = verify(&f, &relabelled).map(|_| ()).unwrap_err();
        assert_eq!(rej.reason, Reason::BadSignature);
        assert!(rej.message.contains("rsa-sha2-512"), "{}", rej.message);
    }

    #[test]
    fn a_non_canonical_id_is_bad_payload() {
        let f = fixture("");
        let mut p = payload();
        p["id"] = json!(p["id"].as_str().unwrap().to_lowercase());
        let bytes = serde_json::to_vec(&envelope(&f, &p)).unwrap();
        let rej = verify(&f, &bytes).map(|_| ()).unwrap_err();
        assert_eq!(rej.reason, Reason::BadPayload);
        assert!(rej.message.contains("canonical ULID"), "{}", rej.message);
    }

    #[test]
    fn a_hold_over_max_hold_is_hold_too_long() {
        let f = fixture("");
        assert_eq!(f.policy.file.max_hold.0, DEFAULT_MAX_HOLD);
        let mut p = payload();
        p["hold"] = json!("7d");
        let ok = serde_json::to_vec(&envelope(&f, &p)).unwrap();
        assert!(verify(&f, &ok).is_ok());
        p["hold"] = json!("7d 1s");
        let long = serde_json::to_vec(&envelope(&f, &p)).unwrap();
        let rej = verify(&f, &long).map(|_| ()).unwrap_err();
        assert_eq!(rej.reason, Reason::HoldTooLong);
        assert_eq!(
            rej.message,
            "hold is 7days 1s; the policy allows at most 7days"
        );
        let f = fixture("max_hold = \"1h\"");
        let mut p = payload();
        p["hold"] = json!("2h");
        let bytes = serde_json::to_vec(&envelope(&f, &p)).unwrap();
        assert_eq!(reason(&f, &bytes), Reason::HoldTooLong);
        // An absurd hold never reaches the comparison: the payload refuses it.
        p["hold"] = json!("500000000years");
        let bytes = serde_json::to_vec(&envelope(&f, &p)).unwrap();
        assert_eq!(reason(&f, &bytes), Reason::BadPayload);
    }

    #[test]
    fn hold_too_long_is_judged_only_after_signatures_verify() {
        let f = fixture("");
        let signed = payload();
        let mut unsigned = signed.clone();
        unsigned["hold"] = json!("31d");
        let mut tampered = envelope(&f, &signed);
        tampered.payload = STANDARD.encode(serde_json::to_vec(&unsigned).unwrap());
        assert_eq!(
            reason(&f, &serde_json::to_vec(&tampered).unwrap()),
            Reason::BadSignature
        );
    }

    #[test]
    fn load_errors_keep_their_cause() {
        use std::error::Error;
        let err = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/policy.toml: No such file or directory (os error 2)"
        );
        assert!(err
            .source()
            .is_some_and(|c| c.downcast_ref::<std::io::Error>().is_some()));
        let err = Policy::from_toml("version = \"one\"\n", "p.toml").unwrap_err();
        assert!(err.to_string().starts_with("p.toml:1:"), "{err}");
        assert!(err
            .source()
            .is_some_and(|c| c.downcast_ref::<toml::de::Error>().is_some()));
        let err = Policy::from_toml(
            "version = 1\nmax_ttl = \"30m\"\n[keys.eve]\npublic_key = \"ssh-ed25519 nonsense\"\nroles = [\"sre\"]\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("p.toml: keys.eve.public_key: not an OpenSSH public key: "),
            "{err}"
        );
        assert!(err
            .source()
            .is_some_and(|c| c.downcast_ref::<ssh_key::Error>().is_some()));
    }

    #[test]
    fn max_hold_and_max_ttl_must_be_sane() {
        let err = Policy::from_toml("version = 1\nmax_ttl = \"30m\"\nmax_hold = \"0s\"\n", "p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_hold"), "{err}");
        let err = Policy::from_toml(
            "version = 1\nmax_ttl = \"30m\"\nmax_hold = \"500000000years\"\n",
            "p",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("500000000years"), "{err}");
        let err = Policy::from_toml("version = 1\nmax_ttl = \"18446744073709551615s\"\n", "p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_ttl"), "{err}");
    }
}
