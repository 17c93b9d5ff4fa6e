//! The `tourniquet` binary: the agent and the operator CLI.

use std::process::ExitCode;

use clap::Parser;
use tourniquet::cli::{Cli, LogFormat};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `TOURNIQUET_LOG=debug`, or per module: `info,tourniquet::transport=debug`.
    let filter: Targets = std::env::var("TOURNIQUET_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            // The agent logs what it does; the CLI only warnings, so its
            // output stays what the operator asked for.
            let level = if matches!(cli.command, tourniquet::cli::Command::Agent(_)) {
                LevelFilter::INFO
            } else {
                LevelFilter::WARN
            };
            Targets::new().with_default(level)
        });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json {
        tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(fmt.with_target(false).with_filter(filter))
            .init();
    }
    // Two workers are plenty for an agent beside a service; it must not
    // compete with what it protects.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tourniquet: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(tourniquet::cli::run(cli))
}
