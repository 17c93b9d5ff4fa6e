//! A command envelope as the HTTP API, the inbox and the fleet transport
//! receive it: `Policy::verify_envelope` must refuse anything it cannot
//! trust with a reason, and never panic.
//!
//! A signature whose `sig` is `"sign-me"` is signed for real by the
//! fuzzing key first (see `tourniquet_fuzz::resign`), so the fuzzer also
//! drives the payload, time and permission checks behind the signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tourniquet::command::rejection::Reason;

fuzz_target!(|data: &[u8]| {
    let fx = tourniquet_fuzz::fixture();
    let resigned = tourniquet_fuzz::resign(&fx.signer, data);
    let bytes = resigned.as_deref().unwrap_or(data);
    let verdict = fx.policy.verify_envelope(bytes, fx.now);
    if std::str::from_utf8(bytes).is_err() {
        // Verified as received: bytes that are not UTF-8 are never an
        // envelope, whatever a lossy copy of them would say.
        let reason = verdict.as_ref().err().map(|r| r.reason);
        assert!(
            matches!(reason, Some(Reason::BadEnvelope | Reason::TooLarge)),
            "invalid UTF-8 gave {reason:?}"
        );
    }
    let Ok(cmd) = verdict else {
        return;
    };
    assert!(
        !cmd.signers.is_empty(),
        "a verified command has a trusted signer"
    );
    assert!(
        cmd.payload.check().is_ok(),
        "a verified payload passes its own checks"
    );
    for action in &cmd.payload.actions {
        let resource = action.resource.as_deref().unwrap_or("-");
        let _ = fx.policy.authorize(&action.op, resource, &cmd.signers);
        let _ = action.describe();
        let _ = action.revert_target();
        let _ = action.halt_target();
    }
});
