//! `tourniquet keygen`: an OpenSSH ed25519 key pair for automation.

use std::path::{Path, PathBuf};

use clap::Args;

use super::CliResult;
use crate::command::envelope;
use crate::trust::keys;

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  tourniquet keygen --out ~/.tourniquet/ci.key --comment ci@deploy   # then: export TOURNIQUET_KEY=~/.tourniquet/ci.key"
)]
pub struct KeygenArgs {
    /// Where to write the private key (0600); the public key goes to FILE.pub.
    #[arg(long)]
    pub out: PathBuf,
    /// Comment stored in the key.
    #[arg(long, default_value = "tourniquet-operator")]
    pub comment: String,
}

pub fn run(args: KeygenArgs) -> CliResult {
    keygen(&args.out, &args.comment)
}

fn keygen(out: &Path, comment: &str) -> CliResult {
    let public = keys::generate_keypair(out, comment)?;
    println!(
        "wrote {} (0600) and {}\n{}\nfingerprint {}",
        out.display(),
        keys::pub_path(out).display(),
        public.to_openssh().unwrap_or_default(),
        envelope::fingerprint(public.key_data())
    );
    Ok(())
}
