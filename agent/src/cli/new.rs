//! `tourniquet new`: an unsigned payload, for review and co-signing.

use clap::Args;
use serde_json::{Map, Value};

use super::compose::{compose, parse_kv, write_out};
use super::{CliResult, Common, Failure};
use crate::command::payload::{Action, Payload};

#[derive(Args, Debug)]
#[command(
    after_help = "Each --param value is parsed by the op's declared type (`tourniquet ops` lists them): \
lists take a repeated --param or commas, integers and durations parse.\n\nExample:\n  \
tourniquet new waf.block --resource edge-waf --param cidrs=203.0.113.7/32,198.51.100.0/24 \
--reason \"INC-7: credential stuffing\" --hold 2h -o cmd.json"
)]
pub struct NewArgs {
    /// The op, e.g. flag.set, waf.block, revert.
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
    let params = match tourniquet_providers::registry::op(&args.op) {
        // A provider op: each value parsed by its declared type.
        Some(op) => op.parse_kv(&args.params).map_err(|e| Failure {
            code: super::exit::USAGE,
            message: e.to_string(),
        })?,
        // An agent op (revert, …): its params are ids, kept as text.
        None => {
            let mut params = Map::new();
            for (k, v) in parse_kv(&args.params, "--param")? {
                params.insert(k, Value::String(v));
            }
            params
        }
    };
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
