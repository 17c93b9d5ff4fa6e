//! `tourniquet flag set|state`: the kill switch, the most common hotfix.

use clap::Subcommand;

use super::compose::{action, compose, sign_and_deliver};
use super::{CliResult, Common};

#[derive(Subcommand, Debug)]
pub enum FlagCommand {
    /// Set a flag's default variant, e.g. `flag set checkout-flags new_flow off`.
    Set {
        resource: String,
        flag: String,
        variant: String,
        #[command(flatten)]
        common: Common,
    },
    /// Enable or disable a flag, e.g. `flag state checkout-flags new_flow off`.
    State {
        resource: String,
        flag: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        common: Common,
    },
}

pub async fn run(cmd: FlagCommand) -> CliResult {
    let (common, act) = match cmd {
        FlagCommand::Set {
            resource,
            flag,
            variant,
            common,
        } => (
            common,
            action(
                Some(resource),
                "flag.set",
                vec![("flag", flag), ("variant", variant)],
            ),
        ),
        FlagCommand::State {
            resource,
            flag,
            state,
            common,
        } => {
            let state = if state == "on" { "ENABLED" } else { "DISABLED" };
            (
                common,
                action(
                    Some(resource),
                    "flag.state",
                    vec![("flag", flag), ("state", state.into())],
                ),
            )
        }
    };
    let payload = compose(&common, vec![act])?;
    sign_and_deliver(&common, payload).await
}
