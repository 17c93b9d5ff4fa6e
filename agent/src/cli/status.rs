//! `tourniquet status`: one command's state and receipt, the agent's active
//! hotfixes, or the fleet view of a command.

use clap::Args;

use super::client::{answer_error, get_json, http_client, read_answer};
use super::{render, CliResult, Conn, Failure};
use crate::api::{self, CommandAnswer, Hotfixes};

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
            let url = format!("{base}{}", api::command_path(id));
            let (code, body) = get_json(&client, &url).await?;
            if code != 200 {
                return Err(Failure::error(answer_error(code, &body)));
            }
            let record: CommandAnswer = read_answer(&url, &body)?;
            if args.conn.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", render::record(&record));
            }
        }
        None => {
            let url = format!("{base}{}", api::HOTFIXES_PATH);
            let (code, body) = get_json(&client, &url).await?;
            if code != 200 {
                return Err(Failure::error(answer_error(code, &body)));
            }
            if args.conn.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!(
                    "{}",
                    render::hotfixes(&read_answer::<Hotfixes>(&url, &body)?)
                );
            }
        }
    }
    Ok(())
}
