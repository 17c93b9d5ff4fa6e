//! `tourniquet status`: one command's state and receipt, the agent's active
//! hotfixes, or the fleet view of a command.

use clap::Args;
use serde_json::Value;

use super::client::{get_json, http_client};
use super::{render, CliResult, Conn, Failure};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Command id; without it, the agent's active hotfixes.
    pub id: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:7370")]
    pub agent: String,
    /// Fleet view: collect every agent's receipt for ID from NATS JetStream.
    #[arg(long, value_name = "URL", requires = "id")]
    pub nats: Option<String>,
    /// With --nats: keep refreshing until every expected agent has settled (Ctrl-C stops).
    #[arg(long, requires = "nats")]
    pub watch: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(args: StatusArgs) -> CliResult {
    if let Some(url) = &args.nats {
        return super::fleet::status(&args, url).await;
    }
    let client = http_client(&args.conn)?;
    let base = args.agent.trim_end_matches('/');
    match &args.id {
        Some(id) => {
            let (code, record) = get_json(&client, &format!("{base}/v1/commands/{id}")).await?;
            if code != 200 {
                return Err(Failure::error(
                    record
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("not found"),
                ));
            }
            if args.conn.json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                print!("{}", render::record(&record));
            }
        }
        None => {
            let (_, body) = get_json(&client, &format!("{base}/v1/hotfixes")).await?;
            if args.conn.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", render::hotfixes(&body));
            }
        }
    }
    Ok(())
}
