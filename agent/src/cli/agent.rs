//! `tourniquet agent`: run the daemon, or check its config and exit.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, Failure};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  tourniquet agent                                  # the embedded demo on 127.0.0.1:7370, dev trust\n  \
tourniquet agent --config /etc/tourniquet/agent.toml --check"
)]
pub struct AgentArgs {
    /// Agent config (agent.toml). Without it, the embedded default runs.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Validate the config and its policy, lint what parses but cannot
    /// work (roles no key holds, rules naming nothing here, missing flags
    /// files), then exit: 1 on an error, 0 with warnings printed.
    #[arg(long)]
    pub check: bool,
    /// With --check: print the findings as JSON.
    #[arg(long, requires = "check")]
    pub json: bool,
    /// Listen here instead of [api].listen (e.g. 127.0.0.1:7371).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

pub async fn run(args: AgentArgs) -> CliResult {
    let (mut cfg, dev) = match &args.config {
        Some(path) => match crate::config::AgentConfig::load(path) {
            Ok(cfg) => (cfg, false),
            Err(e) if args.json => return Err(json_failure(path, e)),
            Err(e) => return Err(e.into()),
        },
        None => {
            if args.check {
                return Err(Failure::usage("--check needs --config FILE"));
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
        let origin = args
            .config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let report = match crate::agent::check(&cfg, &origin) {
            Ok(report) => report,
            Err(e) if args.json => return Err(json_failure(&origin, e)),
            Err(e) => return Err(e.into()),
        };
        if args.json {
            let mut doc =
                serde_json::to_value(&report).map_err(|e| Failure::error(e.to_string()))?;
            doc["ok"] = (report.errors() == 0).into();
            println!("{doc}");
        } else {
            for lint in &report.lints {
                eprintln!("{lint}");
            }
            if report.errors() == 0 {
                println!("{}", report.summary());
            }
        }
        return match report.failure() {
            Some(why) => Err(Failure::error(why)),
            None => Ok(()),
        };
    }
    crate::agent::run(cfg, dev).await?;
    Ok(())
}

/// `--check --json` on a config or policy that does not load: the reason
/// as JSON on stdout, and exit 1.
fn json_failure(config: impl AsRef<std::path::Path>, e: impl std::fmt::Display) -> Failure {
    let why = e.to_string();
    let config = config.as_ref().display().to_string();
    println!(
        "{}",
        serde_json::json!({"ok": false, "config": config, "error": why})
    );
    Failure::error(why)
}
