//! `tourniquet sign`: sign a payload into an envelope, or co-sign one.

use std::path::PathBuf;

use clap::Args;

use super::compose::{load_signer, read_envelope_or_payload, write_out};
use super::{CliResult, Failure};
use crate::command::envelope::{self, Envelope, COMMAND_NAMESPACE, COMMAND_PAYLOAD_TYPE};

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  tourniquet sign cmd.json --key ~/.ssh/id_ed25519 -o cmd.signed.json   # then a second operator:\n  \
tourniquet sign cmd.signed.json --key ~/.ssh/oncall2_ed25519   # co-signs in place"
)]
pub struct SignArgs {
    /// A payload (JSON from `tourniquet new`) or an envelope to co-sign.
    pub file: PathBuf,
    /// Signing key (OpenSSH private key, or .pub through ssh-agent).
    #[arg(long, env = "TOURNIQUET_KEY")]
    pub key: Option<PathBuf>,
    /// Attach a signature made by `ssh-keygen -Y sign -n tourniquet-command` over the --pae bytes.
    #[arg(long, value_name = "SIGFILE", conflicts_with = "key")]
    pub sig: Option<PathBuf>,
    /// Print the exact bytes a signature covers (DSSE PAE) and exit.
    #[arg(long, conflicts_with_all = ["key", "sig"])]
    pub pae: bool,
    /// Print signature N of an envelope in ssh-keygen's armored form and exit.
    #[arg(long, value_name = "N", conflicts_with_all = ["key", "sig", "pae"])]
    pub export_sig: Option<usize>,
    /// Output file (default: overwrite an envelope in place; a payload → stdout).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
}

pub fn run(args: SignArgs) -> CliResult {
    let (env, payload) = read_envelope_or_payload(&args.file)?;
    let payload_type = env
        .as_ref()
        .map(|e| e.payload_type.clone())
        .unwrap_or_else(|| COMMAND_PAYLOAD_TYPE.to_string());
    if args.pae {
        use std::io::Write;
        let bytes = envelope::pae(&payload_type, &payload);
        std::io::stdout().write_all(&bytes)?;
        return Ok(());
    }
    if let Some(n) = args.export_sig {
        let env = env.ok_or_else(|| Failure::error("--export-sig needs an envelope"))?;
        let s = env
            .signatures
            .get(n)
            .ok_or_else(|| Failure::error(format!("the envelope has no signature {n}")))?;
        let sig = envelope::decode_signature(&s.sig).map_err(Failure::error)?;
        print!(
            "{}",
            envelope::armor_signature(&sig).map_err(Failure::error)?
        );
        return Ok(());
    }
    let mut env = env.unwrap_or_else(|| Envelope::new(COMMAND_PAYLOAD_TYPE, &payload));
    let sig = match &args.sig {
        Some(sig_file) => {
            let text = std::fs::read_to_string(sig_file)
                .map_err(|e| Failure::error(format!("{}: {e}", sig_file.display())))?;
            let sig = envelope::decode_signature(&text)
                .map_err(|e| Failure::error(format!("{}: {e}", sig_file.display())))?;
            envelope::verify_sshsig(COMMAND_NAMESPACE, &envelope::pae(&payload_type, &payload), &sig).map_err(|e| {
                Failure::error(format!(
                    "{}: {e} (sign the bytes of `tourniquet sign FILE --pae` with -n {COMMAND_NAMESPACE})",
                    sig_file.display()
                ))
            })?;
            sig
        }
        None => {
            let signer = load_signer(args.key.as_deref())?;
            signer.sign(COMMAND_NAMESPACE, &envelope::pae(&payload_type, &payload))?
        }
    };
    let fingerprint = envelope::fingerprint(sig.public_key());
    if env.signatures.iter().any(|s| s.keyid == fingerprint) {
        eprintln!("note: the envelope already has a signature by {fingerprint}; quorum counts distinct keys");
    }
    env.add_signature(&sig)?;
    let out = args.out.clone().or_else(|| {
        // Co-signing an envelope updates it in place; a payload goes to stdout.
        Envelope::from_json(&std::fs::read(&args.file).unwrap_or_default())
            .ok()
            .map(|_| args.file.clone())
    });
    eprintln!(
        "signed by {fingerprint} ({} signature(s))",
        env.signatures.len()
    );
    write_out(out.as_deref(), &env.to_json_pretty())
}
