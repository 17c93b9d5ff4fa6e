//! `tourniquet send`: deliver a signed envelope to an agent, an inbox or a fleet.

use std::path::PathBuf;

use clap::Args;

use super::{client, CliResult, Conn, Failure};
use crate::command::envelope::Envelope;

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  tourniquet send cmd.signed.json --to http://127.0.0.1:7370   # waits for the receipt\n  \
tourniquet send cmd.signed.json --to nats://nats-1:4222 --fleet prod"
)]
pub struct SendArgs {
    /// The signed envelope (from `sign`, or a composing command's -o FILE).
    pub envelope: PathBuf,
    /// http[s]://HOST:PORT, dir:PATH (an agent's inbox) or nats://HOST:PORT
    /// (a fleet; see --fleet). Default: $TOURNIQUET_TO.
    #[arg(long, value_name = "DEST")]
    pub to: Option<String>,
    /// Return after the agent accepts, without waiting for the receipt.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(args: SendArgs) -> CliResult {
    let to = args.to.clone().or_else(super::env_to).ok_or_else(|| {
        Failure::usage(
            "send needs a destination: --to http://HOST:7370, dir:PATH or nats://HOST:4222 (or set TOURNIQUET_TO)",
        )
    })?;
    client::Destination::parse(&to)?;
    let bytes = std::fs::read(&args.envelope)
        .map_err(|e| Failure::error(format!("{}: {e}", args.envelope.display())))?;
    let env = Envelope::from_json(&bytes)
        .map_err(|e| Failure::error(format!("{}: {e}", args.envelope.display())))?;
    client::deliver(&env, &to, &args.conn, args.no_wait).await
}
