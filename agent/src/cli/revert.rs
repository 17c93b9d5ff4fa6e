//! `tourniquet revert` and `tourniquet halt`: signed commands about an
//! earlier command.

use clap::Args;

use super::compose::{action, compose, sign_and_deliver};
use super::{CliResult, Common, Failure};
use crate::command::payload::{HALT_OP, REVERT_OP};

#[derive(Args, Debug)]
pub struct RevertArgs {
    /// The command to undo.
    pub id: String,
    #[command(flatten)]
    pub common: Common,
}

pub async fn revert(args: RevertArgs) -> CliResult {
    ulid::Ulid::from_string(&args.id).map_err(|_| {
        Failure::usage(format!(
            "{:?} is not a command id (a ULID, as `status` shows)",
            args.id
        ))
    })?;
    let payload = compose(
        &args.common,
        vec![action(None, REVERT_OP, vec![("command", args.id.clone())])],
    )?;
    sign_and_deliver(&args.common, payload).await
}

pub async fn halt(args: RevertArgs) -> CliResult {
    ulid::Ulid::from_string(&args.id).map_err(|_| {
        Failure::usage(format!(
            "{:?} is not a command id (a ULID, as `status` shows)",
            args.id
        ))
    })?;
    let payload = compose(
        &args.common,
        vec![action(None, HALT_OP, vec![("command", args.id.clone())])],
    )?;
    sign_and_deliver(&args.common, payload).await
}
