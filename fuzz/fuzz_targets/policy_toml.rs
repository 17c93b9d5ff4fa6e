//! `policy.toml`: parsed and checked at start and on every reload, then
//! used to judge a real signed command at a fixed time, so the policy's
//! durations, instants and rules meet the arithmetic that uses them.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tourniquet::trust::policy::Policy;

/// A command signed by the fuzzing key (the key of the `fuzz` seeds).
fn envelope() -> &'static [u8] {
    static ENV: OnceLock<Vec<u8>> = OnceLock::new();
    ENV.get_or_init(|| {
        let payload = br#"{"id":"01JD3Z8K6Q0V6N9W2X4Y5Z7A8B","issuer":"fuzz@example.com","issued_at":"2026-12-01T18:00:00Z","expires":"2026-12-01T18:15:00Z","reason":"INC-1: fuzzing","target":{},"actions":[{"resource":"checkout-flags","op":"flag.set","flag":"new_flow","variant":"off"}],"hold":"30m"}"#;
        let fx = tourniquet_fuzz::fixture();
        serde_json::to_vec(&tourniquet_fuzz::sign_envelope(&fx.signer, payload))
            .expect("an envelope serialises")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_toml(text, "policy.toml") else {
        return;
    };
    let _ = policy.summary();
    let fx = tourniquet_fuzz::fixture();
    if let Ok(cmd) = policy.verify_envelope(envelope(), fx.now) {
        for action in &cmd.payload.actions {
            let resource = action.resource.as_deref().unwrap_or("-");
            let _ = policy.authorize(&action.op, resource, &cmd.signers);
        }
    }
    let _ = policy.authorize("flag.set", "checkout-flags", &[]);
});
