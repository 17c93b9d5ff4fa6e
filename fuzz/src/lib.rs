//! What the fuzz targets share: one operator key, a policy that trusts it,
//! a fixed clock, and a way to sign what the fuzzer writes.
//!
//! The key comes from a fixed seed, so every run (and every crash
//! reproduction) sees the same policy, and a committed signed envelope stays
//! valid. It is a fuzzing fixture and nothing else: no agent ever trusts it.
//!
//! Signing inside a target (see [`resign`]) is what lets the fuzzer reach the
//! code behind the signature check. Without it every mutated envelope dies at
//! `bad_signature`, and the payload, times and permissions of a verified
//! command, which a holder of a trusted key controls, would go untested.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::PrivateKey;
use tourniquet::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use tourniquet::trust::keys::Signer;
use tourniquet::command::payload::Timestamp;
use tourniquet::trust::policy::Policy;

/// The seed of the fuzzing operator key.
const KEY_SEED: [u8; 32] = *b"tourniquet fuzz operator key 01!";

/// The agent's clock in every target: inside the seed commands' validity.
pub const NOW: &str = "2026-12-01T18:05:00Z";

/// An envelope signature whose `sig` is this text is replaced by a real
/// signature of the fuzzing key over the envelope before it is verified.
pub const SIGN_ME: &str = "sign-me";

/// The fuzzing operator key.
pub fn operator_key() -> PrivateKey {
    let pair = Ed25519Keypair::from_seed(&KEY_SEED);
    let mut key = PrivateKey::try_from(KeypairData::Ed25519(pair))
        .expect("an ed25519 keypair makes a private key");
    key.set_comment("fuzz@tourniquet.invalid");
    key
}

/// The policy the envelope target verifies against: the fuzzing key, with
/// every op on every resource, and the rules a real policy has.
pub fn policy_toml() -> String {
    let public = operator_key()
        .public_key()
        .to_openssh()
        .expect("an ed25519 public key encodes");
    format!(
        r#"version = 1
expires = "2027-06-01T00:00:00Z"
max_ttl = "30m"
clock_skew = "2m"
revoked = ["SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"]

[keys.fuzz]
public_key = "{public}"
roles = ["sre"]
valid_after = "2026-01-01T00:00:00Z"

[[rules]]
ops = ["flag.state"]
resources = ["checkout-*"]
roles = ["sre"]
threshold = 2

[[rules]]
ops = ["*"]
resources = ["*"]
roles = ["sre"]
"#
    )
}

/// Everything a target needs, built once per process.
pub struct Fixture {
    pub policy: Policy,
    pub signer: Signer,
    pub now: Timestamp,
}

/// The shared fixture.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        policy: Policy::from_toml(&policy_toml(), "fuzz-policy.toml")
            .expect("the fuzzing policy is valid"),
        signer: Signer::File(Box::new(operator_key())),
        now: Timestamp::parse(NOW).expect("NOW is RFC 3339"),
    })
}

/// A command envelope over `payload`, signed by the fuzzing key the way
/// `tourniquet` signs (the CLI's compose path).
pub fn sign_envelope(signer: &Signer, payload: &[u8]) -> Envelope {
    let mut env = Envelope::new(COMMAND_PAYLOAD_TYPE, payload);
    let sig = signer
        .sign(
            COMMAND_NAMESPACE,
            &envelope::pae(COMMAND_PAYLOAD_TYPE, payload),
        )
        .expect("the fuzzing key signs");
    env.add_signature(&sig).expect("a fresh SSHSIG encodes");
    env
}

/// If `data` is an envelope with a [`SIGN_ME`] signature and a payload that
/// decodes, the same envelope with each such signature made real; else
/// `None`, and the target verifies `data` as it came.
pub fn resign(signer: &Signer, data: &[u8]) -> Option<Vec<u8>> {
    let mut env = Envelope::from_json(data).ok()?;
    if !env.signatures.iter().any(|s| s.sig == SIGN_ME) {
        return None;
    }
    let message = env.pae().ok()?;
    let sig = signer.sign(COMMAND_NAMESPACE, &message).ok()?;
    let signed = {
        let mut one = Envelope::new(&env.payload_type, b"");
        one.add_signature(&sig).ok()?;
        one.signatures.pop()?
    };
    for s in env.signatures.iter_mut().filter(|s| s.sig == SIGN_ME) {
        s.sig = signed.sig.clone();
        if s.keyid.is_empty() {
            s.keyid = signed.keyid.clone();
        }
    }
    serde_json::to_vec(&env).ok()
}

/// A scratch directory for targets that must go through a real file (the
/// providers read their files themselves): inside
/// `$TOURNIQUET_FUZZ_SCRATCH` when set (scripts/fuzz sets it and removes
/// it afterwards, since a fuzzing process ends without running drops), else
/// on tmpfs when there is one, so a write and its fsync cost microseconds,
/// not a disk flush.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let builder = {
            let mut b = tempfile::Builder::new();
            b.prefix("tourniquet-fuzz-");
            b
        };
        let parents = [
            std::env::var_os("TOURNIQUET_FUZZ_SCRATCH").map(PathBuf::from),
            Some(PathBuf::from("/dev/shm")),
        ];
        for parent in parents.into_iter().flatten() {
            if parent.is_dir() {
                if let Ok(dir) = builder.tempdir_in(&parent) {
                    return dir;
                }
            }
        }
        builder.tempdir().expect("a temp dir for the fuzz target")
    })
    .path()
}

/// A current-thread runtime for the providers' async methods.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}
