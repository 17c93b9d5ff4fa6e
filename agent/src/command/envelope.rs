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
use ssh_encoding::Encode;
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, HashAlg, LineEnding, Signature, SshSig};

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

/// Decodes one envelope signature into an SSHSIG, strictly (see
/// [`decode_sshsig_blob`]): base64 of the binary blob, or the armored
/// `-----BEGIN SSH SIGNATURE-----` form `ssh-keygen -Y sign` writes.
pub fn decode_signature(sig: &str) -> Result<SshSig, String> {
    decode_signature_strict(sig).map_err(|e| e.to_string())
}

/// [`decode_signature`] with a typed error.
pub fn decode_signature_strict(sig: &str) -> Result<SshSig, SshSigError> {
    let trimmed = sig.trim();
    let blob = if trimmed.starts_with(ARMOR_BEGIN) {
        dearmor(trimmed)?
    } else {
        decode_base64(trimmed).ok_or(SshSigError::Base64)?
    };
    decode_sshsig_blob(&blob)
}

const ARMOR_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const ARMOR_END: &str = "-----END SSH SIGNATURE-----";
const SSHSIG_MAGIC: &[u8] = b"SSHSIG";
const ED25519: &[u8] = b"ssh-ed25519";

/// Why the strict SSHSIG decoder refused a signature. Every case is a
/// `bad_signature`: the blob is not one this agent will judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshSigError {
    #[error("signature is not valid base64")]
    Base64,
    #[error("armored signature is malformed: {0}")]
    Armor(&'static str),
    #[error("not an SSHSIG blob: it does not start with \"SSHSIG\"")]
    Magic,
    #[error("SSHSIG blob is truncated in its {0}")]
    Truncated(&'static str),
    #[error("SSHSIG blob has {extra} byte(s) after its {after}; a blob must end there")]
    Trailing { extra: usize, after: &'static str },
    #[error("SSHSIG version {0} is not supported; only version 1 is")]
    Version(u32),
    #[error("key type {0} is not accepted; use ssh-ed25519")]
    KeyType(String),
    #[error("ed25519 public key must be 32 bytes; it is {0}")]
    KeyLength(usize),
    #[error("namespace must be non-empty UTF-8")]
    Namespace,
    #[error("the reserved field must be empty; it holds {0} byte(s)")]
    Reserved(usize),
    #[error("hash algorithm {0} is not accepted; use sha256 or sha512")]
    HashAlg(String),
    #[error("signature algorithm {label} does not match the key type {key}")]
    AlgorithmMismatch { label: String, key: &'static str },
    #[error("ed25519 signature must be 64 bytes; it is {0}")]
    SignatureLength(usize),
    #[error("SSHSIG could not be rebuilt: {0}")]
    Build(String),
}

/// An attacker-chosen label, quoted, escaped and cut short for a message.
fn quoted_label(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let cut = &bytes[..bytes.len().min(MAX)];
    let more = if bytes.len() > MAX { "…" } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

/// A cursor over SSH wire encoding (RFC 4251 §5) that names what it was
/// reading when the bytes ran out.
struct Wire<'a> {
    rest: &'a [u8],
}

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SshSigError> {
        if self.rest.len() < n {
            return Err(SshSigError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, SshSigError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `string`: a u32 length, then that many bytes.
    fn string(&mut self, what: &'static str) -> Result<&'a [u8], SshSigError> {
        let len = usize::try_from(self.u32(what)?).map_err(|_| SshSigError::Truncated(what))?;
        self.take(len, what)
    }

    /// Refuses anything left over after `after`.
    fn finish(self, after: &'static str) -> Result<(), SshSigError> {
        match self.rest.len() {
            0 => Ok(()),
            extra => Err(SshSigError::Trailing { extra, after }),
        }
    }
}

/// Decodes a binary SSHSIG blob (OpenSSH PROTOCOL.sshsig) strictly.
///
/// `ssh-key`'s own decoder is lenient: it ignores bytes after the blob and
/// inside nested fields, takes any reserved field, and does not tie the
/// signature's algorithm label to the key. Each of those is room for one
/// signed command to have two encodings, so this decoder refuses them: the
/// blob must be exactly `"SSHSIG"`, version 1, an ed25519 public key
/// (exactly its type and 32 bytes), a non-empty namespace, an empty reserved
/// field, hash `sha256` or `sha512`, and a signature labelled `ssh-ed25519`
/// holding exactly 64 bytes, with nothing after any of them.
pub fn decode_sshsig_blob(blob: &[u8]) -> Result<SshSig, SshSigError> {
    let mut wire = Wire { rest: blob };
    if wire.take(SSHSIG_MAGIC.len(), "magic preamble")? != SSHSIG_MAGIC {
        return Err(SshSigError::Magic);
    }
    let version = wire.u32("version")?;
    if version != 1 {
        return Err(SshSigError::Version(version));
    }

    let mut key = Wire {
        rest: wire.string("public key")?,
    };
    let key_type = key.string("public key type")?;
    if key_type != ED25519 {
        return Err(SshSigError::KeyType(quoted_label(key_type)));
    }
    let key_bytes: [u8; 32] = {
        let b = key.string("public key")?;
        b.try_into().map_err(|_| SshSigError::KeyLength(b.len()))?
    };
    key.finish("public key")?;

    let namespace = std::str::from_utf8(wire.string("namespace")?)
        .ok()
        .filter(|n| !n.is_empty())
        .ok_or(SshSigError::Namespace)?;
    let reserved = wire.string("reserved field")?;
    if !reserved.is_empty() {
        return Err(SshSigError::Reserved(reserved.len()));
    }
    let hash_alg = match wire.string("hash algorithm")? {
        b"sha256" => HashAlg::Sha256,
        b"sha512" => HashAlg::Sha512,
        other => return Err(SshSigError::HashAlg(quoted_label(other))),
    };

    let mut sig = Wire {
        rest: wire.string("signature")?,
    };
    let label = sig.string("signature algorithm")?;
    if label != ED25519 {
        return Err(SshSigError::AlgorithmMismatch {
            label: quoted_label(label),
            key: "ssh-ed25519",
        });
    }
    let sig_bytes = sig.string("signature")?;
    if sig_bytes.len() != 64 {
        return Err(SshSigError::SignatureLength(sig_bytes.len()));
    }
    sig.finish("signature")?;
    wire.finish("signature")?;

    let signature = Signature::new(Algorithm::Ed25519, sig_bytes.to_vec())
        .map_err(|e| SshSigError::Build(e.to_string()))?;
    SshSig::new(
        KeyData::Ed25519(Ed25519PublicKey(key_bytes)),
        namespace,
        hash_alg,
        signature,
    )
    .map_err(|e| SshSigError::Build(e.to_string()))
}

/// The blob inside an armored signature: the BEGIN line, base64 lines, the
/// END line, nothing else (OpenSSH's `sshsig_dearmor`, without its slack).
fn dearmor(text: &str) -> Result<Vec<u8>, SshSigError> {
    let body = text
        .strip_prefix(ARMOR_BEGIN)
        .ok_or(SshSigError::Armor("it must start with the BEGIN line"))?
        .strip_suffix(ARMOR_END)
        .ok_or(SshSigError::Armor("it must end with the END line"))?;
    let body = body
        .strip_prefix("\r\n")
        .or_else(|| body.strip_prefix('\n'))
        .ok_or(SshSigError::Armor("the BEGIN line must end with a newline"))?;
    let mut b64 = String::with_capacity(body.len());
    for line in body.lines() {
        if !line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(SshSigError::Armor("a line holds a non-base64 character"));
        }
        b64.push_str(line);
    }
    STANDARD.decode(b64).map_err(|_| SshSigError::Base64)
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

    use rand_core::OsRng;
    use ssh_encoding::Decode;
    use ssh_key::PrivateKey;

    const MESSAGE: &[u8] = b"DSSEv1 2 {} 2 {}";

    fn signed() -> SshSig {
        let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        key.sign(COMMAND_NAMESPACE, HashAlg::Sha512, MESSAGE)
            .unwrap()
    }

    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    /// An SSHSIG blob, field by field, so each test changes one thing.
    struct Parts {
        magic: Vec<u8>,
        version: u32,
        key: Vec<u8>,
        namespace: Vec<u8>,
        reserved: Vec<u8>,
        hash: Vec<u8>,
        sig: Vec<u8>,
        trailing: Vec<u8>,
    }

    impl Parts {
        fn of(sig: &SshSig) -> Parts {
            let mut key = Vec::new();
            put(&mut key, b"ssh-ed25519");
            put(&mut key, &sig.public_key().ed25519().unwrap().0);
            let mut s = Vec::new();
            put(&mut s, b"ssh-ed25519");
            put(&mut s, sig.signature_bytes());
            Parts {
                magic: b"SSHSIG".to_vec(),
                version: 1,
                key,
                namespace: sig.namespace().as_bytes().to_vec(),
                reserved: Vec::new(),
                hash: sig.hash_alg().as_str().as_bytes().to_vec(),
                sig: s,
                trailing: Vec::new(),
            }
        }

        fn blob(&self) -> Vec<u8> {
            let mut out = self.magic.clone();
            out.extend_from_slice(&self.version.to_be_bytes());
            put(&mut out, &self.key);
            put(&mut out, &self.namespace);
            put(&mut out, &self.reserved);
            put(&mut out, &self.hash);
            put(&mut out, &self.sig);
            out.extend_from_slice(&self.trailing);
            out
        }

        fn base64(&self) -> String {
            STANDARD.encode(self.blob())
        }
    }

    /// What the lenient decoder of the ssh-key crate makes of a blob, and
    /// whether that would have verified: proof that a refusal below is the
    /// strict decoder's doing, not a broken test blob.
    fn lenient_verifies(blob: &[u8]) -> bool {
        SshSig::decode(&mut &blob[..])
            .ok()
            .is_some_and(|s| verify_sshsig(COMMAND_NAMESPACE, MESSAGE, &s).is_ok())
    }

    #[test]
    fn a_well_formed_sshsig_decodes_and_verifies() {
        let sig = signed();
        let parts = Parts::of(&sig);
        let mut reference = Vec::new();
        sig.encode(&mut reference).unwrap();
        assert_eq!(
            parts.blob(),
            reference,
            "the test encoder matches ssh-key's"
        );
        let decoded = decode_signature(&parts.base64()).unwrap();
        assert_eq!(decoded, sig);
        verify_sshsig(COMMAND_NAMESPACE, MESSAGE, &decoded).unwrap();
        let armored = armor_signature(&sig).unwrap();
        let decoded = decode_signature(&armored).unwrap();
        verify_sshsig(COMMAND_NAMESPACE, MESSAGE, &decoded).unwrap();
        let sha256 = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .unwrap()
            .sign(COMMAND_NAMESPACE, HashAlg::Sha256, MESSAGE)
            .unwrap();
        let decoded = decode_signature(&Parts::of(&sha256).base64()).unwrap();
        verify_sshsig(COMMAND_NAMESPACE, MESSAGE, &decoded).unwrap();
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut parts = Parts::of(&signed());
        parts.trailing = vec![0xAA; 16];
        assert!(lenient_verifies(&parts.blob()));
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::Trailing {
                extra: 16,
                after: "signature"
            }
        );
        assert!(decode_signature(&parts.base64())
            .unwrap_err()
            .contains("16 byte(s) after its signature"));
    }

    #[test]
    fn trailing_bytes_inside_nested_fields_are_refused() {
        let sig = signed();
        let mut parts = Parts::of(&sig);
        parts.key.extend_from_slice(b"junk");
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::Trailing {
                extra: 4,
                after: "public key"
            }
        );
        let mut parts = Parts::of(&sig);
        parts.sig.extend_from_slice(b"junk");
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::Trailing {
                extra: 4,
                after: "signature"
            }
        );
    }

    #[test]
    fn a_signature_label_that_is_not_the_keys_algorithm_is_refused() {
        let sig = signed();
        let mut parts = Parts::of(&sig);
        parts.sig.clear();
        put(&mut parts.sig, b"rsa-sha2-512");
        put(&mut parts.sig, sig.signature_bytes());
        assert!(lenient_verifies(&parts.blob()));
        let err = decode_sshsig_blob(&parts.blob()).unwrap_err();
        assert_eq!(
            err,
            SshSigError::AlgorithmMismatch {
                label: "\"rsa-sha2-512\"".into(),
                key: "ssh-ed25519"
            }
        );
        assert_eq!(
            err.to_string(),
            "signature algorithm \"rsa-sha2-512\" does not match the key type ssh-ed25519"
        );
    }

    #[test]
    fn magic_version_reserved_and_hash_are_exact() {
        let sig = signed();
        let mut parts = Parts::of(&sig);
        parts.magic = b"SSHSIH".to_vec();
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::Magic
        );
        for version in [0, 2] {
            let mut parts = Parts::of(&sig);
            parts.version = version;
            assert_eq!(
                decode_sshsig_blob(&parts.blob()).unwrap_err(),
                SshSigError::Version(version)
            );
        }
        let mut parts = Parts::of(&sig);
        parts.reserved = b"x".to_vec();
        assert!(lenient_verifies(&parts.blob()));
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::Reserved(1)
        );
        for hash in [&b"sha1"[..], b"SHA512", b"sha384", b""] {
            let mut parts = Parts::of(&sig);
            parts.hash = hash.to_vec();
            assert!(matches!(
                decode_sshsig_blob(&parts.blob()).unwrap_err(),
                SshSigError::HashAlg(_)
            ));
        }
        let mut parts = Parts::of(&sig);
        parts.namespace.clear();
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::Namespace
        );
    }

    #[test]
    fn only_ed25519_keys_and_exact_lengths_are_accepted() {
        let sig = signed();
        let mut parts = Parts::of(&sig);
        parts.key.clear();
        put(&mut parts.key, b"ssh-rsa");
        put(&mut parts.key, &[1; 32]);
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::KeyType("\"ssh-rsa\"".into())
        );
        let mut parts = Parts::of(&sig);
        parts.key.clear();
        put(&mut parts.key, b"ssh-ed25519");
        put(&mut parts.key, &[1; 31]);
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::KeyLength(31)
        );
        let mut parts = Parts::of(&sig);
        parts.sig.clear();
        put(&mut parts.sig, b"ssh-ed25519");
        put(&mut parts.sig, &sig.signature_bytes()[..63]);
        assert_eq!(
            decode_sshsig_blob(&parts.blob()).unwrap_err(),
            SshSigError::SignatureLength(63)
        );
    }

    #[test]
    fn truncated_blobs_are_refused_at_every_length() {
        let blob = Parts::of(&signed()).blob();
        for len in 0..blob.len() {
            assert!(
                decode_sshsig_blob(&blob[..len]).is_err(),
                "a blob cut at {len} of {} bytes decoded",
                blob.len()
            );
        }
        // A length prefix larger than what follows.
        let mut parts = Parts::of(&signed());
        parts.trailing.clear();
        let mut blob = parts.blob();
        let at = 6 + 4;
        blob[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_sshsig_blob(&blob).unwrap_err(),
            SshSigError::Truncated("public key")
        );
    }

    #[test]
    fn the_armored_form_is_decoded_just_as_strictly() {
        // Armored as `ssh-keygen -Y sign` writes it: 70-column lines.
        let armor = |parts: &Parts| {
            format!(
                "{ARMOR_BEGIN}\n{}\n{ARMOR_END}\n",
                parts
                    .base64()
                    .as_bytes()
                    .chunks(70)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
        let sig = signed();
        let mut parts = Parts::of(&sig);
        assert_eq!(decode_signature(&armor(&parts)).unwrap(), sig);
        parts.trailing = vec![0; 16];
        assert!(decode_signature(&armor(&parts))
            .unwrap_err()
            .contains("after its signature"));
        let good = armor_signature(&sig).unwrap();
        let crlf = good.replace('\n', "\r\n");
        assert_eq!(decode_signature(&crlf).unwrap(), sig);
        let spaced = good.replacen('\n', "\n ", 2);
        assert!(decode_signature(&spaced)
            .unwrap_err()
            .contains("non-base64"));
        let no_end = good.replace(ARMOR_END, "");
        assert!(decode_signature(&no_end).unwrap_err().contains("END line"));
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
