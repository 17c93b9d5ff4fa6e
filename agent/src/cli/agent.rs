//! `tourniquet agent`: run the daemon, or check its config and exit.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, Failure};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Agent config (agent.toml). Without it, the embedded default runs.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Validate the config and its policy, then exit.
    #[arg(long)]
    pub check: bool,
    /// Listen here instead of [api].listen (e.g. 127.0.0.1:7371).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

pub async fn run(args: AgentArgs) -> CliResult {
    let (mut cfg, dev) = match &args.config {
        Some(path) => (crate::config::AgentConfig::load(path)?, false),
        None => {
            if args.check {
                return Err(Failure::error("--check needs --config FILE"));
            }
            (crate::defaults::prepare()?.config, true)
        }
    };
    if let Some(addr) = args.listen {
        cfg.api.listen = addr;
        if dev {
            crate::defaults::follow_listen(&mut cfg, addr);
        }
        cfg.validate("--listen")?;
    }
    if args.check {
        println!("{}", crate::agent::check(&cfg)?);
        return Ok(());
    }
    crate::agent::run(cfg, dev).await?;
    Ok(())
}
