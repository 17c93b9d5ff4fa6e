//! An envelope signature: base64 of an SSHSIG blob or the armored form
//! `ssh-keygen -Y sign` writes, and the raw blob under both.
//!
//! Besides "never panics", the strict decoder promises one encoding per
//! signature: a blob it accepts re-encodes to exactly the same bytes, and
//! the armored and base64 forms of it decode to the same signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssh_encoding::Encode;
use tourniquet::command::envelope::{
    armor_signature, decode_signature, decode_sshsig_blob, verify_sshsig, COMMAND_NAMESPACE,
};

/// The message every decoded signature is checked against.
const MESSAGE: &[u8] = b"DSSEv1 41 application/vnd.tourniquet.command.v1+json 2 {}";

fuzz_target!(|data: &[u8]| {
    // The raw blob.
    if let Ok(sig) = decode_sshsig_blob(data) {
        let mut again = Vec::new();
        sig.encode(&mut again).expect("a decoded SSHSIG encodes");
        assert_eq!(again, data, "an accepted blob has exactly one encoding");
        let _ = verify_sshsig(COMMAND_NAMESPACE, MESSAGE, &sig);
        let armored = armor_signature(&sig).expect("a decoded SSHSIG armors");
        assert_eq!(
            decode_signature(&armored).as_ref(),
            Ok(&sig),
            "the armored form decodes to the same signature"
        );
    }
    // The text an envelope's `sig` field holds.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(sig) = decode_signature(text) {
            let _ = verify_sshsig(COMMAND_NAMESPACE, MESSAGE, &sig);
        }
    }
});
