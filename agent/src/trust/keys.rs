//! Operator and agent keys: OpenSSH files, or a running ssh-agent.
//!
//! Operators should not need a second key infrastructure for emergencies, so
//! Tourniquet signs with OpenSSH ed25519 keys: a private key file (for
//! automation) or, given a `.pub` file, whatever holds the private half in
//! ssh-agent (a laptop key, a FIDO token behind an agent).

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, Signature, SshSig};

/// What can go wrong loading or using a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {why}")]
    Load { path: PathBuf, why: String },
    #[error("ssh-agent: {0}")]
    Agent(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Something that can make SSHSIG signatures.
pub enum Signer {
    /// An unencrypted OpenSSH private key file.
    File(Box<PrivateKey>),
    /// The private half lives in ssh-agent; we hold the public half.
    Agent { socket: PathBuf, public: PublicKey },
}

impl Signer {
    /// Loads `path`: a `.pub` file signs through ssh-agent (`SSH_AUTH_SOCK`),
    /// anything else is read as an OpenSSH private key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let load_err = |why: String| KeyError::Load {
            path: path.to_path_buf(),
            why,
        };
        let text = fs::read_to_string(path).map_err(|e| load_err(e.to_string()))?;
        if text.trim_start().starts_with("ssh-") || path.extension().is_some_and(|e| e == "pub") {
            let public = PublicKey::from_openssh(text.trim())
                .map_err(|e| load_err(format!("not an OpenSSH public key: {e}")))?;
            let socket = std::env::var_os("SSH_AUTH_SOCK")
                .map(PathBuf::from)
                .ok_or_else(|| {
                    load_err(
                        "a .pub key signs through ssh-agent, but SSH_AUTH_SOCK is not set".into(),
                    )
                })?;
            return Ok(Signer::Agent { socket, public });
        }
        let key = PrivateKey::from_openssh(&text)
            .map_err(|e| load_err(format!("not an OpenSSH private key: {e}")))?;
        if key.is_encrypted() {
            return Err(load_err(
                "the key is passphrase-protected; add it to ssh-agent and pass its .pub file"
                    .into(),
            ));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(load_err(format!(
                "key type {} is not accepted; use ed25519",
                key.algorithm()
            )));
        }
        Ok(Signer::File(Box::new(key)))
    }

    pub fn public_key(&self) -> &PublicKey {
        match self {
            Signer::File(k) => k.public_key(),
            Signer::Agent { public, .. } => public,
        }
    }

    /// Signs `message` as SSHSIG in `namespace` (sha512, as ssh-keygen does).
    pub fn sign(&self, namespace: &str, message: &[u8]) -> Result<SshSig, KeyError> {
        match self {
            Signer::File(k) => k
                .sign(namespace, HashAlg::Sha512, message)
                .map_err(|e| KeyError::Sign(e.to_string())),
            Signer::Agent { socket, public } => {
                let data = SshSig::signed_data(namespace, HashAlg::Sha512, message)
                    .map_err(|e| KeyError::Sign(e.to_string()))?;
                let raw = agent_sign(socket, public, &data)?;
                let sig = Signature::new(Algorithm::Ed25519, raw)
                    .map_err(|e| KeyError::Sign(e.to_string()))?;
                SshSig::new(public.key_data().clone(), namespace, HashAlg::Sha512, sig)
                    .map_err(|e| KeyError::Sign(e.to_string()))
            }
        }
    }
}

const SSH_AGENT_FAILURE: u8 = 5;
const SSH2_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH2_AGENT_SIGN_RESPONSE: u8 = 14;

fn put_string(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], KeyError> {
    if buf.len() < 4 {
        return Err(KeyError::Agent("truncated reply".into()));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + len {
        return Err(KeyError::Agent("truncated reply".into()));
    }
    let (s, rest) = buf[4..].split_at(len);
    *buf = rest;
    Ok(s)
}

/// One SSH2_AGENTC_SIGN_REQUEST (draft-miller-ssh-agent §4.5); returns the
/// raw ed25519 signature bytes.
fn agent_sign(socket: &Path, public: &PublicKey, data: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| KeyError::Agent(format!("connecting to {}: {e}", socket.display())))?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .map_err(|e| KeyError::Agent(e.to_string()))?;
    let blob = public
        .to_bytes()
        .map_err(|e| KeyError::Agent(e.to_string()))?;
    let mut body = vec![SSH2_AGENTC_SIGN_REQUEST];
    put_string(&mut body, &blob);
    put_string(&mut body, data);
    body.extend_from_slice(&0u32.to_be_bytes());
    let mut msg = Vec::with_capacity(body.len() + 4);
    put_string(&mut msg, &body);
    stream
        .write_all(&msg)
        .map_err(|e| KeyError::Agent(e.to_string()))?;
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .map_err(|e| KeyError::Agent(format!("reading reply: {e}")))?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > 64 * 1024 {
        return Err(KeyError::Agent(format!("implausible reply length {len}")));
    }
    let mut reply = vec![0u8; len];
    stream
        .read_exact(&mut reply)
        .map_err(|e| KeyError::Agent(format!("reading reply: {e}")))?;
    match reply[0] {
        SSH2_AGENT_SIGN_RESPONSE => {
            let mut rest = &reply[1..];
            let mut sig = take_string(&mut rest)?;
            let algo = take_string(&mut sig)?;
            if algo != b"ssh-ed25519" {
                return Err(KeyError::Agent(format!(
                    "agent signed with {}",
                    String::from_utf8_lossy(algo)
                )));
            }
            Ok(take_string(&mut sig)?.to_vec())
        }
        SSH_AGENT_FAILURE => Err(KeyError::Agent(
            "the agent refused to sign: is this key loaded (ssh-add -l)?".into(),
        )),
        other => Err(KeyError::Agent(format!("unexpected reply type {other}"))),
    }
}

/// Creates an OpenSSH ed25519 key pair: `path` (0600) and `path.pub`
/// (0644). Refuses to overwrite either, and never follows a symlink at
/// either name (`O_CREAT|O_EXCL|O_NOFOLLOW`): a link planted there would
/// otherwise send the private key wherever it points. If the `.pub` cannot
/// be created, the private key just made is removed again.
pub fn generate_keypair(path: &Path, comment: &str) -> Result<PublicKey, KeyError> {
    let err = |why: String| KeyError::Load {
        path: path.to_path_buf(),
        why,
    };
    let pub_file = pub_path(path);
    for p in [path, pub_file.as_path()] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(KeyError::Load {
                path: p.to_path_buf(),
                why: "already exists; refusing to overwrite a key".into(),
            });
        }
    }
    let mut key =
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(|e| err(e.to_string()))?;
    key.set_comment(comment);
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    let public = key.public_key().clone();
    let pub_line = public.to_openssh().map_err(|e| err(e.to_string()))?;
    write_new(path, pem.as_bytes(), 0o600).map_err(|e| err(e.to_string()))?;
    if let Err(e) = write_new(&pub_file, format!("{pub_line}\n").as_bytes(), 0o644) {
        // Ours: O_EXCL made it, so removing it removes nothing else.
        let _ = fs::remove_file(path);
        return Err(KeyError::Load {
            path: pub_file,
            why: e.to_string(),
        });
    }
    Ok(public)
}

/// Creates `path` with `O_CREAT|O_EXCL|O_NOFOLLOW`, writes and fsyncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `key` → `key.pub`.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}
