//! `tourniquet new`: an unsigned payload, for review and co-signing.

use clap::Args;
use serde_json::{Map, Value};

use super::compose::{compose, parse_kv, write_out};
use super::{CliResult, Common, Failure};
use crate::command::payload::{Action, Payload};

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The op, e.g. flag.set, flag.state, revert.
    pub op: String,
    /// The resource the action names (omit for revert).
    #[arg(long)]
    pub resource: Option<String>,
    /// Op parameters, e.g. --param flag=new_flow --param variant=off.
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: NewArgs) -> CliResult {
    let mut params = Map::new();
    for (k, v) in parse_kv(&args.params, "--param")? {
        params.insert(k, Value::String(v));
    }
    let act = Action {
        resource: args.resource,
        op: args.op,
        params,
    };
    let payload = compose(&args.common, vec![act])?;
    let text = serde_json::to_string_pretty(&payload)?;
    // Re-parse strictly so what we hand over is what an agent will accept.
    Payload::parse(text.as_bytes())
        .map_err(|e| Failure::error(format!("composed payload is invalid: {e}")))?;
    write_out(args.common.out.as_deref(), &text)
}
