//! `tourniquet status`: one command's state and receipt, the agent's active
//! hotfixes, or the fleet view of a command.

use clap::Args;

use super::client::{answer_error, get_json, http_client, read_answer, Destination};
use super::{render, CliResult, Conn, Failure};
use crate::api::{self, CommandAnswer, Hotfixes};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  tourniquet status                                   # active hotfixes on http://127.0.0.1:7370\n  \
tourniquet status 01JD3Z8K6Q0V6N9W2X4Y5Z7A8B --to https://web-1:7370 --cacert ca.pem\n  \
tourniquet status 01JD3Z8K6Q0V6N9W2X4Y5Z7A8B --to nats://nats-1:4222 --watch   # the fleet view"
)]
pub struct StatusArgs {
    /// Command id; without it, the agent's active hotfixes.
    pub id: Option<String>,
    /// The agent (http[s]://HOST:PORT), or a fleet's NATS server
    /// (nats://HOST:PORT) for the fleet view of ID: every agent's receipt.
    // `--agent` and `--nats` are the names older scripts use.
    #[arg(
        long,
        alias = "agent",
        alias = "nats",
        env = "TOURNIQUET_TO",
        default_value = "http://127.0.0.1:7370",
        value_name = "DEST"
    )]
    pub to: String,
    /// With a nats:// --to: keep refreshing until every expected agent has settled (Ctrl-C stops).
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(args: StatusArgs) -> CliResult {
    let base = match Destination::parse(&args.to)? {
        Destination::Nats(url) => {
            if args.id.is_none() {
                return Err(Failure::usage(
                    "the fleet view is of one command: tourniquet status ID --to nats://HOST:PORT",
                ));
            }
            return super::fleet::status(&args, &url).await;
        }
        Destination::Dir(_) => {
            return Err(Failure::usage(
                "status asks an agent: --to http[s]://HOST:PORT, or nats://HOST:PORT for the fleet view (an inbox dir: has no answers)",
            ))
        }
        Destination::Http(base) => base,
    };
    if args.watch {
        return Err(Failure::usage(
            "--watch follows a fleet: use it with --to nats://HOST:PORT",
        ));
    }
    let client = http_client(&args.conn)?;
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
