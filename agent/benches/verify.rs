//! Envelope verification cost: strict SSHSIG/ed25519 checks plus the strict
//! payload parse, with one and with two signatures.

use criterion::{criterion_group, criterion_main, Criterion};
use tourniquet::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};
use tourniquet::command::payload::Timestamp;
use tourniquet::trust::keys::{generate_keypair, Signer};
use tourniquet::trust::policy::Policy;

fn bench_verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut keys = Vec::new();
    for name in ["alice", "bob"] {
        let path = dir.path().join(name);
        let public = generate_keypair(&path, name).expect("keygen");
        keys.push((
            Signer::load(&path).expect("load"),
            public.to_openssh().expect("pub"),
        ));
    }
    let policy = Policy::from_toml(
        &format!(
            "version = 1\nmax_ttl = \"30m\"\n[keys.alice]\npublic_key = \"{}\"\nroles = [\"sre\"]\n[keys.bob]\npublic_key = \"{}\"\nroles = [\"sre\"]\n[[rules]]\nops = [\"flag.*\"]\nroles = [\"sre\"]\nthreshold = 1\n",
            keys[0].1, keys[1].1
        ),
        "bench",
    )
    .expect("policy");
    let now = std::time::SystemTime::now();
    let payload = serde_json::json!({
        "id": ulid::Ulid::new().to_string(),
        "issuer": "alice@example.com",
        "issued_at": humantime::format_rfc3339_seconds(now).to_string(),
        "expires": humantime::format_rfc3339_seconds(now + std::time::Duration::from_secs(600)).to_string(),
        "reason": "INC-4821: checkout 500s after TLS change",
        "target": {"labels": {"env": "prod"}},
        "actions": [{"resource": "checkout-flags", "op": "flag.set", "flag": "new_flow", "variant": "off"}],
        "hold": "30m"
    });
    let bytes = serde_json::to_vec(&payload).expect("payload");
    let pae = envelope::pae(COMMAND_PAYLOAD_TYPE, &bytes);
    let mut one = Envelope::new(COMMAND_PAYLOAD_TYPE, &bytes);
    one.add_signature(&keys[0].0.sign(COMMAND_NAMESPACE, &pae).expect("sign"))
        .expect("add");
    let mut two = one.clone();
    two.add_signature(&keys[1].0.sign(COMMAND_NAMESPACE, &pae).expect("sign"))
        .expect("add");
    let one = serde_json::to_vec(&one).expect("json");
    let two = serde_json::to_vec(&two).expect("json");

    let at = Timestamp::now();
    c.bench_function("verify_envelope/1_signature", |b| {
        b.iter(|| {
            policy
                .verify_envelope(std::hint::black_box(&one), at)
                .expect("verifies")
        })
    });
    c.bench_function("verify_envelope/2_signatures", |b| {
        b.iter(|| {
            policy
                .verify_envelope(std::hint::black_box(&two), at)
                .expect("verifies")
        })
    });
    c.bench_function("sign/ed25519_file_key", |b| {
        b.iter(|| {
            keys[0]
                .0
                .sign(COMMAND_NAMESPACE, std::hint::black_box(&pae))
                .expect("sign")
        })
    });
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
