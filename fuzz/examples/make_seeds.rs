//! Writes the generated part of the committed seed corpora: envelopes and
//! SSHSIG blobs signed by the fuzzing key (with Tourniquet's own signing
//! code, and with `ssh-keygen -Y sign`), and an nginx include rendered by
//! the real provider. Hand-written seeds (payloads, configs, URLs) live in
//! the corpus directories as plain files.
//!
//! Run from the repository root, after changing the fuzzing key or the
//! envelope format:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds -- fuzz/corpus
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};
use ssh_encoding::Encode;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};
use tourniquet::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use tourniquet::trust::keys::Signer;
use tourniquet_fuzz::{fixture, sign_envelope, SIGN_ME};
use tourniquet_providers::nginx::{Nginx, NginxConfig};
use tourniquet_providers::{ActionSpec, Provider};

/// A command inside the fixture's clock and policy.
const FLAG_SET: &str = r#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8B","issuer":"fuzz@example.com","issued_at":"2026-12-01T18:00:00Z","expires":"2026-12-01T18:15:00Z","reason":"INC-1: checkout errors","target":{},"actions":[{"resource":"checkout-flags","op":"flag.set","flag":"new_flow","variant":"off"}],"hold":"30m"}"#;

/// Payloads worth signing: each reaches a different part of the agent.
fn payloads() -> Vec<(&'static str, String)> {
    vec![
        ("flag-set", FLAG_SET.to_string()),
        (
            "guarded-rollout",
            r#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8C","issuer":"fuzz@example.com","issued_at":"2026-12-01T18:00:00Z","not_before":"2026-12-01T18:01:00Z","expires":"2026-12-01T18:20:00Z","reason":"INC-2","ticket":"OPS-7","target":{"labels":{"env":"prod","region":"eu-*"},"agents":["checkout-eu-1"]},"actions":[{"resource":"checkout-flags","op":"flag.state","flag":"new_flow","state":"DISABLED"}],"guard":{"probes":["checkout-5xx"],"bake":"2m","before":"30s","interval":"1s","on_breach":"pause","on_inconclusive":"rollback","failure_limit":2,"checks":[{"probe":"checkout-5xx","max":"0.5%","max_increase":"400ms","min":"12.5"}]},"rollout":{"waves":[1,10,50,100],"wave_bake":"5m","max_failures":1},"expect":40,"dry_run":true}"#.to_string(),
        ),
        (
            "revert",
            r#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8D","issuer":"fuzz@example.com","issued_at":"2026-12-01T18:00:00Z","expires":"2026-12-01T18:15:00Z","reason":"undo INC-1","target":{},"actions":[{"op":"revert","command":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8B"}]}"#.to_string(),
        ),
        (
            "halt",
            r#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8E","issuer":"fuzz@example.com","issued_at":"2026-12-01T18:00:00Z","expires":"2026-12-01T18:15:00Z","reason":"stop the rollout","target":{},"actions":[{"op":"halt","command":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8C"}]}"#.to_string(),
        ),
        (
            "nginx",
            r#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8F","issuer":"fuzz@example.com","issued_at":"2026-12-01T18:00:00Z","expires":"2026-12-01T18:15:00Z","reason":"INC-3: scraping","target":{},"actions":[{"resource":"edge-nginx","op":"nginx.deny","cidrs":["203.0.113.0/24","2001:db8::/32"]},{"resource":"edge-nginx","op":"nginx.brownout","paths":["/search","/api/v1.2/"],"status":429,"retry_after":30}],"hold":"1h"}"#.to_string(),
        ),
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("creating a corpus dir");
    fs::write(dir.join(name), bytes).expect("writing a seed");
}

fn json_bytes(env: &Envelope) -> Vec<u8> {
    serde_json::to_vec(env).expect("an envelope serialises")
}

/// Signs `message` in `namespace` with `ssh-keygen -Y sign` and the key in
/// `key_file`; returns the armored signature.
fn ssh_keygen_sign(key_file: &Path, namespace: &str, message: &[u8], work: &Path) -> String {
    let msg = work.join("message");
    fs::write(&msg, message).expect("writing the message");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
        .arg(key_file)
        .arg(&msg)
        .status()
        .expect("ssh-keygen runs (install openssh-client: scripts/setup does)");
    assert!(status.success(), "ssh-keygen -Y sign failed");
    let sig = msg.with_extension("sig");
    let text = fs::read_to_string(&sig).expect("ssh-keygen wrote the signature");
    fs::remove_file(&sig).expect("removing the signature");
    text
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let fx = fixture();
    let work = tempfile::tempdir().expect("a temp dir");

    // payload_parse: the payloads themselves; policy_toml: the policy that
    // trusts the fuzzing key, so the policy target reaches verification.
    for (name, payload) in payloads() {
        write(
            &out.join("payload_parse"),
            &format!("{name}.json"),
            payload.as_bytes(),
        );
    }
    write(
        &out.join("policy_toml"),
        "fuzz-policy.toml",
        tourniquet_fuzz::policy_toml().as_bytes(),
    );

    // envelope_verify: real signed envelopes, "sign-me" ones for the
    // in-target signer, and near misses.
    let dir = out.join("envelope_verify");
    for (name, payload) in payloads() {
        let signed = sign_envelope(&fx.signer, payload.as_bytes());
        write(&dir, &format!("signed-{name}.json"), &json_bytes(&signed));
        let mut sign_me = Envelope::new(COMMAND_PAYLOAD_TYPE, payload.as_bytes());
        sign_me.signatures.push(envelope::EnvelopeSignature {
            keyid: String::new(),
            sig: SIGN_ME.into(),
        });
        write(&dir, &format!("sign-me-{name}.json"), &json_bytes(&sign_me));
    }
    let good = sign_envelope(&fx.signer, FLAG_SET.as_bytes());
    let mut two = good.clone();
    two.signatures.push(good.signatures[0].clone());
    write(&dir, "two-signatures.json", &json_bytes(&two));
    let mut unsigned = good.clone();
    unsigned.signatures.clear();
    write(&dir, "unsigned.json", &json_bytes(&unsigned));
    let stranger = Signer::File(Box::new(
        PrivateKey::try_from(KeypairData::Ed25519(Ed25519Keypair::from_seed(&[7; 32])))
            .expect("a key"),
    ));
    write(
        &dir,
        "unknown-signer.json",
        &json_bytes(&sign_envelope(&stranger, FLAG_SET.as_bytes())),
    );
    let expired = FLAG_SET.replace("18:15:00Z", "18:01:00Z");
    write(
        &dir,
        "expired.json",
        &json_bytes(&sign_envelope(&fx.signer, expired.as_bytes())),
    );

    // The same command signed by OpenSSH itself, armored as it writes it.
    let key_file = work.path().join("fuzz_key");
    let key = tourniquet_fuzz::operator_key();
    fs::write(
        &key_file,
        key.to_openssh(LineEnding::LF)
            .expect("the key encodes")
            .as_bytes(),
    )
    .expect("writing the key");
    let mut perms = fs::metadata(&key_file).expect("key metadata").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    fs::set_permissions(&key_file, perms).expect("key mode");
    let armored = ssh_keygen_sign(
        &key_file,
        COMMAND_NAMESPACE,
        &envelope::pae(COMMAND_PAYLOAD_TYPE, FLAG_SET.as_bytes()),
        work.path(),
    );
    let mut by_openssh = Envelope::new(COMMAND_PAYLOAD_TYPE, FLAG_SET.as_bytes());
    by_openssh.signatures.push(envelope::EnvelopeSignature {
        keyid: envelope::fingerprint(key.public_key().key_data()),
        sig: armored.clone(),
    });
    write(&dir, "signed-by-ssh-keygen.json", &json_bytes(&by_openssh));
    assert!(
        fx.policy
            .verify_envelope(&json_bytes(&by_openssh), fx.now)
            .is_ok(),
        "the ssh-keygen envelope verifies"
    );
    assert!(
        fx.policy
            .verify_envelope(&json_bytes(&good), fx.now)
            .is_ok(),
        "the signed envelope verifies"
    );

    // sshsig_parse: the blob, its base64 and armored forms, and near misses.
    let dir = out.join("sshsig_parse");
    let sig = envelope::decode_signature(&armored).expect("ssh-keygen's signature decodes");
    let mut blob = Vec::new();
    sig.encode(&mut blob).expect("the signature encodes");
    write(&dir, "ssh-keygen.blob", &blob);
    write(&dir, "ssh-keygen.armored", armored.as_bytes());
    write(&dir, "tourniquet.b64", good.signatures[0].sig.as_bytes());
    let mut trailing = blob.clone();
    trailing.extend_from_slice(&[0; 16]);
    write(&dir, "trailing-bytes.blob", &trailing);
    let label = b"ssh-ed25519";
    if let Some(at) = blob.windows(label.len()).rposition(|w| w == label) {
        // The signature's own algorithm label, relabelled: same length, so
        // only the label check can refuse it.
        let mut relabelled = blob.clone();
        relabelled[at..at + label.len()].copy_from_slice(b"ssh-ed25518");
        write(&dir, "relabelled.blob", &relabelled);
    }

    // nginx_rules, mode 3: an include rendered by the real provider.
    let include = work.path().join("hotfixes.conf");
    let config: NginxConfig = serde_json::from_value(json!({
        "include": include,
        "test_command": ["true"],
        "reload_command": ["true"],
    }))
    .expect("an nginx config");
    let nginx = Nginx::new(config).expect("an nginx provider");
    let action = |op: &str, params: Value| ActionSpec {
        op: op.into(),
        params: params.as_object().cloned().unwrap_or_else(Map::new),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        nginx
            .apply(&action(
                "nginx.deny",
                json!({"cidrs": ["203.0.113.7/24", "2001:db8::1/48"]}),
            ))
            .await
            .expect("deny applies");
        nginx
            .apply(&action(
                "nginx.brownout",
                json!({"paths": ["/search", "/api/v1.2/"], "status": 429, "retry_after": 30}),
            ))
            .await
            .expect("brownout applies");
    });
    let mut text = vec![3u8];
    text.extend(fs::read(&include).expect("the include"));
    write(&out.join("nginx_rules"), "include-rendered", &text);
    println!("seeds written under {}", out.display());
}
