//! DSSE envelopes signed with OpenSSH SSHSIG.
//!
//! DSSE signs the exact payload bytes (no JSON canonicalisation to get
//! wrong), and SSHSIG lets operators sign with the keys, agents and FIDO
//! tokens they already have (`ssh-keygen -Y sign`). Verification here is
//! deliberately narrower than SSHSIG allows: ed25519 only, strict signature
//! checks, weak keys refused.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssh_encoding::{Decode, Encode};
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, LineEnding, SshSig};

/// payloadType of a command.
pub const COMMAND_PAYLOAD_TYPE: &str = "application/vnd.tourniquet.command.v1+json";
/// payloadType of a receipt.
pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.tourniquet.receipt.v1+json";
/// SSHSIG namespace of command signatures.
pub const COMMAND_NAMESPACE: &str = "tourniquet-command";
/// SSHSIG namespace of receipt signatures.
pub const RECEIPT_NAMESPACE: &str = "tourniquet-receipt";

/// A DSSE v1 envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    /// Base64 of the payload bytes. Standard and URL-safe alphabets are both
    /// accepted, as DSSE requires; we always emit standard.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// The signer's key fingerprint (`SHA256:…`). A hint only: the signer is
    /// always taken from the public key inside the SSHSIG blob.
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the binary SSHSIG blob. An armored `-----BEGIN SSH
    /// SIGNATURE-----` block, as `ssh-keygen -Y sign` writes, is accepted too.
    pub sig: String,
}

/// Why an envelope or signature failed to decode or verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a DSSE envelope: {0}")]
    Malformed(String),
    #[error("payload is not valid base64")]
    PayloadEncoding,
    #[error("signature {index}: {why}")]
    Signature { index: usize, why: String },
}

const URL_SAFE_INDIFFERENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const STANDARD_INDIFFERENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64 in either DSSE-permitted alphabet, padded or not.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD_INDIFFERENT
        .decode(text)
        .or_else(|_| URL_SAFE_INDIFFERENT.decode(text))
        .ok()
}

/// DSSE's pre-authentication encoding: what every signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Envelope {
    /// An unsigned envelope around `payload`.
    pub fn new(payload_type: &str, payload: &[u8]) -> Self {
        Envelope {
            payload_type: payload_type.to_string(),
            payload: STANDARD.encode(payload),
            signatures: Vec::new(),
        }
    }

    /// Parses envelope JSON strictly.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The payload bytes exactly as signed.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        decode_base64(&self.payload).ok_or(EnvelopeError::PayloadEncoding)
    }

    /// The bytes every signature covers.
    pub fn pae(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(pae(&self.payload_type, &self.payload_bytes()?))
    }

    /// Appends a signature made elsewhere.
    pub fn add_signature(&mut self, sig: &SshSig) -> Result<(), EnvelopeError> {
        let mut blob = Vec::new();
        sig.encode(&mut blob)
            .map_err(|e| EnvelopeError::Malformed(format!("encoding signature: {e}")))?;
        let keyid = fingerprint(sig.public_key());
        self.signatures.push(EnvelopeSignature {
            keyid,
            sig: STANDARD.encode(blob),
        });
        Ok(())
    }
}

/// The `SHA256:…` fingerprint of a public key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Decodes one envelope signature into an SSHSIG.
pub fn decode_signature(sig: &str) -> Result<SshSig, String> {
    let trimmed = sig.trim();
    if trimmed.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return SshSig::from_pem(trimmed).map_err(|e| format!("not an SSHSIG: {e}"));
    }
    let blob = decode_base64(trimmed).ok_or("signature is not valid base64")?;
    SshSig::decode(&mut blob.as_slice()).map_err(|e| format!("not an SSHSIG blob: {e}"))
}

/// Armors an SSHSIG the way `ssh-keygen -Y sign` writes it.
pub fn armor_signature(sig: &SshSig) -> Result<String, String> {
    sig.to_pem(LineEnding::LF).map_err(|e| e.to_string())
}

/// Checks one SSHSIG over `message` strictly, and returns the ed25519 key it
/// was made with.
///
/// Refused: another namespace, a non-ed25519 key, a weak (small-order) key,
/// a malleable or non-canonical signature.
pub fn verify_sshsig(namespace: &str, message: &[u8], sig: &SshSig) -> Result<KeyData, String> {
    if sig.version() != SshSig::VERSION {
        return Err(format!("unsupported SSHSIG version {}", sig.version()));
    }
    if sig.namespace() != namespace {
        return Err(format!(
            "signed for namespace {:?}, expected {namespace:?}",
            sig.namespace()
        ));
    }
    let key = sig.public_key().ed25519().ok_or_else(|| {
        format!(
            "key type {} is not accepted; use ssh-ed25519",
            sig.public_key().algorithm()
        )
    })?;
    let verifying = VerifyingKey::from_bytes(&key.0)
        .map_err(|_| "public key is not a valid ed25519 point".to_string())?;
    if verifying.is_weak() {
        return Err("public key is weak (small order) and is refused".into());
    }
    if !matches!(sig.hash_alg(), HashAlg::Sha256 | HashAlg::Sha512) {
        return Err("unsupported hash algorithm".into());
    }
    let bytes: [u8; 64] = sig
        .signature_bytes()
        .try_into()
        .map_err(|_| "ed25519 signature must be 64 bytes".to_string())?;
    let signature = EdSignature::from_bytes(&bytes);
    let signed_data =
        SshSig::signed_data(namespace, sig.hash_alg(), message).map_err(|e| e.to_string())?;
    verifying
        .verify_strict(&signed_data, &signature)
        .map_err(|_| "signature does not verify".to_string())?;
    Ok(sig.public_key().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_dsse_spec_example() {
        // From the DSSE v1 protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn both_base64_alphabets_decode() {
        let bytes = [0xfbu8, 0xff, 0xfe];
        assert_eq!(decode_base64("+//+").unwrap(), bytes);
        assert_eq!(decode_base64("-__-").unwrap(), bytes);
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert!(decode_base64("***").is_none());
    }
}
