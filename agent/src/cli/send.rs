//! `tourniquet send`: deliver a signed envelope to an agent, an inbox or a fleet.

use std::path::PathBuf;

use clap::Args;

use super::{client, CliResult, Conn, Failure};
use crate::command::envelope::Envelope;

#[derive(Args, Debug)]
pub struct SendArgs {
    pub envelope: PathBuf,
    /// http[s]://HOST:PORT, dir:PATH (an agent's inbox) or nats://HOST:PORT (a fleet; see --fleet).
    #[arg(long)]
    pub to: String,
    /// Return after the agent accepts, without waiting for the receipt.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(args: SendArgs) -> CliResult {
    let bytes = std::fs::read(&args.envelope)
        .map_err(|e| Failure::error(format!("{}: {e}", args.envelope.display())))?;
    let env = Envelope::from_json(&bytes)
        .map_err(|e| Failure::error(format!("{}: {e}", args.envelope.display())))?;
    client::deliver(&env, &args.to, &args.conn, args.no_wait).await
}
